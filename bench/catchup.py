"""Catch-up after downtime: a reader that was offline while N bulletins were posted comes back.

Run: .venv/bin/python bench/catchup.py [--count 100000]

It provisions two nodes (author A and reader C, one channel, real mutual TLS, SQLite), builds N
envelopes at A with A's real keys (using both cores) and stores them at A exactly as posting
does, with C's outbox rows queued: that is A's state after N posts while C was down. Then it
starts both nodes and times C until it holds all N (A's outbox pushing, C's catch-up pulling;
duplicates between the two are dropped by id). `--layout loop` (the default) runs both nodes in
this process on one event loop; `--layout processes` runs A as its own `exchange node run`
process, as two administrations' nodes run, and C in this process.

In the same run it measures the receiver's crypto ceiling from the primitives alone, on one of
the seeded envelopes: R = Ed25519 verify (envelope) + HPKE open + AES-GCM open + Ed25519 sign
(receipt) / B, where B is the bulletins per receipt signature C actually made; 1/R on one core,
2/R on two. It prints the load average with each figure and C's receipts per signature. It
prints figures; no asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cpu_profile import cpu_seconds, machine_busy_seconds, workers_cpu_seconds
from throughput import NodeProcess

from exchange.app import start_node
from exchange.clock import timestamp
from exchange.config import NodeConfig
from exchange.crypto import NodeKeys, b64d, open_content, strict_loads
from exchange.keystore import NodeKeyFiles, load_federation, read_provisioned_channels
from exchange.model import Bulletin, NodeId
from exchange.protocol.channel import ChannelState, apply_event
from exchange.protocol.envelope import build_envelope, bulletin_id, parse_envelope, wrap_info
from exchange.protocol.signing import signing_input
from exchange.service.records import bulletin_row
from exchange.store import AuditBuffer, Store, bulletins, insert_rows, outbox
from tests.conftest import write_federation

A, C = "nl-customs", "de-customs"
NODES = {A: ("NL", "customs"), C: ("DE", "customs")}
CHANNEL = {"id": "c2c", "owner": A, "agencies": ["customs"], "members": {A: ["read", "post", "admin"], C: ["read"]}}


def bulletin(i: int) -> Bulletin:
    return Bulletin.model_validate(
        {
            "kind": "seizure-report",
            "handling": {"tlp": "AMBER"},
            "title": f"Seizure {i}",
            "body": "b" * 600,
            "indicators": {"air_waybills": [f"176-{i % 10**7:07d}{i % 10**7 % 7}"], "airports": ["AMS"]},
        }
    )


_WORK: dict[str, Any] = {}


def _init(folder: str) -> None:
    cfg = NodeConfig.load(Path(folder) / "nodes" / f"{A}.toml", environ={})
    fed = load_federation(cfg)
    state = None
    for events in read_provisioned_channels(cfg.channels_dir):
        for event in events:
            state = apply_event(state, event, fed)
    _WORK.update(cfg=cfg, fed=fed, keys=NodeKeyFiles(cfg.keys_dir).load(), state=state)


def _build(seqs: range) -> list[dict[str, Any]]:
    keys: NodeKeys = _WORK["keys"]
    state: ChannelState = _WORK["state"]
    readers = [(NodeId(n), _WORK["fed"].encryption_key(n)) for n in state.readers]
    rows = []
    for seq in seqs:
        b = bulletin(seq)
        now = timestamp()
        env = build_envelope(b, state=state, author=NodeId(A), key=keys.signing, seq=seq, readers=readers, created=now)
        rows.append(bulletin_row(env, bulletin_id(env.header), b, now))
    return rows


async def seed_author(folder: Path, count: int) -> float:
    """Store `count` posts at A with C's outbox rows queued; returns seconds spent."""
    started = time.perf_counter()
    cfg = NodeConfig.load(folder / "nodes" / f"{A}.toml", environ={})
    chunks = [range(i, min(i + 1000, count + 1)) for i in range(1, count + 1, 1000)]
    store = await Store.open(cfg.database_url)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2, initializer=_init, initargs=(str(folder),)) as pool:
        for rows in pool.imap(_build, chunks):

            async def job(conn: AsyncConnection, audit: AuditBuffer, rows: list[dict[str, Any]] = rows) -> None:
                await insert_rows(conn, bulletins, rows)
                await conn.execute(
                    sa.insert(outbox),
                    [{"dest": C, "kind": "envelope", "ref": r["id"], "state": "queued"} for r in rows],
                )

            await store.write(job)
    await store.close()
    return time.perf_counter() - started


