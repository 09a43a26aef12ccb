"""Workers: ingest and end-to-end rates of one node run as 1 and as 2 worker processes over one
PostgreSQL database (issue 14, must-show 3), and how long a killed worker's partner waits.

The author runs `exchange node run --workers N`; a reader node (one process) receives everything.
Posts go through `--connections` kept-open connections at once (the kernel spreads connections
over the workers), from `--clients` processes (one client process saturates a core first).
Ingest: acknowledged posts per second. End-to-end: posts per second from the first post until
the last receipt is home. CPU per post: what the author's workers used while posting, which does
not depend on how busy the machine is. The CPU of the reader node, PostgreSQL (every session of
the server: it is shared) and the client processes is measured in the same window, and with it
the ceiling: the rate at which this bench's processes would keep every core busy were the machine
theirs alone (cores / their CPU per post); the machine's busy time beyond them is printed apart
as "the rest of the machine". `--profile DIR` runs py-spy on the author's processes while
posting and prints their CPU by area and their hottest functions. Then the worker that holds the
reader's outbox lease is SIGKILLed and one bulletin posted: the time until another worker holds
the lease and the receipt is home is printed. Everything runs on this machine: the clients, both
nodes and PostgreSQL.

    .venv/bin/python bench/workers.py [--total 2000] [--connections 32] [--clients 2] [--workers 1 2]
    .venv/bin/python bench/workers.py --profile /tmp/workers-prof   # py-spy (.venv/bin/pip install py-spy)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import asyncpg
from cpu_profile import AREAS, Sampler, machine_busy_seconds

from exchange.node.tls import client_context
from exchange.store.workers import LOG_LOCK
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
    """CPU-seconds (user and system) the processes and their descendants (crypto worker processes)
    used so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            kids = [int(k) for t in Path(f"/proc/{pid}/task").iterdir() for k in (t / "children").read_text().split()]
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        total += round(cpu_seconds(kids) * os.sysconf("SC_CLK_TCK"))
    return total / os.sysconf("SC_CLK_TCK")


def postgres_pids() -> list[int]:
    """Every PostgreSQL server process (other engineers' sessions included: this is a shared server)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def children_cpu_seconds() -> float:
    """CPU-seconds of this process's children that have exited and been waited for (the clients)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Window:
    """Where the machine's CPU went while the clients posted, in CPU-seconds."""

    seconds: float = 0.0
    machine: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)

    def cores(self, part: str) -> float:
        return self.parts[part] / self.seconds if self.seconds else 0.0

    def per_post(self, posts: int) -> str:
        """Each part's CPU per post (ms), and the ceiling: the rate at which this bench's processes
        would keep every core busy, were the machine theirs alone."""
        ms = {name: 1000 * cpu / max(posts, 1) for name, cpu in self.parts.items()}
        shown = ", ".join(f"{name} {v:.1f}" for name, v in ms.items())
        return f"CPU per post (ms): {shown}; {sum(ms.values()):.1f} in all"

    def ceiling(self, posts: int) -> float:
        total = sum(self.parts.values()) / max(posts, 1)
        return (os.cpu_count() or 1) / total if total else 0.0

    def line(self) -> str:
        known = sum(self.parts.values())
        shown = ", ".join(f"{name} {self.cores(name):.2f}" for name in self.parts)
        others = max(0.0, self.machine - known) / self.seconds
        idle = max(0.0, (os.cpu_count() or 1) - self.machine / self.seconds)
        return f"cores busy while posting: {shown}, the rest of the machine {others:.2f}, idle {idle:.2f}"


