"""Catch-up after downtime: a reader that was offline while N bulletins were posted comes back.

Run: .venv/bin/python bench/catchup.py [--count 100000]

It provisions two nodes (author A and reader C, one channel, real mutual TLS, SQLite), builds N
envelopes at A with A's real keys (using both cores) and stores them at A exactly as posting
does, with C's outbox rows queued: that is A's state after N posts while C was down. Then it
starts both nodes and times C until it holds all N (A's outbox pushing, C's catch-up pulling;
duplicates between the two are dropped by id). In the same run it measures the receiver's
ceiling: verify + open + receipt per bulletin, single-threaded. It prints figures; no asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exchange.app import start_node
from exchange.clock import timestamp
from exchange.config import NodeConfig
from exchange.crypto import NodeKeys
from exchange.keystore import NodeKeyFiles, load_federation, read_provisioned_channels
from exchange.model import Bulletin, NodeId
from exchange.protocol.channel import ChannelState, apply_event
from exchange.protocol.envelope import build_envelope, bulletin_id, envelope_bytes, open_envelope, verify_envelope
from exchange.protocol.receipt import make_receipt
from exchange.service.records import bulletin_row
from exchange.store import AuditBuffer, Store, bulletins, outbox
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
            "indicators": {"air_waybills": [f"176-{i % 10**8:08d}"], "airports": ["AMS"]},
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
                await conn.execute(sa.insert(bulletins), rows)
                await conn.execute(
                    sa.insert(outbox),
                    [{"dest": C, "kind": "envelope", "ref": r["id"], "state": "queued"} for r in rows],
                )

            await store.write(job)
    await store.close()
    return time.perf_counter() - started


def receiver_ceiling(folder: Path, samples: int = 300) -> float:
    """Seconds per bulletin for what C must do regardless: verify, open, sign a receipt."""
    _init(str(folder))
    rows = _build(range(1, samples + 1))
    cfg_c = NodeConfig.load(folder / "nodes" / f"{C}.toml", environ={})
    keys_c = NodeKeyFiles(cfg_c.keys_dir).load()
    from exchange.protocol.envelope import parse_envelope

    envs = [parse_envelope(r["envelope"]) for r in rows]
    started = time.perf_counter()
    for env in envs:
        bid = verify_envelope(env, _WORK["fed"], _WORK["state"])
        open_envelope(env, bid, NodeId(C), keys_c.decryption)
        make_receipt(bid, NodeId(C), "received", timestamp(), keys_c.signing)
        envelope_bytes(env)
    return (time.perf_counter() - started) / samples


async def held(store: Store) -> int:
    async with store.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(bulletins))).scalar_one())


async def main(count: int) -> None:
    from exchange.provision import init_federation

    with tempfile.TemporaryDirectory(prefix="exchange-catchup-") as tmp:
        folder = Path(tmp)
        write_federation(folder / "nodes", NODES, [CHANNEL], {}, {"catchup_interval_seconds": 3600})
        await init_federation(folder / "nodes")
        seeding = await seed_author(folder, count)
        print(f"seeded {count} posts at {A} while {C} was offline ({seeding:.1f}s, not part of the figure)")
        ceiling = receiver_ceiling(folder)
        cfg_a = NodeConfig.load(folder / "nodes" / f"{A}.toml", environ={})
        cfg_c = NodeConfig.load(folder / "nodes" / f"{C}.toml", environ={})
        node_a = await start_node(cfg_a)
        started = time.perf_counter()
        node_c = await start_node(cfg_c)
        last, last_t = 0, started
        try:
            while (n := await held(node_c.service.store)) < count:
                now = time.perf_counter()
                if now - last_t >= 10:
                    print(f"  {n:>7} held after {now - started:5.1f}s ({(n - last) / (now - last_t):,.0f}/s lately)")
                    last, last_t = n, now
                await asyncio.sleep(0.2)
            elapsed = time.perf_counter() - started
        finally:
            await node_c.stop()
            await node_a.stop()
    rate = count / elapsed
    print(f"caught up {count} bulletins in {elapsed:.1f}s: {rate:,.0f} bulletins/s")
    print(
        f"receiver ceiling (verify + open + receipt, one thread): {1 / ceiling:,.0f} bulletins/s "
        f"({ceiling * 1e6:.0f} us each); ratio {rate * ceiling:.0%}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="catch-up after downtime")
    parser.add_argument("--count", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().count))
