"""Console pages and the client API's list at 1,000 and at 1,000,000 stored bulletins: server time.

Run: .venv/bin/python bench/pages.py [--count 1000000] [--postgres] [--plans]

It provisions one node (nl-customs) with CHANNELS channels, the officer assigned to all of them,
and posts one real bulletin through the node. Then it fills the store in bulk through SQL (node
stopped): rows that reuse that bulletin's envelope bytes, each with its own id, channel (round
robin), seq, title, content, summary and search text (the real ones with the title changed), and
the officer's reads of every tenth. Listings never re-verify envelopes (opening a bulletin does, and is not
timed here), so the shared envelope changes nothing they do. The database's triggers keep the
channel and read counts, as for any insert. With --postgres the node's store is a fresh PostgreSQL
database (COPY, then VACUUM ANALYZE as autovacuum would); otherwise SQLite.

At 1,000 stored and at --count stored it times, as the server sees it (a middleware outermost in
the app, so from the request reaching the app to its response: session or token, query,
rendering), the median of REPEAT requests of:
  - the console's inbox page of a channel (newest page, and a page deep in it by its cursor);
  - the console's channels page (unread and total counts of every channel);
  - the console's search page (a word in every bulletin; a word in none, so the whole window);
  - the client API's GET /api/v1/bulletins?limit=50 (from the start, and from a cursor deep in);
and prints each against the 50 ms goal, with the load average. --plans prints the query plan
(EXPLAIN QUERY PLAN / EXPLAIN) of every statement each page ran at the large size.
It prints figures; no asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import re
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import sqlalchemy as sa
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exchange.app import RunningNode, build_app
from exchange.config import NodeConfig
from exchange.http.appkeys import SERVICE
from exchange.http.server import ConnectionGuard, GuardedSite, ServerLimits
from exchange.keystore import read_file
from exchange.node.tls import client_context, server_context
from tests.conftest import PG_ADMIN_URL, write_federation

A = "nl-customs"
CHANNELS = [f"c2c-{i}" for i in range(8)]
SYNTHETIC_POSITIONS = 1000  # the synthetic rows' channel positions start past the few real bulletins
GOAL = 0.050  # seconds of server time per page
REPEAT = 15
SMALL = 1000
PASSWORD = "a long passphrase for the bench"
TITLE = "Seizure 000000000"  # in the real bulletin; each bulletin gets its own number
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
OPTIONS = {"catchup_interval_seconds": 3600, "rate_per_token": 100000.0, "burst_per_token": 100000}
COLUMNS = (
    "id",
    "channel",
    "author",
    "seq",
    "state_pos",
    "tlp",
    "created",
    "stored_at",
    "envelope",
    "recipients",
    "content",
    "summary",
    "search_text",
    "channel_pos",  # past the real bulletins' positions, rising with n in each channel (revision 0012)
)

SERVER_TIMES: list[float] = []


@web.middleware
async def timing(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    started = time.perf_counter()
    try:
        return await handler(request)
    finally:
        SERVER_TIMES.append(time.perf_counter() - started)


async def start_timed(cfg: NodeConfig) -> RunningNode:
    """exchange.app.start_node, with the timing middleware outermost."""
    app = build_app(cfg)
    app.middlewares.insert(0, timing)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    service = app[SERVICE]
    ssl_ctx = server_context(cfg.keys_dir / "tls.crt", cfg.keys_dir / "tls.key", service.fed)
    guard = ConnectionGuard(ServerLimits.from_config(cfg), refused=service.refusals.count)
    await GuardedSite(runner, cfg.host, cfg.port, ssl_context=ssl_ctx, guard=guard).start()
    return RunningNode(cfg, app, runner, guard)


# -- the rows ---------------------------------------------------------------------------------------


def synthetic(template: dict[str, Any], start: int, stop: int) -> Iterator[tuple[Any, ...]]:
    """Rows start..stop-1: the real bulletin's row with its own id, channel, seq, title and words."""
    for i in range(start, stop):
        number = f"Seizure {i:09d}"
        content, summary, search = template["content"], template["summary"], template["search_text"]
        if i % 50_000 == 0:  # a rare word, in the title, so search finds it among the newest
            number += " needle"
        yield (
            f"{i:064x}",
            CHANNELS[i % len(CHANNELS)],
            A,
            i + 1,
            template["state_pos"],
            template["tlp"],
            template["created"],
            template["stored_at"],
            template["envelope"],
            template["recipients"],
            content.replace(TITLE, number),
            summary.replace(TITLE, number),
            search.replace(TITLE.casefold(), number.casefold()),
            SYNTHETIC_POSITIONS + i,
        )


