"""End-to-end throughput of a real two-node federation, next to the ceiling of its unavoidable work.

Run: .venv/bin/python bench/throughput.py [--count N] [--batch-size B] [--channel-size K]
                                          [--via service|http|both] [--compare-batching]

It provisions a federation in a temporary folder, starts node A and node B on loopback (mutual
TLS, SQLite files in the folder), posts N bulletins at A, and measures the time until B stores
all of them and until A holds B's signed receipt for all of them. It then measures, with the same
code, what one bulletin costs in crypto (single-threaded) and in storage (batched group commit),
and reports the measured rate against that ceiling. It prints figures and never asserts on time.

Both nodes share one process and one event loop, and the ceiling sums both sides' work on one
thread, so the two figures are comparable. With --channel-size K > 2 the extra readers are in
the roster and the channel (A seals K wraps per bulletin) but are not started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import hashlib
import json
import logging
import os
import pstats
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.app import RunningNode, start_node
from exchange.clock import timestamp
from exchange.config import NodeConfig
from exchange.crypto import NodeKeys, SealedContent, canonical_json
from exchange.keystore import read_file
from exchange.model import Bulletin, NodeId
from exchange.node.tls import client_context
from exchange.protocol.channel import ChannelState
from exchange.protocol.envelope import (
    build_envelope,
    envelope_bytes,
    open_envelope,
    parse_envelope,
    verify_envelope,
)
from exchange.protocol.receipt import make_receipt, verify_receipt
from exchange.protocol.roster import Federation
from exchange.provision import init_federation
from exchange.service.node import NodeService
from exchange.service.users import authenticate
from exchange.store import AuditBuffer, Store, audit_log, bulletins, outbox, receipts

CHANNEL = "bench"
NODE_A, NODE_B = "a-customs", "b-customs"
BODY = ("Shipper XYZ Trading routes lithium batteries via AMS, mis-declared under HS 9503 as toys. " * 12)[:1024]
console = Console()
if not console.is_terminal:
    console = Console(width=160)  # piped output: do not squeeze the tables into 80 columns


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bulletin(i: int) -> dict[str, Any]:
    return {
        "kind": "threat-bulletin",
        "handling": {"tlp": "AMBER", "no_onward_sharing": True},
        "title": f"Undervalued lithium batteries declared as toys #{i}",
        "body": BODY,
        "indicators": {
            "air_waybills": ["176-12345675"],
            "hs_codes": ["8507.60"],
            "airports": ["AMS", "NBO"],
            "flights": ["KL565"],
            "companies": ["XYZ Trading Ltd"],
            "risk_indicators": ["undervaluation"],
        },
        "language": "en",
        "expires": "2027-01-31",
    }


# -- provisioning ---------------------------------------------------------------------------------


def node_ids(readers: int) -> list[str]:
    return [NODE_A, NODE_B] + [f"r{i:03d}-customs" for i in range(3, readers + 1)]


async def provision(folder: Path, readers: int, batch_size: int) -> dict[str, NodeConfig]:
    """Write a federation folder (as tests/conftest.py does) with free loopback ports, and init it."""
    folder.mkdir(parents=True)
    ids = node_ids(readers)
    members = {
        n: ["read", "post"] + (["admin"] if n == NODE_A else []) if n in (NODE_A, NODE_B) else ["read"] for n in ids
    }
    member_toml = ", ".join(f'"{n}" = {json.dumps(rs)}' for n, rs in members.items())
    (folder / "federation.toml").write_text(
        '[federation]\nname = "bench federation"\nkeys_dir = "../keys"\ndata_dir = "../var"\n\n'
        f'[[channel]]\nid = "{CHANNEL}"\nowner = "{NODE_A}"\ntitle = "bench"\nagencies = ["customs"]\n'
        f'tlp = "AMBER"\nmembers = {{ {member_toml} }}\n'
    )
    for i, node_id in enumerate(ids):
        (folder / f"{node_id}.toml").write_text(
            f'[node]\nid = "{node_id}"\nname = "Bench {node_id}"\ncountry = "X{chr(65 + i % 26)}"\n'
            f'agency = "customs"\nport = {free_port()}\nbatch_size = {batch_size}\n'
            "retry_base_seconds = 0.05\nretry_max_seconds = 1.0\nrequest_timeout_seconds = 30\n"
        )
    await init_federation(folder)
    return {n: NodeConfig.load(folder / f"{n}.toml", environ={}) for n in ids}


# -- end to end -----------------------------------------------------------------------------------


@dataclass
class Run:
    via: str
    count: int
    batch_size: int
    readers: int
    post_s: float = float("nan")  # all N posts returned at A
    stored_s: float = float("nan")  # all N stored at B
    receipts_s: float = float("nan")  # A holds B's receipt for all N
    failed_posts: int = 0
    send_failures: int = 0
    timed_out: bool = False


@dataclass
class Material:
    """What the ceiling measurement needs, taken from the running nodes."""

    fed: Federation
    state: ChannelState
    keys_a: NodeKeys
    keys_b: NodeKeys


async def scalar_count(store: Store, query: sa.Select[Any]) -> int:
    async with store.read() as conn:
        return int((await conn.execute(query)).scalar_one())


async def post_service(service: NodeService, token: str, count: int, concurrency: int) -> int:
    user = await authenticate(service.store, token)  # the provisioned contact point, with its channels
    todo: Iterator[int] = iter(range(count))
    failed = 0

    async def worker() -> None:
        nonlocal failed
        for i in todo:
            try:
                await service.post(user, CHANNEL, Bulletin.model_validate(bulletin(i)))
            except Exception as exc:
                failed += 1
                console.print(f"[red]post {i} failed: {type(exc).__name__}: {exc}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failed


async def post_http(cfg: NodeConfig, token: str, count: int, concurrency: int) -> int:
    ctx = client_context(read_file(cfg.keys_dir / "tls.crt").decode())
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{cfg.endpoint}/api/v1/channels/{CHANNEL}/bulletins"
    todo: Iterator[int] = iter(range(count))
    failed = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=concurrency)) as session:

        async def worker() -> None:
            nonlocal failed
            for i in todo:
                async with session.post(url, json=bulletin(i), headers=headers) as resp:
                    if resp.status != 201:
                        failed += 1
                        console.print(f"[red]post {i}: HTTP {resp.status}: {await resp.text()}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failed


async def end_to_end(root: Path, args: argparse.Namespace, via: str, batch_size: int) -> tuple[Run, Material]:
    configs = await provision(root / f"{via}-b{batch_size}" / "nodes", args.channel_size, batch_size)
    run = Run(via, args.count, batch_size, args.channel_size)
    nodes: list[RunningNode] = []
    try:
        for node_id in (NODE_A, NODE_B):
            nodes.append(await start_node(configs[node_id]))
        a, b = nodes[0].service, nodes[1].service
        stored_q = sa.select(sa.func.count()).select_from(bulletins).where(bulletins.c.author == NODE_A)
        receipts_q = (
            sa.select(sa.func.count())
            .select_from(receipts)
            .where(receipts.c.node == NODE_B, receipts.c.status == "received")
        )
        profiler = cProfile.Profile() if args.profile else None
        loop = asyncio.get_running_loop()
        if profiler:
            profiler.enable()
        t0 = loop.time()
        token = (configs[NODE_A].keys_dir / "tokens" / "officer").read_text().strip()

        async def post_all() -> int:
            failed = await (
                post_service(a, token, args.count, args.concurrency)
                if via == "service"
                else post_http(configs[NODE_A], token, args.count, args.concurrency)
            )
            run.post_s = loop.time() - t0
            return failed

        poster = asyncio.create_task(post_all())
        deadline = t0 + args.timeout
        stored = got = 0
        while True:
            now = loop.time()
            if stored < args.count:
                stored = await scalar_count(b.store, stored_q)
                if stored >= args.count:
                    run.stored_s = loop.time() - t0
            if got < args.count:
                got = await scalar_count(a.store, receipts_q)
                if got >= args.count:
                    run.receipts_s = loop.time() - t0
            if stored >= args.count and got >= args.count and poster.done():
                break
            if now > deadline:
                run.timed_out = True
                console.print(
                    f"[red]{via} batch {batch_size}: timed out after {args.timeout}s: "
                    f"{stored} stored at B, {got} receipts at A"
                )
                break
            await asyncio.sleep(0.05)  # each poll is two small reads; keep them out of the way
        if profiler:
            profiler.disable()
            profiler.dump_stats(f"{args.profile}.{via}-b{batch_size}")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile_lines)
        if not poster.done():
            poster.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            run.failed_posts = await poster
        run.send_failures = nodes[0].service.outbox.senders[NODE_B].status.failures
        material = Material(a.fed, a.channels.state(CHANNEL), a.keys, b.keys)
    finally:
        for node in reversed(nodes):
            await node.stop()
    return run, material


# -- ceiling --------------------------------------------------------------------------------------


def crypto_costs(m: Material, samples: int) -> tuple[dict[str, float], list[bytes]]:
    """Microseconds per bulletin of each crypto step, single-threaded; also the envelopes built."""
    readers = [(NodeId(n), m.fed.encryption_key(n)) for n in m.state.readers]
    a, b = NodeId(NODE_A), NodeId(NODE_B)
    spent = dict.fromkeys(("build", "verify", "open", "receipt", "codec"), 0.0)
    wire: list[bytes] = []
    clock = time.perf_counter
    for i in range(samples):
        item = Bulletin.model_validate(bulletin(i))
        t = clock()
        env = build_envelope(
            item, state=m.state, author=a, key=m.keys_a.signing, seq=i + 1, readers=readers, created=timestamp()
        )
        t1 = clock()
        bid = verify_envelope(env, m.fed, m.state)
        t2 = clock()
        open_envelope(env, bid, b, m.keys_b.decryption)
        t3 = clock()
        verify_receipt(make_receipt(bid, b, "received", timestamp(), m.keys_b.signing), m.fed)
        t4 = clock()
        raw = envelope_bytes(env)
        parse_envelope(raw)
        t5 = clock()
        wire.append(raw)
        for name, dt in zip(spent, (t1 - t, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            spent[name] += dt
    return {k: v / samples * 1e6 for k, v in spent.items()}, wire


def calibration(m: Material, rounds: int = 500) -> dict[str, float]:
    """Raw primitive costs here and now, to compare with DESIGN_NOTES.md "Measured costs" (46/130/95 µs)."""
    message = b"x" * 2048
    signature = m.keys_a.signing.sign(message)
    verify_key = m.fed.verify_key(NODE_A)
    reader = m.fed.encryption_key(NODE_B)
    sealed = SealedContent(b"calibration")
    out: dict[str, float] = {}
    for name, fn in (
        ("Ed25519 sign 2 KB", lambda: m.keys_a.signing.sign(message)),
        ("Ed25519 verify 2 KB", lambda: verify_key.verify(signature, message)),
        ("HPKE seal (wrap 32 B)", lambda: sealed.wrap(reader, b"calibration")),
    ):
        t0 = time.perf_counter()
        for _ in range(rounds):
            fn()
        out[name] = (time.perf_counter() - t0) / rounds * 1e6
    return out


async def storage_cost(folder: Path, wire: list[bytes], count: int, batch: int, m: Material) -> float:
    """Microseconds per bulletin to store, through Store.write in batches, every row the protocol keeps.

    Sender: bulletin + an outbox row per other reader + audit entry; receiver: bulletin + receipt + audit entry; sender
    again: receipt + outbox update + audit entry. Fresh SQLite files, the node's own pragmas.
    """
    folder.mkdir(parents=True, exist_ok=True)
    sender = await Store.open(f"sqlite+aiosqlite:///{folder / 'ceiling-a.db'}")
    receiver = await Store.open(f"sqlite+aiosqlite:///{folder / 'ceiling-b.db'}")
    now = timestamp()
    receipt = make_receipt("0" * 64, NodeId(NODE_B), "received", now, m.keys_b.signing)
    receipt_text = canonical_json(receipt.model_dump(mode="json")).decode()
    content = canonical_json(Bulletin.model_validate(bulletin(0)).payload()).decode()
    try:
        t0 = time.perf_counter()
        for start in range(0, count, batch):
            idx = range(start, min(count, start + batch))
            ids = [hashlib.sha256(i.to_bytes(8, "big")).hexdigest() for i in idx]
            rows = [
                {
                    "id": bid,
                    "channel": CHANNEL,
                    "author": NODE_A,
                    "seq": i + 1,
                    "state_pos": 0,
                    "tlp": "AMBER",
                    "created": now,
                    "stored_at": now,
                    "envelope": wire[i % len(wire)],
                    "recipients": f" {NODE_A} {NODE_B} ",
                    "content": content,
                }
                for i, bid in zip(idx, ids, strict=True)
            ]
            rrows = [
                {"bulletin_id": bid, "node": NODE_B, "status": "received", "at": now, "receipt": receipt_text}
                for bid in ids
            ]

            async def post(
                conn: AsyncConnection, audit: AuditBuffer, rows: list[Any] = rows, ids: list[str] = ids
            ) -> None:
                await conn.execute(sa.insert(bulletins), rows)
                await conn.execute(
                    sa.insert(outbox),
                    [
                        {"dest": d, "kind": "envelope", "ref": b, "state": "queued"}
                        for b in ids
                        for d in m.state.readers
                        if d != NODE_A
                    ],
                )
                for r in rows:
                    audit.add(
                        {
                            "event": "bulletin.posted",
                            "at": now,
                            "bulletin": r["id"],
                            "channel": CHANNEL,
                            "author": NODE_A,
                            "seq": r["seq"],
                            "state": 0,
                            "user": "officer",
                            "recipients": m.state.readers,
                            "tlp": "AMBER",
                        }
                    )

            async def ingest(
                conn: AsyncConnection, audit: AuditBuffer, rows: list[Any] = rows, rrows: list[Any] = rrows
            ) -> None:
                await conn.execute(sa.insert(bulletins), rows)
                await conn.execute(sa.insert(receipts), rrows)
                for r in rows:
                    audit.add(
                        {
                            "event": "bulletin.received",
                            "at": now,
                            "bulletin": r["id"],
                            "channel": CHANNEL,
                            "author": NODE_A,
                            "seq": r["seq"],
                            "from": NODE_A,
                        }
                    )

            async def delivered(
                conn: AsyncConnection, audit: AuditBuffer, rrows: list[Any] = rrows, ids: list[str] = ids
            ) -> None:
                await conn.execute(sa.insert(receipts), rrows)
                await conn.execute(
                    sa.update(outbox)
                    .where(outbox.c.dest == NODE_B, outbox.c.kind == "envelope", outbox.c.ref.in_(ids))
                    .values(state="delivered")
                )
                for b in ids:
                    audit.add(
                        {"event": "bulletin.delivered", "at": now, "bulletin": b, "to": NODE_B, "receipt_at": now}
                    )

            await sender.write(post)
            await receiver.write(ingest)
            await sender.write(delivered)
        elapsed = time.perf_counter() - t0
        assert await scalar_count(receiver, sa.select(sa.func.count()).select_from(audit_log)) == count
        return elapsed / count * 1e6
    finally:
        await sender.close()
        await receiver.close()


# -- report ---------------------------------------------------------------------------------------


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}" if seconds == seconds and seconds > 0 else "—"


def report(
    runs: list[Run],
    costs: dict[str, float],
    storage_us: float,
    samples: int,
    storage_batch: int,
    calib: dict[str, float],
) -> None:
    crypto_us = costs["build"] + costs["verify"] + costs["open"] + costs["receipt"]
    ceil_crypto = 1e6 / crypto_us
    ceil_total = 1e6 / (crypto_us + storage_us)
    breakdown = Table(title=f"Ceiling: cost per bulletin, one thread ({samples} samples, {runs[0].readers} readers)")
    breakdown.add_column("step")
    breakdown.add_column("µs/bulletin", justify="right")
    for label, value in (
        ("build_envelope (AES + HPKE seal per reader + sign)", costs["build"]),
        ("verify_envelope", costs["verify"]),
        ("open_envelope", costs["open"]),
        ("make_receipt + verify_receipt", costs["receipt"]),
        ("= crypto", crypto_us),
        (f"storage: Store.write, {storage_batch} rows per job, both nodes' rows", storage_us),
        ("= crypto + storage", crypto_us + storage_us),
        ("(not in ceiling) envelope_bytes + parse_envelope", costs["codec"]),
        *(
            (f"(calibration) {name}; DESIGN_NOTES: {ref} µs", calib[name])
            for name, ref in zip(calib, (46, 130, 95), strict=True)
        ),
    ):
        breakdown.add_row(label, f"{value:,.0f}")
    console.print(breakdown)

    table = Table(title="End to end: posted at A → stored at B (and → B's receipt at A)")
    for col in (
        "posting via",
        "N",
        "batch",
        "readers",
        "elapsed s",
        "post-only b/s",
        "e2e b/s",
        "to-receipt b/s",
        "ceiling crypto b/s",
        "ceiling crypto+storage b/s",
        "ratio",
    ):
        table.add_column(col, justify="right")
    for r in runs:
        ratio = f"{r.count / r.stored_s / ceil_total:.0%}" if r.stored_s == r.stored_s else "—"
        table.add_row(
            r.via + (" (TIMED OUT)" if r.timed_out else ""),
            str(r.count),
            str(r.batch_size),
            str(r.readers),
            f"{r.stored_s:.2f}" if r.stored_s == r.stored_s else "—",
            rate(r.count, r.post_s),
            rate(r.count, r.stored_s),
            rate(r.count, r.receipts_s),
            f"{ceil_crypto:,.0f}",
            f"{ceil_total:,.0f}",
            ratio,
        )
    console.print(table)
    for r in runs:
        if r.failed_posts or r.send_failures:
            console.print(
                f"[yellow]{r.via} batch {r.batch_size}: {r.failed_posts} failed posts, "
                f"{r.send_failures} failed sends A→B"
            )
    console.print(
        "e2e b/s = N / seconds until B stores all N; ratio = e2e b/s / ceiling (crypto+storage). "
        "Both nodes share one process, as the ceiling shares one thread."
    )


async def main(args: argparse.Namespace) -> None:
    logging.getLogger("exchange.outbox").setLevel(logging.ERROR)  # unstarted extra readers refuse connections
    vias = ["service", "http"] if args.via == "both" else [args.via]
    sizes = [1, args.batch_size if args.batch_size != 1 else 100] if args.compare_batching else [args.batch_size]
    load = os.getloadavg()
    console.print(
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
        "(anything above ~0.5 before we start means another process shares the cores)"
    )
    runs: list[Run] = []
    material: Material | None = None
    with tempfile.TemporaryDirectory(prefix="exchange-bench-") as tmp:
        root = Path(tmp)
        for size in sizes:
            for via in vias:
                console.print(
                    f"running: {args.count} bulletins via {via}, batch size {size}, {args.channel_size} readers …"
                )
                run, material = await end_to_end(root, args, via, size)
                runs.append(run)
        assert material is not None
        samples = min(args.count, args.crypto_samples)
        console.print(f"measuring the ceiling ({samples} crypto samples, {args.count} stored rows) …")
        costs, wire = crypto_costs(material, samples)
        calib = calibration(material)
        storage_us = await storage_cost(root / "ceiling", wire, args.count, args.storage_batch, material)
    report(runs, costs, storage_us, samples, args.storage_batch, calib)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=2000, help="bulletins to post at A (default 2000)")
    p.add_argument("--batch-size", type=int, default=100, help="node batch_size: envelopes per push (default 100)")
    p.add_argument("--channel-size", type=int, default=2, help="readers in the channel, A and B included (default 2)")
    p.add_argument(
        "--via",
        choices=["service", "http", "both"],
        default="service",
        help="post through NodeService.post (default) or A's HTTP client API, or both",
    )
    p.add_argument("--compare-batching", action="store_true", help="run with batch size 1 and with --batch-size")
    p.add_argument("--concurrency", type=int, default=64, help="concurrent posters at A (default 64)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for delivery per run")
    p.add_argument("--crypto-samples", type=int, default=1000, help="bulletins for the crypto ceiling")
    p.add_argument("--storage-batch", type=int, default=100, help="rows per Store.write job for the ceiling")
    p.add_argument("--profile", metavar="PREFIX", help="cProfile each end-to-end run; write PREFIX.<run> stats")
    p.add_argument("--profile-lines", type=int, default=25, help="functions to print per profile")
    args = p.parse_args()
    if args.channel_size < 2:
        p.error("--channel-size must be at least 2 (A and B)")
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
