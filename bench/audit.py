"""Audit log costs: verifying a 1,000,000-entry log, and entries appended per second under load.

Run: .venv/bin/python bench/audit.py [--entries N] [--append N] [--concurrency C] [--database-url URL]

1. Verify. It builds a log of N synthetic entries (canonical JSON, shaped like the node's own:
   bulletin.posted / received / delivered / opened) straight into a fresh SQLite file through
   SQLAlchemy Core in batches of 20,000 rows, with the node's schema, and signs a checkpoint of it
   with a node key, the way LogKeeper stores one. Then it times, end to end:
   - the direct path: read every row through the async engine (pages of 5,000, as the node
     reads), check each entry's index and stored leaf hash, recompute the RFC 9162 root, check
     the checkpoint's signature and its root (`LogVerifier`);
   - the export path: LogKeeper.export() records -> JSON Lines -> BundleCheck, i.e. what
     `exchange audit verify` does minus the network;
   and, for scale, each step alone: reading, leaf hashing, rooting, the signature check.
2. Append. C concurrent tasks append single entries through Store.write (group commit), first
   alone, then with a LogKeeper following the table (what a running node does); it prints
   entries/s and the average commit batch.

It prints figures and asserts nothing about time. The default run takes about a minute and a
half on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from exchange.audit.checkpoint import Checkpoint, log_origin, open_checkpoint, sign_checkpoint
from exchange.audit.log import BundleCheck, KeyRing, LogVerifier
from exchange.clock import timestamp
from exchange.crypto import SigningKey
from exchange.merkle import Frontier, leaf_hash
from exchange.service.audit.keeper import LogKeeper
from exchange.store import Store, audit_checkpoints, audit_log, metadata

NODE = "nl-customs"
BATCH = 20_000
console = Console()


def synthetic_entry(idx: int) -> bytes:
    """Canonical JSON (sorted keys, ASCII, no floats) shaped like the node's bulletin entries."""
    bid = hashlib.sha256(idx.to_bytes(8, "big")).hexdigest()
    day, hour, minute, second = 1 + idx // 86_400_000 % 28, idx // 3_600_000 % 24, idx // 60_000 % 60, idx // 1000 % 60
    at = f"2026-03-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{idx % 1000:03d}Z"
    kind = idx % 4
    if kind == 0:
        return (
            f'{{"at":"{at}","author":"{NODE}","bulletin":"{bid}","channel":"c2a-air-cargo-security","event":'
            f'"bulletin.posted","idx":{idx},"recipients":["gb-avsec","ke-customs","{NODE}","wco-rilo"],'
            f'"seq":{idx // 4 + 1},"state":3,"tlp":"AMBER","user":"officer"}}'
        ).encode()
    if kind == 1:
        return (
            f'{{"at":"{at}","author":"ke-customs","bulletin":"{bid}","channel":"c2a-air-cargo-security",'
            f'"event":"bulletin.received","from":"ke-customs","idx":{idx},"seq":{idx // 4 + 1}}}'
        ).encode()
    if kind == 2:
        return (
            f'{{"at":"{at}","bulletin":"{bid}","event":"bulletin.delivered","idx":{idx},'
            f'"receipt_at":"{at}","to":"gb-avsec"}}'
        ).encode()
    return (
        f'{{"at":"{at}","bulletin":"{bid}","channel":"c2a-air-cargo-security","event":"bulletin.opened",'
        f'"idx":{idx},"user":"analyst-{idx % 97}"}}'
    ).encode()


def build(path: Path, entries: int, key: SigningKey) -> tuple[float, str]:
    """Write the log and a signed checkpoint of it; return (seconds, checkpoint note)."""
    started = time.perf_counter()
    engine = sa.create_engine(f"sqlite:///{path}")
    metadata.create_all(engine)
    frontier = Frontier()
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        for lo in range(0, entries, BATCH):
            rows = []
            for idx in range(lo, min(entries, lo + BATCH)):
                entry = synthetic_entry(idx)
                leaf = leaf_hash(entry)
                frontier.append(leaf)
                rows.append({"idx": idx, "entry": entry, "leaf_hash": leaf})
            conn.execute(sa.insert(audit_log), rows)
        note = sign_checkpoint(Checkpoint(log_origin(NODE), frontier.size, frontier.root()), key).render()
        conn.execute(
            sa.insert(audit_checkpoints).values(
                size=frontier.size,
                root=frontier.root(),
                note=note,
                frontier=b"".join(frontier.hashes),
                at=timestamp(),
            )
        )
    engine.dispose()
    return time.perf_counter() - started, note


