"""Does the receiver slow down as its store grows? Receiver CPU per bulletin, catch-up rate and node
memory with 5,000 and with 1,000,000 bulletins already stored.

Run: .venv/bin/python bench/growth.py [--sizes 5000 1000000] [--new 20000]

For each size S, a fresh federation of bench/catchup.py's two nodes (author A, reader C, one
channel, real mutual TLS, SQLite), whose stores both already hold S bulletins of A's stream in that
channel (seq 1..S): written in bulk through SQL (one real envelope's bytes for every row, with
its own id and seq: nothing re-verifies stored rows), with C's catch-up cursor at the end of them,
as after a long life. Then A gets --new real envelopes (seq S+1.., built with A's keys by
catchup.py's own builder, on both cores) stored as posting stores them, with C's outbox rows
queued: C was offline meanwhile. A runs in a child process and C in this one; the figure is C
taking the new bulletins (A's outbox pushing, C's catch-up pulling, as bench/catchup.py does):
  - receiver CPU per bulletin: this process's user+system CPU over the run (C alone) / --new, and
    the sender A's (its process's CPU from its start to the end of the run) / --new;
  - catch-up rate: --new / the run's seconds;
  - C's resident memory after the run (VmRSS) and its peak (VmHWM).
It prints both sizes, the ratios large/small against the 10% goal, and the load average with
each. It prints figures; no asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import catchup  # bench/catchup.py: the federation, the bulletins and the envelope builder
from cpu_profile import own_cpu_seconds, worker_pids

from exchange.app import start_node
from exchange.config import NodeConfig
from exchange.service.catchup import POSITIONS
from exchange.store import Store, insert_rows
from tests.conftest import write_federation

A, C = catchup.A, catchup.C
CHANNEL = catchup.CHANNEL["id"]
GOAL = 0.10  # the large size within 10% of the small
DEADLINE = 1800.0  # seconds C is given to take the new bulletins
# Each node's crypto_workers (--crypto-workers; by default the node's default). CPU and memory
# figures include the workers' processes.
WORKERS = [int(NodeConfig.model_fields["crypto_workers"].default)]
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
    "channel_pos",  # = seq: the stores hold nothing else of the channel (revision 0012)
)


def node_file(folder: Path, node: str) -> Path:
    return folder / "nodes" / f"{node}.toml"


def db_path(folder: Path, node: str) -> str:
    cfg = NodeConfig.load(node_file(folder, node), environ={})
    return sa.engine.make_url(cfg.database_url).database or ""


def prefill(path: str, template: dict[str, Any], size: int) -> None:
    """`size` rows of A's stream (seq 1..size) in bulk; run in a child process, so that this
    process's memory is the node's alone."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    marks = ", ".join("?" for _ in COLUMNS)
    rows = ((f"{seq:064x}", CHANNEL, A, seq, *(template[c] for c in COLUMNS[4:-1]), seq) for seq in range(1, size + 1))
    with db:
        db.executemany(f"INSERT INTO bulletins ({', '.join(COLUMNS)}) VALUES ({marks})", rows)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def run_author(path: str, stop: Any, ready: Any, used: Any) -> None:
    """Node A in a process of its own, until `stop` is set; `used` gets its CPU seconds from ready to stop."""

    logging.getLogger("exchange").setLevel(logging.ERROR)  # its sends fail until C is up: expected

    async def serve() -> None:
        node = await start_node(NodeConfig.load(Path(path), environ={}))
        started = cpu()
        ready.set()
        try:
            while not stop.is_set():
                await asyncio.sleep(0.05)
            used.value = cpu() - started
        finally:
            await node.stop()

    asyncio.run(serve())


async def seed_new(folder: Path, size: int, new: int) -> float:
    """A's `new` posts after the first `size`, stored as posting stores them, C's outbox rows queued."""
    from sqlalchemy.ext.asyncio import AsyncConnection

    from exchange.store import AuditBuffer, bulletins, outbox

    started = time.perf_counter()
    store = await Store.open(NodeConfig.load(node_file(folder, A), environ={}).database_url)
    chunks = [range(i, min(i + 1000, size + new + 1)) for i in range(size + 1, size + new + 1, 1000)]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2, initializer=catchup._init, initargs=(str(folder),)) as pool:
        for rows in pool.imap(catchup._build, chunks):

            async def job(conn: AsyncConnection, audit: AuditBuffer, rows: list[dict[str, Any]] = rows) -> None:
                await insert_rows(conn, bulletins, rows)
                queued = [{"dest": C, "kind": "envelope", "ref": r["id"], "state": "queued"} for r in rows]
                await conn.execute(sa.insert(outbox), queued)

            await store.write(job)
    await store.close()
    return time.perf_counter() - started


def memory(author: int | None = None) -> dict[str, int]:
    """This process's VmRSS and VmHWM, in MiB, each with its crypto workers' (`crypto_workers`);
    `author`: the pid of node A's process, a child too, which is not counted."""
    out = dict.fromkeys(("VmRSS", "VmHWM"), 0)
    for pid in ["self", *(str(p) for p in worker_pids(os.getpid()) if p != author)]:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in out:
                out[key] += int(value.split()[0]) // 1024
    return out


