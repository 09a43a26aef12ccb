"""Workers: ingest and end-to-end rates of one node run as 1 and as 2 worker processes over one
PostgreSQL database (issue 14, must-show 3), and how long a killed worker's partner waits.

The author runs `exchange node run --workers N`; a reader node (one process) receives everything.
Posts go through `--connections` kept-open connections at once (the kernel spreads connections
over the workers), from `--clients` processes (one client process saturates a core first).
Ingest: acknowledged posts per second. End-to-end: posts per second from the first post until
the last receipt is home. CPU per post: what the author's workers used while posting, which does
not depend on how busy the machine is. Then the worker that holds the reader's outbox lease is
SIGKILLed and one bulletin posted: the time until another worker holds the lease and the receipt
is home is printed. Everything runs on this machine: the clients, both nodes and PostgreSQL.

    .venv/bin/python bench/workers.py [--total 2000] [--connections 32] [--clients 2] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import asyncpg  # type: ignore[import-untyped]

from exchange.node.tls import client_context
from tests import workers as w
from tests.conftest import PG_ADMIN_URL

WARMUP = 50


async def databases() -> tuple[dict[str, str], list[str]]:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    urls, names = {}, []
    try:
        for node in w.NODES:
            db = f"bench_{node.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
            await conn.execute(f'CREATE DATABASE "{db}"')
            names.append(db)
            urls[node] = f"postgresql+asyncpg://root@127.0.0.1:5432/{db}"
    finally:
        await conn.close()
    return urls, names


async def drop(names: list[str]) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        for db in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    finally:
        await conn.close()


async def takeover(cluster: w.Cluster, done: int) -> tuple[float, float] | None:
    """Kill the lease holder, post one bulletin: seconds until another worker holds the lease, and
    until that bulletin's receipt is home."""
    holders = (await w.check(cluster)).holders
    if not holders or cluster.workers < 2:
        return None
    pid = int(holders[0].rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    for attempt in range(20):  # a connection the dying worker accepted is reset: post again
        posted = await w.post_many(cluster, 1, concurrency=1, first=10**6 + attempt)
        if posted.ok:
            break
        await asyncio.sleep(0.1)
    assert posted.ok == 1, posted.failed
    taken = None
    while True:
        holders = (await w.check(cluster)).holders
        if taken is None and holders and int(holders[0].rsplit(":", 1)[1]) != pid:
            taken = time.monotonic() - killed
        if taken is not None and await w.delivered(cluster, done + 1):
            return taken, time.monotonic() - killed
        if time.monotonic() - killed > 60:
            raise AssertionError("no worker took over the partner within 60 s")
        await asyncio.sleep(0.05)


def cpu_seconds(pids: list[int]) -> float:
    """CPU-seconds (user and system) the processes used so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


async def post_range(endpoint: str, cert: str, token: str, first: int, count: int, connections: int) -> None:
    """A client process's share of the posts; prints 'ok failed'."""
    ctx = client_context(Path(cert).read_text())
    url, headers = f"{endpoint}/api/v1/channels/c2c/bulletins", {"Authorization": f"Bearer {token}"}
    queue, ok, failed = iter(range(first, first + count)), 0, 0

    async def poster(session: aiohttp.ClientSession) -> None:
        nonlocal ok, failed
        for i in queue:
            async with session.post(url, json=w.bulletin(i), headers=headers) as resp:
                await resp.read()
                ok, failed = (ok + 1, failed) if resp.status == 201 else (ok, failed + 1)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=connections)) as session:
        await asyncio.gather(*(poster(session) for _ in range(connections)))
    print(ok, failed, flush=True)


async def clients(cluster: w.Cluster, first: int, total: int, connections: int, count: int) -> tuple[int, int, float]:
    """Post `total` bulletins from `count` client processes at once: (ok, failed, seconds)."""
    cfg = cluster.configs[w.AUTHOR]
    share = total // count
    started = time.monotonic()
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--post",
            cfg.endpoint,
            str(cfg.keys_dir / "tls.crt"),
            cluster.token(),
            str(first + k * share),
            str(share if k < count - 1 else total - share * (count - 1)),
            str(max(1, connections // count)),
            stdout=asyncio.subprocess.PIPE,
        )
        for k in range(count)
    ]
    outs = [(await p.communicate())[0].split() for p in procs]
    elapsed = time.monotonic() - started
    return sum(int(o[0]) for o in outs), sum(int(o[1]) for o in outs), elapsed


async def one(workers: int, total: int, connections: int, count: int) -> None:
    urls, names = await databases()
    try:
        with tempfile.TemporaryDirectory(prefix="exchange-workers-") as folder:
            cluster = await w.Cluster.provision(Path(folder), urls, workers=workers)
            try:
                await cluster.up()
                warm = await w.post_many(cluster, WARMUP, concurrency=min(8, connections), fresh=False)
                await w.until(lambda: w.delivered(cluster, WARMUP), 120, "warm-up not delivered")
                load_before = os.getloadavg()[0]
                pids = cluster.worker_pids() if workers > 1 else [cluster.procs[w.AUTHOR].pid]
                cpu_before = cpu_seconds(pids)
                started = time.monotonic()
                ok, failed, elapsed = await clients(cluster, WARMUP, total, connections, count)
                cpu = cpu_seconds(pids) - cpu_before
                await w.until(lambda: w.delivered(cluster, WARMUP + total), 600, "not delivered")
                e2e = time.monotonic() - started
                load_after = os.getloadavg()[0]
                checked = await w.check(cluster)
                gapless = checked.seqs == list(range(1, len(checked.seqs) + 1))
                print(
                    f"{workers} worker(s): {total} posts from {count} client processes through {connections} "
                    f"connections: ingest {ok / elapsed:,.0f}/s, end-to-end {total / e2e:,.0f}/s; the workers used "
                    f"{1000 * cpu / max(ok, 1):.1f} ms CPU per post while posting ({failed + len(warm.failed)} "
                    f"failed; seqs gap-free: {gapless}); load {load_before:.2f} before, {load_after:.2f} after",
                    flush=True,
                )
                took = await takeover(cluster, WARMUP + total)
                if took is not None:
                    print(
                        f"  lease holder SIGKILLed: another worker held the partner's lease after {took[0]:.1f} s, "
                        f"the next bulletin's receipt was home after {took[1]:.1f} s (lease 5 s)",
                        flush=True,
                    )
            finally:
                cluster.stop()
    finally:
        await drop(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clients", type=int, default=2, help="client processes posting at once")
    parser.add_argument("--post", nargs=6, help=argparse.SUPPRESS)  # one client process (internal)
    args = parser.parse_args()
    if args.post:
        endpoint, cert, token, first, count, connections = args.post
        asyncio.run(post_range(endpoint, cert, token, int(first), int(count), int(connections)))
        return
    print(f"{os.cpu_count()} cores; load {os.getloadavg()[0]:.2f} at start", flush=True)
    for n in args.workers:
        asyncio.run(one(n, args.total, args.connections, args.clients))


if __name__ == "__main__":
    main()
