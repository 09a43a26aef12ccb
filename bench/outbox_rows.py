"""The author's outbox bookkeeping per (reader, bulletin) pair, in process (issue 13, must-show 1).

Run: .venv/bin/python bench/outbox_rows.py [--readers 199] [--posts 100] [--rounds 3] [--batch 10]

What `fanout_wired.py` measures end to end includes, for every reader of every bulletin, an outbox
row: queued with the post, read by the reader's sender, marked sent, marked delivered with its
receipt row. This times those four steps alone, as the node does them (exchange.service.outbox,
the senders' reads and writes gathered into one job for all readers), on the node's SQLite engine
in a temporary folder:

  queue      the post's rows: the bulletin and one outbox row per reader, group commits of --batch posts
  read       every reader's queue head and the envelopes (`Outbox._pending_many`, all readers at once)
  sent       every reader's batch marked sent and audited (`Outbox._mark_sent_many`)
  delivered  every reader's receipts (the batch form: a statement kept once, a row per bulletin)
             stored and its batch marked delivered (`Outbox._delivered_many`); the receipts'
             signatures are not checked here

CPU is the process's (aiosqlite's thread included). The floor, measured in the same run: one bare
row per pair (an integer key and two short strings, no index) written with sqlite3's executemany in
the same group commits, the least any design that keeps a row per pair pays once. Prints µs per
pair and ms per bulletin at --readers, beside the issue's 10 ms goal for the author's whole CPU.
Never asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from exchange.config import NodeConfig
from exchange.protocol.receipt import HeldBatch, StoredReceipt
from exchange.protocol.roster import Federation
from exchange.service.outbox import Ask, Delivered, Outbox, OutItem
from exchange.service.outbox_refs import EnvelopeRef, queued_row
from exchange.service.transport import PeerTransport
from exchange.store import AuditBuffer, Store, bulletins, outbox

AUTHOR = "a-customs"
STEPS = ("queue", "read", "sent", "delivered")


def bulletin_row(bid: str, seq: int) -> dict[str, Any]:
    return {
        "id": bid,
        "channel": "fan",
        "author": AUTHOR,
        "seq": seq,
        "state_pos": 1,
        "tlp": "GREEN",
        "created": "2026-12-05T00:00:00Z",
        "stored_at": "2026-12-05T00:00:00Z",
        "envelope": b"e" * 1400,  # about a v2 envelope's size
        "recipients": " ",
    }


def receipts_of(dest: str, items: list[OutItem]) -> dict[str, StoredReceipt]:
    """A reader's batch-form receipts for what it was sent, as `checked_batches` makes them."""
    bids = [i.ref.encode() for i in items]  # envelopes only: the ref is the bulletin id
    held = HeldBatch(dest, '{"statement":1}', "signature", tuple(bids))
    at = "2026-12-05T00:00:01Z"
    return {bid: StoredReceipt(bid, dest, "received", at, "", held, k) for k, bid in enumerate(bids)}


def _queue(part: list[str], first: int, readers: list[str]) -> Callable[[AuditBuffer], None]:
    """A group commit's posts: each one's bulletin row and an outbox row per reader, as posting adds them."""

    def rows(audit: AuditBuffer) -> None:
        for k, bid in enumerate(part):
            audit.insert(bulletins, [bulletin_row(bid, first + k)])
            audit.insert(outbox, [queued_row(d, "envelope", EnvelopeRef(bid)) for d in readers])

    return rows


async def measure(folder: Path, readers: list[str], posts: int, rounds: int, batch: int) -> dict[str, float]:
    store = await Store.open(f"sqlite+aiosqlite:///{folder / 'author.db'}", node=AUTHOR)
    config = cast(NodeConfig, SimpleNamespace(id=AUTHOR, batch_size=500))  # what the outbox reads of it here
    box = Outbox(config, store, cast(Federation, None), cast(PeerTransport, None))  # neither is reached here
    spent = dict.fromkeys(STEPS, 0.0)
    seq = 0
    try:
        for r in range(rounds):
            bids = [hashlib.sha256(f"{r}/{i}".encode()).hexdigest() for i in range(posts)]

            c0 = time.process_time()
            for i in range(0, posts, batch):
                await store.insert(_queue(bids[i : i + batch], seq + i + 1, readers))
            seq += posts
            c1 = time.process_time()
            got = await box._pending_many([Ask(d, 500) for d in readers])
            c2 = time.process_time()
            marked = await box._mark_sent_many(list(zip(readers, got, strict=True)))
            c3 = time.process_time()
            asks: list[Delivered] = []
            for dest, items in zip(readers, marked, strict=True):
                assert not isinstance(items, Exception) and len(items) == posts, items
                asks.append((dest, items, receipts_of(dest, items)))
            c4 = time.process_time()
            await box._delivered_many(asks)
            c5 = time.process_time()
            for step, cpu in zip(STEPS, (c1 - c0, c2 - c1, c3 - c2, c5 - c4), strict=True):
                spent[step] += cpu
    finally:
        await store.close()
    return spent


def floor(folder: Path, readers: list[str], posts: int, rounds: int, batch: int) -> float:
    """One bare row per pair through sqlite3, in the same group commits; its CPU."""
    db = sqlite3.connect(folder / "floor.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE pairs (n INTEGER PRIMARY KEY, dest TEXT NOT NULL, ref TEXT NOT NULL)")
    c0 = time.process_time()
    for r in range(rounds):
        bids = [hashlib.sha256(f"{r}/{i}".encode()).hexdigest() for i in range(posts)]
        for i in range(0, posts, batch):
            db.execute("BEGIN IMMEDIATE")
            rows = [(d, b) for b in bids[i : i + batch] for d in readers]
            db.executemany("INSERT INTO pairs (dest, ref) VALUES (?, ?)", rows)
            db.execute("COMMIT")
    cpu = time.process_time() - c0
    db.close()
    return cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--readers", type=int, default=199, help="readers besides the author (a channel of 200: 199)")
    p.add_argument("--posts", type=int, default=100, help="posts per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=10, help="posts per group commit")
    args = p.parse_args()
    readers = [f"r{i:03d}-customs" for i in range(args.readers)]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="exchange-outbox-rows-") as tmp:
        spent = asyncio.run(measure(Path(tmp), readers, args.posts, args.rounds, args.batch))
        bare = floor(Path(tmp), readers, args.posts, args.rounds, args.batch)
    pairs = args.rounds * args.posts * len(readers)
    total = sum(spent.values())
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs; "
        f"{len(readers)} readers, {args.rounds} x {args.posts} posts, {args.batch} a group commit"
    )
    print("µs of CPU per (reader, bulletin) pair: " + ", ".join(f"{s} {spent[s] / pairs * 1e6:.1f}" for s in STEPS))
    print(
        f"outbox bookkeeping {total / pairs * 1e6:.1f} µs a pair = {total / (args.rounds * args.posts) * 1e3:.2f} ms "
        f"per bulletin at {len(readers)} readers (issue 13's goal for the author's whole CPU: 10 ms)"
    )
    print(
        f"floor: one bare row per pair through sqlite3 {bare / pairs * 1e6:.1f} µs "
        f"= {bare / (args.rounds * args.posts) * 1e3:.2f} ms per bulletin; bookkeeping / floor {total / bare:.1f}x"
    )
    print(f"1-min load {load:.2f} -> {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