def reads(start: int, stop: int) -> Iterator[tuple[str, str, str]]:
    return (("officer", f"{i:064x}", "2026-01-01T00:00:00Z") for i in range(start, stop) if i % 10 == 0)


def fill_sqlite(path: str, template: dict[str, Any], start: int, stop: int) -> None:
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
        marks = ", ".join("?" for _ in COLUMNS)
        with db:
            db.executemany(
                f"INSERT INTO bulletins ({', '.join(COLUMNS)}) VALUES ({marks})", synthetic(template, start, stop)
            )
            db.executemany('INSERT INTO user_reads ("user", bulletin_id, at) VALUES (?, ?, ?)', reads(start, stop))
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


async def fill_postgres(url: str, template: dict[str, Any], start: int, stop: int) -> None:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        step = 100_000
        for lo in range(start, stop, step):
            hi = min(stop, lo + step)
            async with conn.transaction():
                await conn.copy_records_to_table("bulletins", records=synthetic(template, lo, hi), columns=COLUMNS)
                await conn.copy_records_to_table(
                    "user_reads", records=reads(lo, hi), columns=("user", "bulletin_id", "at")
                )
        await conn.execute("VACUUM ANALYZE")  # as autovacuum does after bulk inserts (its insert threshold)
    finally:
        await conn.close()


async def fill(cfg: NodeConfig, template: dict[str, Any], start: int, stop: int) -> float:
    started = time.perf_counter()
    if cfg.database_url.startswith("sqlite"):
        await asyncio.to_thread(fill_sqlite, sa.engine.make_url(cfg.database_url).database or "", template, start, stop)
    else:
        await fill_postgres(cfg.database_url, template, start, stop)
    return time.perf_counter() - started


# -- the pages --------------------------------------------------------------------------------------


class Client:
    """The officer, signed in to the console (cookie) and holding an API token."""

    def __init__(self, cfg: NodeConfig, http: aiohttp.ClientSession) -> None:
        self.cfg, self.http = cfg, http
        self.token = (cfg.keys_dir / "tokens" / "officer").read_text().strip()

    async def sign_in(self) -> None:
        async with self.http.get(self.cfg.endpoint + "/console/sign-in") as resp:
            token = CSRF.search(await resp.text())
        assert token is not None
        form = {"csrf": token.group(1), "user": "officer", "password": PASSWORD, "next": ""}
        async with self.http.post(self.cfg.endpoint + "/console/sign-in", data=form) as resp:
            assert resp.status == 200, resp.status

    async def get(self, path: str, api: bool = False) -> float:
        """Server seconds of one GET."""
        headers = {"Authorization": f"Bearer {self.token}"} if api else {}
        SERVER_TIMES.clear()
        async with self.http.get(self.cfg.endpoint + path, headers=headers, allow_redirects=False) as resp:
            body = await resp.read()
            assert resp.status == 200, (path, resp.status, body[:300])
        return SERVER_TIMES[-1]


def pages(deep: int) -> dict[str, tuple[str, bool]]:
    """name -> (path, is an API call); `deep` a cursor in the middle of the store."""
    return {
        "console inbox page (newest)": (f"/console/channels/{CHANNELS[0]}", False),
        "console inbox page (deep, by cursor)": (f"/console/channels/{CHANNELS[0]}?before={deep}", False),
        "console channels page (unread counts)": ("/console/channels", False),
        "console search (word in every bulletin)": ("/console/search?q=seizure", False),
        "console search (word in none: whole window)": ("/console/search?q=zzqqxx", False),
        "console search (rare word)": ("/console/search?q=needle", False),
        "API list, limit 50 (from the start)": ("/api/v1/bulletins?limit=50", True),
        "API list, limit 50 (deep, by cursor)": (f"/api/v1/bulletins?limit=50&after={deep}", True),
        "API list, one channel, limit 50 (deep)": (
            f"/api/v1/bulletins?limit=50&channel={CHANNELS[1]}&after={deep}",
            True,
        ),
    }


async def measure(client: Client, deep: int) -> dict[str, float]:
    out = {}
    for name, (path, api) in pages(deep).items():
        await client.get(path, api)  # warm
        out[name] = statistics.median([await client.get(path, api) for _ in range(REPEAT)])
    return out