def cpu(author: int | None = None) -> float:
    """CPU seconds of this process so far, with those of its crypto worker processes (not
    node A's process, `author`, when A runs in a child)."""
    me = os.getpid()
    return own_cpu_seconds(me) + sum(own_cpu_seconds(p) for p in worker_pids(me) if p != author)


async def one_size(size: int, new: int) -> dict[str, float]:
    from exchange.provision import init_federation

    with tempfile.TemporaryDirectory(prefix=f"exchange-growth-{size}-") as tmp:
        folder = Path(tmp)
        options = {"catchup_interval_seconds": 3600, "crypto_workers": WORKERS[0]}
        write_federation(folder / "nodes", catchup.NODES, [catchup.CHANNEL], {}, options)
        await init_federation(folder / "nodes")
        for node in (A, C):  # the schema, then the rows
            await (await Store.open(NodeConfig.load(node_file(folder, node), environ={}).database_url)).close()

        # One real row of A's (envelope, content, summary), the template of the S stored ones.
        catchup._init(str(folder))
        template = catchup._build(range(1, 2))[0]
        started = time.perf_counter()
        ctx = multiprocessing.get_context("fork")
        fills = [ctx.Process(target=prefill, args=(db_path(folder, n), template, size)) for n in (A, C)]
        for p in fills:
            p.start()
        for p in fills:
            p.join()
        with sqlite3.connect(db_path(folder, C)) as db:
            # C has pulled A's first `size` of the channel: a position A served (POSITIONS + the
            # channel's own count, revision 0012). A bare `size` is below POSITIONS, which A serves
            # as the channel's start (11.6): C then pulled the whole store again, which made the
            # figures at 1,000,000 grow with it (2026-12-05).
            cursor = POSITIONS + size
            db.execute("INSERT INTO cursors (peer, channel, cursor) VALUES (?, ?, ?)", (A, CHANNEL, cursor))
        db.close()
        filled = time.perf_counter() - started
        seeded = await seed_new(folder, size, new)
        print(f"\n{size:,} stored at A and C ({filled:.0f}s, bulk SQL); {new:,} new at A ({seeded:.0f}s); not timed")

        spawn = multiprocessing.get_context("spawn")
        stop, ready, author_cpu = spawn.Event(), spawn.Event(), spawn.Value("d", 0.0)
        author = spawn.Process(target=run_author, args=(str(node_file(folder, A)), stop, ready, author_cpu))
        author.start()
        try:
            while not ready.is_set():
                await asyncio.sleep(0.05)
            target = size + new
            db = sqlite3.connect(f"file:{db_path(folder, C)}?mode=ro", uri=True)
            load_before = os.getloadavg()
            cpu_before, started = cpu(author.pid), time.perf_counter()
            node_c = await start_node(NodeConfig.load(node_file(folder, C), environ={}))
            try:
                # C only adds rows, so the top of its rowid is how many it holds (an index seek).
                while int(db.execute("SELECT max(n) FROM bulletins").fetchone()[0] or 0) < target:
                    if not author.is_alive() or time.perf_counter() - started > DEADLINE:
                        raise SystemExit(f"C did not get the {new:,} bulletins (author alive: {author.is_alive()})")
                    await asyncio.sleep(0.1)
                elapsed, used = time.perf_counter() - started, cpu(author.pid) - cpu_before
                load_after = os.getloadavg()
                held = memory(author.pid)
            finally:
                await node_c.stop()
                db.close()
        finally:
            stop.set()
            author.join(30)
    figures = {
        "cpu_ms": used / new * 1000,
        "author_ms": author_cpu.value / new * 1000,
        "rate": new / elapsed,
        "rss": held["VmRSS"],
        "hwm": held["VmHWM"],
    }
    print(
        f"at {size:,} stored: receiver CPU {figures['cpu_ms']:.3f} ms per bulletin (sender A's "
        f"{figures['author_ms']:.3f} ms), catch-up {figures['rate']:,.0f}/s "
        f"({new:,} in {elapsed:.1f}s), C's RSS {held['VmRSS']} MiB (peak {held['VmHWM']} MiB); "
        f"load {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    return figures


async def main(sizes: list[int], new: int) -> None:
    results = {}
    for size in sizes:
        results[size] = await one_size(size, new)
    small, large = results[sizes[0]], results[sizes[-1]]
    print(f"\nlarge ({sizes[-1]:,}) against small ({sizes[0]:,}), goal within {GOAL:.0%}:")
    labels = (
        ("cpu_ms", "receiver CPU per bulletin"),
        ("author_ms", "sender CPU per bulletin"),
        ("rate", "catch-up rate"),
        ("rss", "C's RSS"),
    )
    for key, label in labels:
        ratio = large[key] / small[key]
        print(f"  {label:<26} {small[key]:>10.3f} -> {large[key]:>10.3f}  ({ratio - 1:+.1%})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="receiver cost at 5k and 1M stored")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 1_000_000])
    parser.add_argument("--new", type=int, default=20_000)
    parser.add_argument("--crypto-workers", type=int, help="each node's crypto_workers (default: NodeConfig's)")
    args = parser.parse_args()
    if args.crypto_workers is not None:
        WORKERS[0] = args.crypto_workers
    print(f"crypto_workers = {WORKERS[0]} per node")
    asyncio.run(main(args.sizes, args.new))