async def verify_direct(url: str, note: str, keys: KeyRing, entries: int) -> dict[str, float]:
    """Read every row through the async engine and verify it; then time each step alone."""
    store = await Store.open(url)
    times: dict[str, float] = {}
    try:
        started = time.perf_counter()
        verifier = LogVerifier(NODE, keys)
        verifier.checkpoint(note)
        for lo in range(0, entries, 5000):
            async with store.read() as conn:
                rows = await conn.execute(
                    sa.select(audit_log.c.idx, audit_log.c.entry, audit_log.c.leaf_hash)
                    .where(audit_log.c.idx >= lo, audit_log.c.idx < lo + 5000)
                    .order_by(audit_log.c.idx)
                )
                for idx, entry, leaf in rows:
                    verifier.entry(idx, entry, leaf)
        report = verifier.finish(complete=True)
        assert report.entries == entries
        times["verify, direct (read + checks + root + signature)"] = time.perf_counter() - started

        started = time.perf_counter()
        raw: list[bytes] = []
        for lo in range(0, entries, 5000):
            async with store.read() as conn:
                rows = await conn.execute(
                    sa.select(audit_log.c.entry).where(audit_log.c.idx >= lo, audit_log.c.idx < lo + 5000)
                )
                raw += [bytes(r[0]) for r in rows]
        times["  read the entries only"] = time.perf_counter() - started
        started = time.perf_counter()
        leaves = [leaf_hash(e) for e in raw]
        times["  leaf hashes only"] = time.perf_counter() - started
        started = time.perf_counter()
        Frontier.from_hashes(leaves).root()
        times["  root only (frontier)"] = time.perf_counter() - started
        started = time.perf_counter()
        json_ok = sum(1 for e in raw if json.loads(e)["idx"] >= 0)
        assert json_ok == entries
        times["  parse every entry (index check)"] = time.perf_counter() - started
        started = time.perf_counter()
        open_checkpoint(note, keys.log_key(NODE), log_origin(NODE))
        times["  checkpoint signature"] = time.perf_counter() - started
    finally:
        await store.close()
    return times


async def verify_export(url: str, key: SigningKey, keys: KeyRing) -> float:
    """What `exchange audit verify` does, minus HTTP: export records -> JSON Lines -> BundleCheck."""
    store = await Store.open(url)
    try:
        keeper = LogKeeper(NODE, store, key)
        started = time.perf_counter()
        check = BundleCheck(keys=keys)
        async for record in keeper.export():
            check.feed_line(json.dumps(record, separators=(",", ":")))
        check.finish()
        return time.perf_counter() - started
    finally:
        await store.close()


async def append_rate(url: str, count: int, concurrency: int, follow: bool, key: SigningKey) -> tuple[float, float]:
    """Entries/s for `count` single-entry jobs from `concurrency` tasks, and the mean commit batch."""
    store = await Store.open(url)
    keeper = LogKeeper(NODE, store, key) if follow else None
    if keeper is not None:
        await keeper.start()
    commits = 0
    original = store._commit

    async def counting(batch: Any) -> None:
        nonlocal commits
        commits += 1
        await original(batch)

    store._commit = counting  # type: ignore[method-assign]
    per_task = count // concurrency

    async def writer(n: int) -> None:
        for i in range(per_task):
            await store.audit(
                {"event": "bulletin.opened", "at": timestamp(), "bulletin": "ab" * 32, "user": f"u{n}-{i}"}
            )

    try:
        started = time.perf_counter()
        await asyncio.gather(*(writer(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
        if keeper is not None:
            await keeper.catch_up()
            assert keeper.size == store.audit_size
            await keeper.checkpoint()
    finally:
        if keeper is not None:
            await keeper.close()
        await store.close()
    done = per_task * concurrency
    return done / elapsed, done / max(commits, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="size of the log to verify")
    parser.add_argument("--append", type=int, default=20_000, help="entries to append in the load test")
    parser.add_argument("--concurrency", type=int, default=200, help="concurrent appending tasks")
    parser.add_argument("--database-url", default=None, help="append test database (default: a SQLite file)")
    parser.add_argument("--skip-export", action="store_true", help="skip the export-path verify")
    args = parser.parse_args()

    key = SigningKey.generate()
    keys = KeyRing({NODE: key.verify_key})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.db"
        console.print(f"building a log of {args.entries:,} entries in {path} ...")
        built, note = build(path, args.entries, key)
        size_mb = path.stat().st_size / 1e6
        url = f"sqlite+aiosqlite:///{path}"
        times = asyncio.run(verify_direct(url, note, keys, args.entries))
        if not args.skip_export:
            times["verify, export path (records -> JSON Lines -> BundleCheck)"] = asyncio.run(
                verify_export(url, key, keys)
            )
        table = Table(
            "step", "seconds", "entries/s", title=f"verify a {args.entries:,}-entry log ({size_mb:.0f} MB SQLite)"
        )
        table.add_row("build (generate, hash, insert in batches of 20,000, sign)", f"{built:.1f}", "")
        for step, seconds in times.items():
            rate = f"{args.entries / seconds:,.0f}" if seconds > 0.01 else ""
            table.add_row(step, f"{seconds:.2f}", rate)
        console.print(table)

        table = Table("writers", "keeper following", "entries/s", "entries per commit", title="append under load")
        for follow in (False, True):
            db = args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / f'append-{follow}.db'}"
            rate, per_commit = asyncio.run(append_rate(db, args.append, args.concurrency, follow, key))
            table.add_row(str(args.concurrency), "yes" if follow else "no", f"{rate:,.0f}", f"{per_commit:.1f}")
        console.print(table)
    load = os.getloadavg()
    console.print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
