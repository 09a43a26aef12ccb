"""Batch posts (issue 17, must-show 4): bulletins/s through `POST /api/v1/channels/{c}/bulletins/batch`
against the same bulletins posted one request each, on two real nodes over mutual TLS.

Run: .venv/bin/python bench/batch.py [--count 5000] [--batch 1000] [--concurrency 64]

Two nodes (nl-customs posts, ke-customs reads), SQLite, in this process on one event loop. For
each way of posting it prints: posted/s (until every answer came back), delivered/s (until the
reader stores the last one) and the share of the ceiling, measured in the same run from the
primitives alone: the author's crypto per bulletin at 2 readers (Ed25519 sign of the envelope,
AES-GCM of the payload, 2 HPKE seals), so ceiling = 1 / that, on one core. The 1-minute load
average is printed with each figure. It prints figures; no asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exchange.app import RunningNode, start_node
from exchange.config import NodeConfig
from exchange.crypto import DecryptionKey, SealedContent, SigningKey
from exchange.keystore import read_file
from exchange.node.tls import client_context
from exchange.provision import init_federation
from exchange.store import bulletins
from tests.conftest import write_federation

A, B, CHANNEL = "nl-customs", "ke-customs", "c2c"
OPTIONS = {"catchup_interval_seconds": 3600, "rate_per_token": 100000.0, "burst_per_token": 100000}


def bulletin(i: int) -> dict[str, Any]:
    awb = f"176-{i % 10**7:07d}{i % 10**7 % 7}"
    return {
        "kind": "alert",
        "title": f"Undeclared lithium batteries, consignment {i}",
        "body": "Declared as toys; X-ray shows cells. Hold and inspect on arrival. " * 4,
        "indicators": {"air_waybills": [awb], "airports": ["NBO", "AMS"], "flights": ["KL566"]},
    }


def ceiling(rounds: int = 5, n: int = 300) -> float:
    """1 / the author's crypto for one bulletin at 2 readers, from the primitives (median of rounds)."""
    key = SigningKey.generate()
    readers = [DecryptionKey.generate().public for _ in range(2)]
    payload = os.urandom(700)
    header = os.urandom(600)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):
            sealed = SealedContent(payload)
            for r in readers:
                sealed.wrap(r, b"info")
            key.sign(header)
        times.append((time.perf_counter() - started) / n)
    return 1 / statistics.median(times)


def held(cfg: NodeConfig) -> int:
    """Bulletins the node stores (read from its SQLite file, beside the running node)."""
    engine = sa.create_engine(cfg.database_url.replace("+aiosqlite", ""))
    try:
        with engine.connect() as conn:
            return int(conn.scalar(sa.select(sa.func.count()).select_from(bulletins)) or 0)
    finally:
        engine.dispose()


async def until_held(cfg: NodeConfig, total: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(held, cfg) < total and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


async def post_batches(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], numbers: range, size: int
) -> int:
    posted = 0
    for start in range(numbers.start, numbers.stop, size):
        body = {"bulletins": [bulletin(i) for i in range(start, min(start + size, numbers.stop))]}
        async with http.post(url + "/batch", json=body, headers=headers) as resp:
            answer = await resp.json()
            posted += int(answer["posted"])
    return posted


async def post_singles(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], numbers: range, concurrency: int
) -> int:
    queue = iter(numbers)
    posted = 0

    async def worker() -> None:
        nonlocal posted
        for i in queue:
            async with http.post(url, json=bulletin(i), headers=headers) as resp:
                posted += resp.status == 201

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return posted


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="exchange-batch-") as tmp:
        folder = Path(tmp) / "nodes"
        nodes = {A: ("NL", "customs"), B: ("KE", "customs")}
        members = {A: ["read", "post", "admin"], B: ["read", "post"]}
        write_federation(
            folder, nodes, [{"id": CHANNEL, "owner": A, "agencies": ["customs"], "members": members}], {}, OPTIONS
        )
        await init_federation(folder)
        cfgs = {n: NodeConfig.load(folder / f"{n}.toml", environ={}) for n in nodes}
        running: list[RunningNode] = [await start_node(cfgs[n]) for n in nodes]
        try:
            top = ceiling()
            print(
                f"ceiling: author's crypto at 2 readers, 1 core: {top:,.0f} bulletins/s (load {os.getloadavg()[0]:.2f})"
            )
            cfg = cfgs[A]
            ctx = client_context(read_file(cfg.keys_dir / "tls.crt").decode())
            token = (cfg.keys_dir / "tokens" / "officer").read_text().strip()
            headers = {"Authorization": f"Bearer {token}"}
            url = f"{cfg.endpoint}/api/v1/channels/{CHANNEL}/bulletins"
            done = 0
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=args.concurrency)) as http:
                await post_singles(http, url, headers, range(10**6, 10**6 + 50), 8)  # warm up
                done += 50
                await until_held(cfgs[B], done)
                for name in ("batch", "single"):
                    numbers = range(done, done + args.count)
                    load = os.getloadavg()[0]
                    started = time.perf_counter()
                    if name == "batch":
                        posted = await post_batches(http, url, headers, numbers, args.batch)
                    else:
                        posted = await post_singles(http, url, headers, numbers, args.concurrency)
                    answered = time.perf_counter() - started
                    done += args.count
                    await until_held(cfgs[B], done)
                    delivered = time.perf_counter() - started
                    how = (
                        f"batches of {args.batch}"
                        if name == "batch"
                        else f"one per request, {args.concurrency} at once"
                    )
                    rate = args.count / delivered
                    print(
                        f"{how:<34} {posted:,} posted: {posted / answered:,.0f}/s posted, "
                        f"{rate:,.0f}/s delivered ({rate / top:.0%} of the ceiling) "
                        f"(load {load:.2f} before, {os.getloadavg()[0]:.2f} after)"
                    )
        finally:
            for node in running:
                await node.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    asyncio.run(main(parser.parse_args()))
