"""TAXII 2.1 objects/s served at 100,000 stored bulletins (docs/stix.md): must-show 5 of issue 15.

Run: .venv/bin/python bench/taxii.py [--count 100000] [--pages 20] [--limit 1000]

One node (nl-customs, SQLite), one channel read by the officer. One real bulletin is posted
through the node; the store is then filled in bulk through SQL (node stopped) with rows that copy
its row, each with its own id, seq, stored_at (increasing) and title. Every tenth row is TLP:RED
and every tenth+5 AMBER+STRICT, so the policy filter does its work. The rows share the real
envelope's bytes: TAXII reads the stored summary and checks the envelope's handling, it does not
re-verify signatures (docs/stix.md says so), so the shared envelope changes nothing it does.

It times, over HTTPS from a client on the same machine, --pages pages of --limit objects:
  - from the start of the collection (`next` after the first page);
  - deep: added_after the date_added of a bulletin 90% into the store, then by `next`;
  - poll: added_after the newest bulletin's date_added (nothing newer), --pages requests;
  - first page: added_after the date_added of a bulletin 10% into the store, --pages requests;
and prints objects/s (client wall clock) and the server's time per page (a middleware outermost
in the app), next to the ceiling measured in the same run: the STIX mapping and JSON encoding
alone, in process, with no database and no HTTP. With each figure, the load average.
It prints figures; no asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exchange.app import RunningNode, build_app
from exchange.config import NodeConfig
from exchange.http.appkeys import SERVICE
from exchange.http.server import ConnectionGuard, GuardedSite, ServerLimits
from exchange.keystore import read_file
from exchange.node.tls import client_context, server_context
from exchange.protocol.stix import BulletinFacts, bulletin_objects, collection_id
from tests.conftest import write_federation

A = "nl-customs"
CHANNEL = "c2c"
TITLE = "Seizure 000000000"
OPTIONS = {"catchup_interval_seconds": 3600, "rate_per_token": 100000.0, "burst_per_token": 100000}
TAXII = "application/taxii+json;version=2.1"
SERVER_TIMES: list[float] = []


@web.middleware
async def timing(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    started = time.perf_counter()
    try:
        return await handler(request)
    finally:
        SERVER_TIMES.append(time.perf_counter() - started)


async def start_timed(cfg: NodeConfig) -> RunningNode:
    app = build_app(cfg)
    app.middlewares.insert(0, timing)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    service = app[SERVICE]
    ssl_ctx = server_context(cfg.keys_dir / "tls.crt", cfg.keys_dir / "tls.key", service.fed)
    guard = ConnectionGuard(ServerLimits.from_config(cfg), refused=service.refusals.count)
    await GuardedSite(runner, cfg.host, cfg.port, ssl_context=ssl_ctx, guard=guard).start()
    return RunningNode(cfg, app, runner, guard)


def stamp(i: int) -> str:
    """An increasing stored_at, one millisecond apart."""
    seconds, ms = divmod(i, 1000)
    minutes, sec = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    return f"2026-11-{1 + hours // 24:02d}T{hours % 24:02d}:{minute:02d}:{sec:02d}.{ms:03d}Z"


def rows(template: dict[str, Any], start: int, stop: int) -> Iterator[dict[str, Any]]:
    for i in range(start, stop):
        number = f"Seizure {i:09d}"
        tlp = "RED" if i % 10 == 0 else "AMBER+STRICT" if i % 10 == 5 else template["tlp"]
        yield {
            **template,
            "id": f"{i:064x}",
            "seq": i + 1,
            "channel_pos": 1000 + i,  # past the real bulletin's position, rising with n (revision 0012)
            "tlp": tlp,
            "stored_at": stamp(i),
            "content": template["content"].replace(TITLE, number),
            "summary": template["summary"].replace(TITLE, number),
        }


def fill(path: str, template: dict[str, Any], start: int, stop: int) -> None:
    columns = [c for c in template if c != "n"]
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
        marks = ", ".join(f":{c}" for c in columns)
        with db:
            db.execute("UPDATE bulletins SET stored_at = ?", (stamp(0),))  # the real row first in time too
            db.executemany(
                f"INSERT INTO bulletins ({', '.join(columns)}) VALUES ({marks})", rows(template, start, stop)
            )
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


def ceiling(template: dict[str, Any], seconds: float = 2.0) -> float:
    """Objects/s of the mapping and JSON encoding alone, in process."""
    content = json.loads(template["summary"])
    made, started, i = 0, time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        facts = BulletinFacts(f"{i:064x}", CHANNEL, A, "Test", "AMBER", template["created"], content)
        objects = bulletin_objects(facts)
        json.dumps({"objects": objects})
        made += len(objects)
        i += 1
    return made / (time.perf_counter() - started)


async def run_pages(
    http: aiohttp.ClientSession, url: str, token: str, pages: int, limit: int, first: str
) -> tuple[int, float, list[float]]:
    """Objects and wall seconds of `pages` pages from `first` (a query string), and server seconds per page."""
    headers = {"Authorization": f"Bearer {token}", "Accept": TAXII}
    query, got, server = first, 0, []
    started = time.perf_counter()
    for _ in range(pages):
        SERVER_TIMES.clear()
        async with http.get(f"{url}?limit={limit}{query}", headers=headers) as resp:
            body = await resp.read()
            assert resp.status == 200, (resp.status, body[:300])
        server.append(SERVER_TIMES[-1])
        env = json.loads(body)
        got += len(env.get("objects", []))
        if not env.get("more"):
            break
        query = f"&next={env['next']}"
    return got, time.perf_counter() - started, server


async def main(total: int, pages: int, limit: int) -> None:
    from exchange.provision import init_federation

    with tempfile.TemporaryDirectory(prefix="exchange-taxii-") as tmp:
        folder = Path(tmp) / "nodes"
        channels = [{"id": CHANNEL, "owner": A, "agencies": ["customs"], "members": {A: ["read", "post", "admin"]}}]
        write_federation(folder, {A: ("NL", "customs")}, channels, {}, OPTIONS)
        await init_federation(folder)
        cfg = NodeConfig.load(folder / f"{A}.toml", environ={})
        node = await start_timed(cfg)
        officer = await node.service.users.get("officer")
        from exchange.model import Bulletin

        real = Bulletin.model_validate(
            {
                "kind": "seizure-report",
                "handling": {"tlp": "AMBER"},
                "title": TITLE,
                "body": "Toner cartridges declared as printer parts; " * 12,
                "indicators": {
                    "air_waybills": ["176-12345675"],
                    "hs_codes": ["8443.99"],
                    "flights": ["KL1234"],
                    "airports": ["AMS", "NBO"],
                    "companies": ["Printer Parts Ltd"],
                },
            }
        )
        await node.service.post(officer, CHANNEL, real)
        async with node.service.store.read() as conn:
            template = dict((await conn.execute(sa.text("SELECT * FROM bulletins"))).mappings().one())
        await node.stop()
        template["envelope"] = bytes(template["envelope"])
        started = time.perf_counter()
        path = sa.engine.make_url(cfg.database_url).database or ""
        await asyncio.to_thread(fill, path, template, 1, total)
        print(f"filled to {total:,} bulletins in {time.perf_counter() - started:.1f}s (bulk SQL, not timed below)")
        print(f"of them {total // 10:,} TLP:RED and {total // 10:,} AMBER+STRICT: never served")

        load = os.getloadavg()
        top = ceiling(template)
        print(f"ceiling (mapping + JSON in process, no DB, no HTTP): {top:,.0f} objects/s (load {load[0]:.2f})")

        node = await start_timed(cfg)
        try:
            ctx = client_context(read_file(cfg.keys_dir / "tls.crt").decode())
            token = (cfg.keys_dir / "tokens" / "officer").read_text().strip()
            url = f"{cfg.endpoint}/taxii2/exchange/collections/{collection_id(A, CHANNEL)}/objects/"
            deep = f"&added_after={stamp(int(total * 0.9))[:-1]}999Z"
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as http:
                await run_pages(http, url, token, 1, limit, "")  # warm
                # A client polling with the last date_added it holds, and nothing newer: one request, each time.
                load = os.getloadavg()
                newest = f"&added_after={stamp(total)[:-1]}999Z"
                polls = [await run_pages(http, url, token, 1, limit, newest) for _ in range(pages)]
                assert all(got == 0 for got, _, _ in polls)
                waits = [server[0] for _, _, server in polls]
                print(
                    f"{'poll (added_after: newest)':<28} {len(polls)} requests, none with objects: server per request "
                    f"median {statistics.median(waits) * 1000:.1f} ms, max {max(waits) * 1000:.1f} ms "
                    f"(load {load[0]:.2f} before, {os.getloadavg()[0]:.2f} after)"
                )
                # A sync from a date early in the channel (10% in): where to start is found, then one page.
                load = os.getloadavg()
                early = f"&added_after={stamp(int(total * 0.1))[:-1]}999Z"
                firsts = [await run_pages(http, url, token, 1, limit, early) for _ in range(pages)]
                waits = [server[0] for _, _, server in firsts]
                print(
                    f"{'first page (added_after 10%)':<28} {len(firsts)} requests: server per request "
                    f"median {statistics.median(waits) * 1000:.1f} ms, max {max(waits) * 1000:.1f} ms "
                    f"(load {load[0]:.2f} before, {os.getloadavg()[0]:.2f} after)"
                )
                for name, first in (("from the start", ""), ("deep (added_after at 90%)", deep)):
                    load = os.getloadavg()
                    got, wall, server = await run_pages(http, url, token, pages, limit, first)
                    rate = got / wall
                    print(
                        f"{name:<28} {got:,} objects in {len(server)} pages: {rate:,.0f} objects/s "
                        f"({rate / top:.0%} of the ceiling); server per page median "
                        f"{statistics.median(server) * 1000:.1f} ms, max {max(server) * 1000:.1f} ms "
                        f"(load {load[0]:.2f} before, {os.getloadavg()[0]:.2f} after)"
                    )
        finally:
            await node.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="TAXII objects/s at a large store")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--limit", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.count, args.pages, args.limit))