def timed(fn: Any, n: int = 300, rounds: int = 5) -> float:
    """Median over `rounds` of the mean seconds per call over `n` calls."""
    per_round = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        per_round.append((time.perf_counter() - t0) / n)
    return statistics.median(per_round)


def receiver_crypto(folder: Path) -> dict[str, float]:
    """Seconds per call of each primitive C must run per bulletin, on a seeded envelope's inputs."""
    _init(str(folder))
    env = parse_envelope(_build(range(1, 2))[0]["envelope"])
    cfg_c = NodeConfig.load(folder / "nodes" / f"{C}.toml", environ={})
    keys_c = NodeKeyFiles(cfg_c.keys_dir).load()
    bid = bulletin_id(env.header)
    mine = next(i for i, r in enumerate(env.header.recipients) if r.node == C)
    signed = signing_input("envelope", {"header": strict_loads(env.header.canonical), "wraps": env.wraps})
    signature = b64d(env.signature)
    verify_key = _WORK["fed"].verify_key(A)
    verify_key.verify(signature, signed)  # the input is the one the author signed
    statement = {"v": 2, "node": C, "status": "received", "at": timestamp(), "signer": keys_c.signing.kid}
    receipt_input = signing_input("receipt-batch", {**statement, "size": 1000, "root": "A" * 43})
    wrapped, info = b64d(env.wraps[mine]), wrap_info(bid, keys_c.decryption.kid)
    commitment, nonce, ciphertext = b64d(env.header.key_commitment), b64d(env.header.nonce), b64d(env.ciphertext)
    return {
        "verify": timed(lambda: verify_key.verify(signature, signed)),
        "open": timed(
            lambda: open_content(
                wrapped_key=wrapped,
                info=info,
                reader=keys_c.decryption,
                key_commitment_=commitment,
                nonce=nonce,
                ciphertext=ciphertext,
            )
        ),
        "sign": timed(lambda: keys_c.signing.sign(receipt_input)),
    }