async def plans(node: RunningNode, client: Client, deep: int) -> None:
    """The query plan of every statement each page runs, and the catch-up pages a partner asks for."""
    engine = node.service.store.engine
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    async def catch_up(**asked: Any) -> None:
        await node.service.served_envelopes(A, CHANNELS[0], **asked)

    calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        (f"{name}: {path}", functools.partial(client.get, path, api)) for name, (path, api) in pages(deep).items()
    ]
    calls += [
        (f"catch-up page after cursor {deep}", lambda: catch_up(after=deep, limit=200)),
        (f"catch-up page of one author after seq {deep}", lambda: catch_up(author=A, after_seq=deep, limit=200)),
    ]
    sqlite = engine.dialect.name == "sqlite"
    for title, call in calls:
        seen.clear()
        sa.event.listen(engine.sync_engine, "before_cursor_execute", record)
        try:
            await call()
        finally:
            sa.event.remove(engine.sync_engine, "before_cursor_execute", record)
        print(f"\n== {title}")
        async with engine.connect() as conn:
            for statement, parameters in list(seen):
                if "alembic_version" in statement:
                    continue
                prefix = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN "
                got = await conn.exec_driver_sql(prefix + statement, parameters)
                lines = [" ".join(str(c) for c in (r[-1:] if sqlite else r)) for r in got]
                print("  " + " ".join(statement.split())[:160])
                for line in lines:
                    print(f"     {line}")


async def main(total: int, postgres: bool, show_plans: bool, keep: Path | None) -> None:
    from exchange.provision import init_federation

    database = ""
    if postgres:
        database = f"ex_pages_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(PG_ADMIN_URL)
        await admin.execute(f'CREATE DATABASE "{database}"')
        await admin.close()
    try:
        with tempfile.TemporaryDirectory(prefix="exchange-pages-") as tmp:
            folder = (keep or Path(tmp)) / "nodes"
            urls = {A: f"postgresql+asyncpg://root@127.0.0.1:5432/{database}"} if postgres else {}
            channels = [
                {"id": c, "owner": A, "agencies": ["customs"], "members": {A: ["read", "post", "admin"]}}
                for c in CHANNELS
            ]
            write_federation(folder, {A: ("NL", "customs")}, channels, urls, OPTIONS)
            await init_federation(folder)
            cfg = NodeConfig.load(folder / f"{A}.toml", environ={})
            print(f"store: {'PostgreSQL' if postgres else 'SQLite'}; {len(CHANNELS)} channels, all read by the officer")

            # One real bulletin, posted through the node: the template of every row.
            node = await start_timed(cfg)
            await node.service.users.set_password("officer", PASSWORD, actor="bench")
            officer = await node.service.users.get("officer")
            from exchange.model import Bulletin

            real = Bulletin.model_validate(
                {
                    "kind": "seizure-report",
                    "handling": {"tlp": "AMBER"},
                    "title": TITLE,
                    "body": "Toner cartridges declared as printer parts; " * 12,
                    "indicators": {"air_waybills": ["176-12345675"], "airports": ["AMS", "NBO"]},
                }
            )
            await node.service.post(officer, CHANNELS[0], real)
            async with node.service.store.read() as conn:
                template = dict((await conn.execute(sa.text("SELECT * FROM bulletins"))).mappings().one())
            await node.stop()
            template["envelope"] = bytes(template["envelope"])
            print(
                f"row template: envelope {len(template['envelope'])} B, content {len(template['content'])} B, "
                f"summary {len(template['summary'])} B"
            )

            ctx = client_context(read_file(cfg.keys_dir / "tls.crt").decode())
            have = 1
            for size in (SMALL, total):
                took = await fill(cfg, template, have, size)
                have = size
                print(f"\nfilled to {size:,} bulletins in {took:.1f}s (bulk SQL, not part of the figures)")
                node = await start_timed(cfg)
                try:
                    jar = aiohttp.CookieJar(unsafe=True)
                    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), cookie_jar=jar) as http:
                        client = Client(cfg, http)
                        await client.sign_in()
                        load = os.getloadavg()
                        figures = await measure(client, size // 2)
                        after = os.getloadavg()
                        print(
                            f"at {size:,} stored (median of {REPEAT}, load {load[0]:.2f} before, {after[0]:.2f} after):"
                        )
                        for name, seconds in figures.items():
                            print(f"  {name:<46} {seconds * 1000:7.2f} ms  ({seconds / GOAL:.0%} of the 50 ms goal)")
                        if show_plans and size == total:
                            await plans(node, client, size // 2)
                finally:
                    await node.stop()
    finally:
        if postgres and keep:
            print(f"kept the PostgreSQL database {database}")
        elif postgres:
            admin = await asyncpg.connect(PG_ADMIN_URL)
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="console and API pages at a large store")
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--postgres", action="store_true", help="a fresh PostgreSQL database (PG_ADMIN_URL)")
    parser.add_argument("--plans", action="store_true", help="print each page's query plans at the large size")
    parser.add_argument(
        "--keep", type=Path, help="an empty folder to build the node in and leave (and its PostgreSQL database)"
    )
    args = parser.parse_args()
    asyncio.run(main(args.count, args.postgres, args.plans, args.keep))