@dataclass
class LockWatch:
    """How often, sampled every `PERIOD` seconds in the author's database, a transaction held the
    audit log's lock (exchange.store.workers.LOG_LOCK) and how often another one waited for it."""

    PERIOD = 0.01
    samples: int = 0
    held: int = 0
    waited: int = 0

    async def watch(self, url: str, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
        query = (
            "SELECT count(*) FILTER (WHERE granted), count(*) FILTER (WHERE NOT granted) FROM pg_locks "
            "WHERE locktype = 'advisory' AND classid = 0 AND objid = $1::bigint::oid "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        try:
            while not stop.is_set():
                held, waiting = await conn.fetchrow(query, LOG_LOCK)
                self.samples += 1
                self.held += bool(held)
                self.waited += bool(waiting)
                await asyncio.sleep(self.PERIOD)
        finally:
            await conn.close()

    def line(self) -> str:
        n = max(self.samples, 1)
        return (
            f"the audit log's lock was held in {self.held / n:.0%} of {self.samples} samples while posting, "
            f"and another transaction waited for it in {self.waited / n:.0%}"
        )


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


@dataclass
class Run:
    workers: int
    ingest: float  # acknowledged posts per second
    e2e: float  # posts per second until the last receipt is home
    cpu_ms: float  # the author's CPU per post while posting
    window: Window
    ceiling: float  # posts/s at which this bench's processes would fill the machine
    load: tuple[float, float]  # 1-minute load average before and after


async def one(workers: int, total: int, connections: int, count: int, profile: Path | None) -> Run:
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
                samplers = (
                    []
                    if profile is None
                    else [Sampler(pid, profile / f"author-{workers}w-{k}.txt") for k, pid in enumerate(pids)]
                )
                for sampler in samplers:
                    sampler.start()
                if samplers:
                    await asyncio.sleep(0.5)  # py-spy attaches
                groups = {"author": pids, "reader": [cluster.procs[w.READER].pid], "postgres": postgres_pids()}
                before = {name: cpu_seconds(g) for name, g in groups.items()}
                clients_before, busy_before = children_cpu_seconds(), machine_busy_seconds()
                lock, stop = LockWatch(), asyncio.Event()
                watching = asyncio.create_task(lock.watch(urls[w.AUTHOR], stop))
                started = time.monotonic()
                ok, failed, elapsed = await clients(cluster, WARMUP, total, connections, count)
                stop.set()
                await watching
                window = Window(seconds=elapsed, machine=machine_busy_seconds() - busy_before)
                window.parts = {name: cpu_seconds(g) - before[name] for name, g in groups.items()}
                window.parts["clients"] = children_cpu_seconds() - clients_before
                for sampler in samplers:
                    summary(sampler, workers)
                await w.until(lambda: w.delivered(cluster, WARMUP + total), 600, "not delivered")
                e2e = time.monotonic() - started
                load_after = os.getloadavg()[0]
                checked = await w.check(cluster)
                gapless = checked.seqs == list(range(1, len(checked.seqs) + 1))
                run = Run(
                    workers,
                    ok / elapsed,
                    total / e2e,
                    1000 * window.parts["author"] / max(ok, 1),
                    window,
                    window.ceiling(ok),
                    (load_before, load_after),
                )
                print(
                    f"{workers} worker(s): {total} posts from {count} client processes through {connections} "
                    f"connections: ingest {run.ingest:,.0f}/s, end-to-end {run.e2e:,.0f}/s; the author used "
                    f"{run.cpu_ms:.1f} ms CPU per post while posting ({failed + len(warm.failed)} failed; seqs "
                    f"gap-free: {gapless}); load {load_before:.2f} before, {load_after:.2f} after",
                    flush=True,
                )
                print(
                    f"  {window.per_post(ok)}: ceiling {run.ceiling:,.0f}/s on {os.cpu_count()} cores "
                    f"(ingest {run.ingest / run.ceiling:.0%} of it)\n  {window.line()}\n  {lock.line()}",
                    flush=True,
                )
                took = await takeover(cluster, WARMUP + total)
                if took is not None:
                    print(
                        f"  lease holder SIGKILLed: another worker held the partner's lease after {took[0]:.1f} s, "
                        f"the next bulletin's receipt was home after {took[1]:.1f} s (lease 5 s)",
                        flush=True,
                    )
                return run
            finally:
                cluster.stop()
    finally:
        await drop(names)


def summary(sampler: Sampler, workers: int) -> None:
    """A py-spy profile of one author process, by area and its hottest functions."""
    prof = sampler.stop()
    areas = ", ".join(f"{a.split(' (')[0]} {prof.share(prof.by_area, a):.0%}" for a in AREAS if prof.by_area[a])
    print(f"  py-spy, {workers} worker(s), pid {sampler.pid}: {prof.samples} samples: {areas}", flush=True)
    for label, n in prof.inclusive.most_common(12):
        print(f"    {n / prof.samples:6.1%}  {label}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clients", type=int, default=2, help="client processes posting at once")
    parser.add_argument("--profile", type=Path, help="py-spy the author's processes while posting; raw files here")
    parser.add_argument("--post", nargs=6, help=argparse.SUPPRESS)  # one client process (internal)
    args = parser.parse_args()
    if args.post:
        endpoint, cert, token, first, count, connections = args.post
        asyncio.run(post_range(endpoint, cert, token, int(first), int(count), int(connections)))
        return
    print(f"{os.cpu_count()} cores; load {os.getloadavg()[0]:.2f} at start", flush=True)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    runs = [asyncio.run(one(n, args.total, args.connections, args.clients, args.profile)) for n in args.workers]
    base = runs[0]
    for run in runs[1:]:
        print(
            f"{run.workers} workers / {base.workers}: ingest {run.ingest / base.ingest:.2f}x, end-to-end "
            f"{run.e2e / base.e2e:.2f}x (goal 1.6x); author CPU per post {base.cpu_ms:.1f} -> {run.cpu_ms:.1f} ms; "
            f"the most {run.workers} workers could reach at their CPU per post, this bench alone on the machine: "
            f"{run.ceiling / base.ingest:.2f}x of {base.workers} worker's ingest",
            flush=True,
        )


if __name__ == "__main__":
    main()