def main_thread_cpu(pid: int) -> float:
    """CPU seconds of a process's main thread (its event loop) so far, from /proc."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count(db: sqlite3.Connection, sql: str) -> int:
    return int(db.execute(sql).fetchone()[0] or 0)


async def main(total: int, workers: int | None, layout: str, batch_size: int | None = None) -> None:
    from exchange.provision import init_federation

    with tempfile.TemporaryDirectory(prefix="exchange-catchup-") as tmp:
        folder = Path(tmp)
        options: dict[str, Any] = {"catchup_interval_seconds": 3600}
        options["crypto_workers"] = NodeConfig.model_fields["crypto_workers"].default if workers is None else workers
        if batch_size is not None:
            options["batch_size"] = batch_size
        batch = options.get("batch_size", NodeConfig.model_fields["batch_size"].default)
        print(f"crypto_workers = {options['crypto_workers']} per node; layout {layout}; batch_size {batch}")
        write_federation(folder / "nodes", NODES, [CHANNEL], {}, options)
        await init_federation(folder / "nodes")
        seeding = await seed_author(folder, total)
        print(f"seeded {total} posts at {A} while {C} was offline ({seeding:.1f}s, not part of the figure)")
        crypto_load = os.getloadavg()
        crypto = receiver_crypto(folder)
        cfg_a = NodeConfig.load(folder / "nodes" / f"{A}.toml", environ={})
        cfg_c = NodeConfig.load(folder / "nodes" / f"{C}.toml", environ={})
        if layout == "processes":
            node_a: Any = NodeProcess(cfg_a, folder / "nodes" / f"{A}.toml", folder / f"{A}.log")
            node_a.start()
            await node_a.ready()
            pids = [os.getpid(), node_a.pid]
        else:
            node_a = await start_node(cfg_a)
            pids = [os.getpid()]
        load_before = os.getloadavg()

        def cpu_now() -> tuple[float, float, float]:
            """CPU seconds so far of the nodes' processes: in all, of their event loops, of their workers."""
            return (
                sum(map(cpu_seconds, pids)),
                sum(map(main_thread_cpu, pids)),
                sum(map(workers_cpu_seconds, pids)),
            )

        (cpu0, loop0, workers0), busy0 = cpu_now(), machine_busy_seconds()
        author0 = cpu_seconds(pids[-1])  # A's process and workers (layout processes)
        started = time.perf_counter()
        node_c = await start_node(cfg_c)
        # C only adds bulletins, so the top of its rowid is how many it holds: an index seek, not a
        # count that grows with the table (polled on the nodes' own event loop).
        db = sqlite3.connect(f"file:{sa.engine.make_url(cfg_c.database_url).database}?mode=ro", uri=True)
        last, last_t = 0, started
        try:
            while (n := count(db, "SELECT max(n) FROM bulletins")) < total:
                now = time.perf_counter()
                if now - last_t >= 10:
                    print(f"  {n:>7} held after {now - started:5.1f}s ({(n - last) / (now - last_t):,.0f}/s lately)")
                    last, last_t = n, now
                await asyncio.sleep(0.2)
            elapsed = time.perf_counter() - started
            cpu_end, loop_end, workers_end = cpu_now()
            cpu, loop, workers_cpu = cpu_end - cpu0, loop_end - loop0, workers_end - workers0
            author = cpu_seconds(pids[-1]) - author0
            opened = node_c.service.crypto.opened
            others = max(0.0, machine_busy_seconds() - busy0 - cpu) / elapsed
            load_after = os.getloadavg()
            receipts = count(db, "SELECT count(*) FROM receipts WHERE status = 'received'")
            signatures = count(
                db,
                "SELECT count(DISTINCT CASE WHEN batch IS NULL THEN json_extract(receipt, '$.signature') "
                "ELSE (SELECT signature FROM receipt_batches WHERE id = batch) END) FROM receipts "
                "WHERE status = 'received'",
            )
        finally:
            db.close()
            await node_c.stop()
            if isinstance(node_a, NodeProcess):
                node_a.stop()
            else:
                await node_a.stop()
    rate = total / elapsed
    per_signature = receipts / signatures if signatures else 1.0
    r = crypto["verify"] + crypto["open"] + crypto["sign"] / per_signature
    cores = os.cpu_count() or 1
    print(
        f"caught up {total} bulletins in {elapsed:.1f}s: {rate:,.0f} bulletins/s "
        f"(load {load_before[0]:.2f} before, {load_after[0]:.2f} after)"
    )
    print(
        f"CPU of both nodes (their processes and crypto workers) {cpu / total * 1e3:.2f} ms per bulletin, of it "
        f"the event loop{'s' if layout == 'processes' else ''} {loop / total * 1e3:.2f} ms "
        f"and the crypto workers {workers_cpu / total * 1e3:.2f} ms; "
        f"others' CPU during the catch-up {others:.2f} cores; C checked and opened {opened / total:.2f} envelopes "
        "per bulletin (more than 1: pushed and pulled at once)"
    )
    if layout == "processes":
        print(
            f"  of it A (author, its process and workers) {author / total * 1e3:.2f} ms, "
            f"C (reader) {(cpu - author) / total * 1e3:.2f} ms per bulletin"
        )
    print(
        f"receiver crypto, µs per call (median of 5 rounds, load {crypto_load[0]:.2f}): Ed25519 verify "
        f"{crypto['verify'] * 1e6:.0f}, HPKE + AES-GCM open {crypto['open'] * 1e6:.0f}, Ed25519 sign "
        f"{crypto['sign'] * 1e6:.0f}; C made {receipts} receipts under {signatures} signatures "
        f"(B = {per_signature:.1f} per signature)"
    )
    print(
        f"receiver crypto ceiling R = verify + open + sign/B = {r * 1e6:.0f} µs: {1 / r:,.0f} bulletins/s on one "
        f"core, {cores / r:,.0f} on {cores}; catch-up at {rate * r:.0%} of the one-core ceiling, "
        f"{rate * r / cores:.0%} of the {cores}-core one"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="catch-up after downtime")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--crypto-workers", type=int, help="each node's crypto_workers (default: NodeConfig's)")
    parser.add_argument(
        "--layout",
        choices=["loop", "processes"],
        default="loop",
        help="both nodes on this process's event loop, or A as its own `exchange node run` process",
    )
    parser.add_argument("--batch-size", type=int, help="each node's batch_size (pushes; default: NodeConfig's)")
    args = parser.parse_args()
    asyncio.run(main(args.count, args.crypto_workers, args.layout, args.batch_size))
