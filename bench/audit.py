"""Audit log costs at a million entries: `exchange audit verify` against the floor measured in the
same run, a node's start and its proof levels, a bulletin's entries through the index, and appends.

Run: .venv/bin/python bench/audit.py [--entries N] [--append N] [--concurrency C] [--general] [--skip-append]

1. Build. A federation of two nodes in a temporary folder (nl-customs runs; ke-customs, its
   witness, is never started). N synthetic entries shaped like the node's own (bulletin.posted,
   received, delivered, opened: four per bulletin) are written straight into nl's SQLite log after
   the entries `federation init` wrote, with their bulletin index column, and nl signs two
   checkpoints with its key: one at N - 10,000 co-signed by ke (what a witness round leaves) and
   one of every entry (what a clean stop leaves). With --minutes M, also one at the end of each of
   M minutes, stored one minute apart up to the build's time, as a node signs one each minute its
   log grew (43,200: a month), so that the figures include the checkpoints an export carries.
2. The floor, measured in the same run, on one core: every row (idx, entry, leaf hash) read with
   the sqlite3 module a page of 5,000 at a time, and per entry 2 SHA-256: its leaf hash and one
   interior node (a tree of n leaves has n - 1). Nothing less can recompute the log's root.
3. The CLI path: `exchange node run` (its start is timed: the start check from the co-signed
   checkpoint on), then `exchange audit verify --node nl.toml --no-witness --json`, a separate
   process timed end to end, Python's start-up included: a fresh checkpoint, then the export
   streamed over HTTPS and checked as it arrives. Printed next to the floor, with the ratio.
4. The event loop while the node builds its proof levels after start: the first inclusion proof's
   wait, and the latency of GET /api/v1/audit/checkpoint asked every 20 ms meanwhile.
5. A bulletin's entries at N entries: GET /api/v1/audit/log?bulletin=<id> and the bulletin export
   (its entries with inclusion proofs, what a trace asks each node for), through the index by
   bulletin; next to them, reading the whole log with a byte prefilter, as a trace did before.
6. In this process, on one core: the export path without HTTP (export lines -> BundleCheck
   a run at a time), and with --general the same lines through the general path, line by line.
7. Append: C concurrent tasks append single entries through Store.write (group commit), alone and
   with a LogKeeper following the table; entries/s and the average commit batch.

It prints figures and the load average with each, and asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import resource
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from exchange.audit.checkpoint import Checkpoint, cosign, log_origin, sign_checkpoint, witness_name
from exchange.audit.events import BULLETIN_OPENED, BulletinOpened
from exchange.audit.log import BundleCheck, KeyRing
from exchange.cli.client import Target, call
from exchange.cli.verify_ranges import default_workers
from exchange.clock import timestamp, utc_now
from exchange.config import NodeConfig
from exchange.crypto import SigningKey
from exchange.keystore import NodeKeyFiles, load_federation
from exchange.merkle import Frontier, leaf_hash
from exchange.provision import init_federation
from exchange.service.audit.entries import LogEntries
from exchange.service.audit.keeper import LogKeeper
from exchange.store import Store, audit_checkpoints, audit_cosignatures, audit_log

NODE, WITNESS = "nl-customs", "ke-customs"
CHANNEL = "c2a-air-cargo-security"
BATCH = 20_000
UNWITNESSED = 10_000  # entries after the co-signed checkpoint: what the start check reads
console = Console(width=150)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} / {five:.2f}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bulletin_of(idx: int) -> str:
    return hashlib.sha256((idx // 4).to_bytes(8, "big")).hexdigest()


def synthetic_entry(idx: int) -> bytes:
    """Canonical JSON (sorted keys, ASCII, no floats) shaped like the node's bulletin entries."""
    bid = bulletin_of(idx)
    day, hour, minute, second = 1 + idx // 86_400_000 % 28, idx // 3_600_000 % 24, idx // 60_000 % 60, idx // 1000 % 60
    at = f"2026-03-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{idx % 1000:03d}Z"
    kind = idx % 4
    if kind == 0:
        return (
            f'{{"at":"{at}","author":"{NODE}","bulletin":"{bid}","channel":"{CHANNEL}","event":'
            f'"bulletin.posted","idx":{idx},"recipients":["gb-avsec","ke-customs","{NODE}","wco-rilo"],'
            f'"seq":{idx // 4 + 1},"state":3,"tlp":"AMBER","user":"officer"}}'
        ).encode()
    if kind == 1:
        return (
            f'{{"at":"{at}","author":"ke-customs","bulletin":"{bid}","channel":"{CHANNEL}",'
            f'"event":"bulletin.received","from":"ke-customs","idx":{idx},"seq":{idx // 4 + 1}}}'
        ).encode()
    if kind == 2:
        return (
            f'{{"at":"{at}","bulletin":"{bid}","event":"bulletin.delivered","idx":{idx},'
            f'"receipt_at":"{at}","to":"gb-avsec"}}'
        ).encode()
    return (
        f'{{"at":"{at}","bulletin":"{bid}","channel":"{CHANNEL}","event":"bulletin.opened",'
        f'"idx":{idx},"user":"analyst-{idx % 97}"}}'
    ).encode()


# -- 1. build -------------------------------------------------------------------------------------


async def provision(folder: Path) -> dict[str, NodeConfig]:
    folder.mkdir(parents=True)
    (folder / "federation.toml").write_text(
        '[federation]\nname = "audit bench"\nkeys_dir = "../keys"\ndata_dir = "../var"\n\n'
        f'[[channel]]\nid = "{CHANNEL}"\nowner = "{NODE}"\ntitle = "bench"\nagencies = ["customs"]\n'
        f'tlp = "AMBER"\nmembers = {{ "{NODE}" = ["read", "post", "admin"], "{WITNESS}" = ["read", "post"] }}\n'
    )
    for i, node in enumerate((NODE, WITNESS)):
        (folder / f"{node}.toml").write_text(
            f'[node]\nid = "{node}"\nname = "Bench {node}"\ncountry = "X{"AB"[i]}"\nagency = "customs"\n'
            f"port = {free_port()}\n"
        )
    await init_federation(folder)
    return {n: NodeConfig.load(folder / f"{n}.toml", environ={}) for n in (NODE, WITNESS)}


def sqlite_path(cfg: NodeConfig) -> Path:
    return Path(str(sa.engine.make_url(cfg.database_url).database))


def signed_row(frontier: Frontier, key: SigningKey) -> tuple[dict[str, Any], str]:
    note = sign_checkpoint(Checkpoint(log_origin(NODE), frontier.size, frontier.root()), key)
    row = {
        "size": frontier.size,
        "root": frontier.root(),
        "note": note.render(),
        "frontier": b"".join(frontier.hashes),
        "at": timestamp(),
    }
    return row, note.text


def build(path: Path, entries: int, key: SigningKey, witness: SigningKey, minutes: int = 0) -> tuple[float, int]:
    """Append the synthetic entries and the two checkpoints (with `minutes`, one checkpoint more at
    the end of each of that many minutes, stored one minute apart up to now); return (seconds, log size)."""
    started = time.perf_counter()
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        existing = [bytes(r[0]) for r in conn.execute(sa.select(audit_log.c.leaf_hash).order_by(audit_log.c.idx))]
        frontier = Frontier.from_hashes(existing)
        first, size = len(existing), len(existing) + entries
        cut = size - min(UNWITNESSED, entries // 2)  # the co-signed checkpoint
        sizes = {n: m for n, m in minute_sizes(first, size, minutes).items() if n not in (cut, size)}
        now = utc_now()

        def extend(leaves: list[bytes]) -> None:
            """Extend the frontier, signing the per-minute checkpoints that end among the leaves."""
            if not sizes:
                frontier.extend(leaves)
                return
            signed = []
            for leaf in leaves:
                frontier.extend([leaf])
                minute = sizes.get(frontier.size)
                if minute is not None:
                    row, _ = signed_row(frontier, key)
                    signed.append({**row, "at": timestamp(now - dt.timedelta(minutes=minutes - minute))})
            if signed:
                conn.execute(sa.insert(audit_checkpoints), signed)

        for lo in range(first, size, BATCH):
            rows: list[dict[str, Any]] = []
            for idx in range(lo, min(size, lo + BATCH)):
                entry = synthetic_entry(idx)
                rows.append({"idx": idx, "entry": entry, "leaf_hash": leaf_hash(entry), "bulletin": bulletin_of(idx)})
            conn.execute(sa.insert(audit_log), rows)
            leaves: list[bytes] = [r["leaf_hash"] for r in rows]
            if lo < cut <= lo + len(rows):
                extend(leaves[: cut - lo])
                row, text = signed_row(frontier, key)
                conn.execute(sa.insert(audit_checkpoints).values(**row))
                line = cosign(text, witness_name(WITNESS), witness, int(time.time())).line()
                conn.execute(
                    sa.insert(audit_cosignatures).values(size=frontier.size, witness=WITNESS, line=line, at=timestamp())
                )
                leaves = leaves[cut - lo :]
            extend(leaves)
        latest, _ = signed_row(frontier, key)
        conn.execute(sa.insert(audit_checkpoints).values(**latest))
    engine.dispose()
    return time.perf_counter() - started, size


def minute_sizes(first: int, size: int, minutes: int) -> dict[int, int]:
    """Log size -> minute (0 = the oldest) of checkpoints signed one a minute over the entries."""
    step = (size - first) / max(1, minutes)
    return {first + max(1, round(step * (m + 1))): m for m in range(minutes)} if minutes else {}


# -- 2. the floor ---------------------------------------------------------------------------------


def floor(path: Path) -> dict[str, float]:
    """Read every row with sqlite3, a page at a time, and hash each entry's leaf and one interior node."""
    sha256 = hashlib.sha256
    read = hashed = 0.0
    rows = 0
    started, cpu = time.perf_counter(), time.process_time()
    conn = sqlite3.connect(path)
    try:
        cursor = conn.execute("SELECT idx, entry, leaf_hash FROM audit_log ORDER BY idx")
        while True:
            t0 = time.perf_counter()
            page = cursor.fetchmany(5000)
            t1 = time.perf_counter()
            if not page:
                break
            leaves = [sha256(b"\x00" + entry).digest() for _, entry, _ in page]
            [sha256(b"\x01" + leaf + leaf).digest() for leaf in leaves]
            read, hashed, rows = read + t1 - t0, hashed + time.perf_counter() - t1, rows + len(page)
    finally:
        conn.close()
    wall = time.perf_counter() - started
    return {"read": read, "hash": hashed, "floor": wall, "cpu": time.process_time() - cpu, "rows": rows}


# -- 3-5. the running node --------------------------------------------------------------------------


class NodeProcess:
    def __init__(self, config_path: Path, log: Path) -> None:
        self.config_path, self.log = config_path, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "exchange.cli", "node", "run", str(self.config_path)],
                cwd=self.log.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


async def until_ready(target: Target, proc: NodeProcess, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc is not None and proc.proc.poll() is not None:
            raise SystemExit(f"the node stopped; see {proc.log}:\n{proc.log.read_text()[-2000:]}")
        try:
            await call(target, "GET", "/api/v1/audit/checkpoint")
            return
        except Exception:
            await asyncio.sleep(0.02)
    raise SystemExit(f"the node did not answer within {timeout} s; see {proc.log}")


async def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    await fn()
    return time.perf_counter() - started


async def loop_while_building(target: Target) -> dict[str, float]:
    """The first inclusion proof's wait, and a cheap request's latency every 20 ms meanwhile."""
    latencies: list[float] = []
    proof = asyncio.create_task(timed(lambda: call(target, "GET", "/api/v1/audit/proof/inclusion?index=0")))
    while not proof.done():
        latencies.append(await timed(lambda: call(target, "GET", "/api/v1/audit/checkpoint")))
        await asyncio.sleep(0.02)
    idle: list[float] = []
    for _ in range(20):  # the same request once the levels are built, for comparison
        idle.append(await timed(lambda: call(target, "GET", "/api/v1/audit/checkpoint")))
        await asyncio.sleep(0.02)
    return {
        "proof": await proof,
        "max": max(latencies, default=0.0),
        "median": statistics.median(latencies) if latencies else 0.0,
        "samples": len(latencies),
        "idle_max": max(idle),
        "idle_median": statistics.median(idle),
    }


async def by_bulletin(target: Target, bid: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, path in (
        ("log page, ?bulletin=", f"/api/v1/audit/log?bulletin={bid}"),
        ("bulletin export (entries + proofs)", f"/api/v1/audit/export?bulletin={bid}"),
    ):
        if name.startswith("log"):
            page = await call(target, "GET", path)
            assert len(page["entries"]) == 4, page
        times = [await timed(lambda p=path: call_raw(target, p)) for _ in range(5)]  # type: ignore[misc]
        out[name] = statistics.median(times)
    return out


async def call_raw(target: Target, path: str) -> None:
    from exchange.cli.bundles import stream_lines  # the CLI's streaming reader

    async for _ in stream_lines(target, path):
        pass


def process_cpu(pid: int) -> float:
    """User + system CPU seconds a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_cli(node_file: Path, node_pid: int) -> dict[str, Any]:
    """`exchange audit verify` as an auditor runs it, timed; with its CPU and the node's meanwhile."""
    node0, children0, started = process_cpu(node_pid), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "exchange.cli", "audit", "verify", "--node", str(node_file), "--no-witness", "--json"],
        capture_output=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"audit verify failed: {done.stdout.decode()} {done.stderr.decode()[-2000:]}")
    return {
        "wall": elapsed,
        "cli_cpu": children.ru_utime + children.ru_stime - children0.ru_utime - children0.ru_stime,
        "node_cpu": process_cpu(node_pid) - node0,
        "report": json.loads(done.stdout),
    }


def run_bundle_cli(node_file: Path, bundle: Path, workers: int | None) -> dict[str, Any]:
    """`exchange audit verify --bundle` of an export file, timed, with its workers' CPU."""
    extra = [] if workers is None else ["--workers", str(workers)]
    command = ["audit", "verify", "--bundle", str(bundle), "--node", str(node_file), "--json", *extra]
    children0, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "exchange.cli", *command], capture_output=True, check=False)
    elapsed, children = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"audit verify --bundle failed: {done.stdout.decode()} {done.stderr.decode()[-2000:]}")
    cpu = children.ru_utime + children.ru_stime - children0.ru_utime - children0.ru_stime
    return {"wall": elapsed, "cli_cpu": cpu, "report": json.loads(done.stdout)}


# -- 5-6. in this process -------------------------------------------------------------------------


async def in_process(url: str, keys: KeyRing, key: SigningKey, bid: str, general: bool) -> dict[str, float]:
    store = await Store.open(url)
    out: dict[str, float] = {}
    try:
        reader = LogEntries(LogKeeper(NODE, store, key))
        started = time.perf_counter()
        check = BundleCheck(keys=keys)
        chunks: list[bytes] = []
        async for chunk in reader.export_lines():
            check.feed_lines(chunk.split(b"\n")[:-1])
            if general:
                chunks.append(chunk)
        report = check.finish()
        out["export path in this process (export lines -> BundleCheck, runs)"] = time.perf_counter() - started
        if general:
            started = time.perf_counter()
            check = BundleCheck(keys=keys)
            for chunk in chunks:
                for line in chunk.split(b"\n")[:-1]:
                    check.feed_line(line)
            assert check.finish().entries == report.entries
            out["the same lines through the general path, line by line"] = time.perf_counter() - started
        for name, witnesses in (
            ("keeper: start check from the co-signed checkpoint", keys.witnesses(NODE)),
            ("keeper: start check with no witness known (every leaf hash)", {}),
        ):
            keeper = LogKeeper(NODE, store, key, witnesses=witnesses)
            started = time.perf_counter()
            await keeper.start()
            out[name] = time.perf_counter() - started
            if witnesses:
                started = time.perf_counter()
                await keeper.inclusion(0, keeper.size)
                out["keeper: then its proof levels, every leaf hash (a worker thread)"] = time.perf_counter() - started
            await keeper.close()
        started = time.perf_counter()
        found, _ = await reader.scan(lambda body: body.get("bulletin") == bid, bid.encode(), scan=10**9, limit=10**6)
        out["a bulletin's entries by reading the log (a trace before)"] = time.perf_counter() - started
        assert len(found) == 4
    finally:
        await store.close()
    return out


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
            opened: BulletinOpened = {
                "event": BULLETIN_OPENED,
                "at": timestamp(),
                "bulletin": "ab" * 32,
                "channel": CHANNEL,
                "user": f"u{n}-{i}",
            }
            await store.audit(opened)

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


async def with_node(root: Path, cfg: NodeConfig, size: int, repeat: int) -> dict[str, Any]:
    node_file = root / "fed" / f"{NODE}.toml"
    target = Target.from_node(node_file, "auditor")
    proc = NodeProcess(node_file, root / "node.log")
    out: dict[str, Any] = {"runs": []}
    started = time.perf_counter()
    proc.start()
    try:
        await until_ready(target, proc)
        out["start"] = (time.perf_counter() - started, load())
        out["building"] = (await loop_while_building(target), load())
        assert proc.proc is not None
        for _ in range(repeat):  # the floor right before each run, at the load that run sees
            at = load()
            best = floor(sqlite_path(cfg))
            run = await asyncio.to_thread(run_cli, node_file, proc.proc.pid)
            out["runs"].append((best, run, at, load()))
        bundle = root / "export.jsonl"
        exported = subprocess.run(
            [sys.executable, "-m", "exchange.cli", "audit", "export", "--node", str(node_file), "-o", str(bundle)],
            capture_output=True,
            check=False,
        )
        if exported.returncode != 0:
            raise SystemExit(f"audit export failed: {exported.stderr.decode()[-2000:]}")
        out["bundle_runs"] = []
        for _ in range(repeat):
            for workers in (None, 1):
                at = load()
                best = floor(sqlite_path(cfg))
                run = await asyncio.to_thread(run_bundle_cli, node_file, bundle, workers)
                out["bundle_runs"].append((workers, best, run, at, load()))
        out["bulletin"] = (await by_bulletin(target, bulletin_of(size // 2)), load())
    finally:
        proc.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="synthetic entries in the log")
    parser.add_argument("--append", type=int, default=20_000, help="entries to append in the load test")
    parser.add_argument("--concurrency", type=int, default=200, help="concurrent appending tasks")
    parser.add_argument("--general", action="store_true", help="also time the general path, line by line")
    parser.add_argument("--skip-append", action="store_true", help="skip the append test")
    parser.add_argument("--repeat", type=int, default=3, help="runs of `audit verify`, each after a floor")
    parser.add_argument(
        "--minutes", type=int, default=0, help="also a checkpoint at the end of each of M minutes (43200: 30 days)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        configs = asyncio.run(provision(root / "fed"))
        cfg = configs[NODE]
        keys = NodeKeyFiles(cfg.keys_dir).load().signing
        witness = NodeKeyFiles(configs[WITNESS].keys_dir).load().signing
        path = sqlite_path(cfg)
        console.print(f"building a log of {args.entries:,} synthetic entries in {path} ...")
        built, size = build(path, args.entries, keys, witness, args.minutes)
        with sqlite3.connect(path) as built_db:
            signed = built_db.execute("SELECT count(*) FROM audit_checkpoints").fetchone()[0]
        mb = path.stat().st_size / 1e6
        console.print(f"built in {built:.1f} s: {size:,} entries, {signed:,} checkpoints, {mb:.0f} MB")

        node = asyncio.run(with_node(root, cfg, size, args.repeat))
        ring = KeyRing.from_federation(load_federation(cfg))
        local = asyncio.run(in_process(cfg.database_url, ring, keys, bulletin_of(size // 2), args.general))

        table = Table(
            "run",
            "floor s (CPU s)",
            "verify s",
            "[bold]verify / floor[/bold]",
            "CPU s: verify / node",
            "CPU / floor CPU: verify / node",
            "[bold]slower side's CPU / floor CPU[/bold]",
            "load before / after",
            title=f"exchange audit verify of {size:,} entries against the floor measured just before it",
        )
        for n, (best, run, before, after) in enumerate(node["runs"], 1):
            assert run["report"]["ok"] and run["report"]["entries"] >= size, run["report"]
            table.add_row(
                str(n),
                f"{best['floor']:.2f} ({best['cpu']:.2f})",
                f"{run['wall']:.2f}",
                f"[bold]{run['wall'] / best['floor']:.2f}[/bold]",
                f"{run['cli_cpu']:.2f} / {run['node_cpu']:.2f}",
                f"{run['cli_cpu'] / best['cpu']:.2f} / {run['node_cpu'] / best['cpu']:.2f}",
                f"[bold]{max(run['cli_cpu'], run['node_cpu']) / best['cpu']:.2f}[/bold]",
                f"{before} | {after}",
            )
        console.print(table)
        table = Table(
            "run",
            "workers",
            "floor s (CPU s)",
            "verify --bundle s",
            "[bold]verify / floor[/bold]",
            "CPU s (workers included)",
            "CPU / floor CPU",
            "load before / after",
            title=f"exchange audit verify --bundle of the same log exported to a file ({size:,} entries)",
        )
        for n, (workers, best, run, before, after) in enumerate(node["bundle_runs"], 1):
            assert run["report"]["ok"] and run["report"]["entries"] >= size, run["report"]
            table.add_row(
                str((n + 1) // 2),
                f"default ({default_workers()})" if workers is None else str(workers),
                f"{best['floor']:.2f} ({best['cpu']:.2f})",
                f"{run['wall']:.2f}",
                f"[bold]{run['wall'] / best['floor']:.2f}[/bold]",
                f"{run['cli_cpu']:.2f}",
                f"{run['cli_cpu'] / best['cpu']:.2f}",
                f"{before} | {after}",
            )
        console.print(table)
        best, _, _, _ = min(node["runs"], key=lambda r: r[0]["floor"])
        console.print(
            f"floor: every row read with sqlite3 ({best['read']:.2f} s), then 2 SHA-256 per entry "
            f"({best['hash']:.2f} s); verify: a separate process, Python's start-up, a fresh checkpoint "
            "and the export over HTTPS included. The two processes run side by side: with two cores free "
            "of other jobs, verify takes about the slower side's CPU (the last column but one is that ratio)"
        )
        table = Table("in this process, one core", "seconds", "x floor", "load 1/5 min")
        for name, seconds in local.items():
            if name.startswith(("export", "the same lines")):
                table.add_row(name, f"{seconds:.2f}", f"{seconds / best['floor']:.2f}", load())
        console.print(table)

        start_s, start_load = node["start"]
        building, building_load = node["building"]
        table = Table("what", "seconds", "load 1/5 min", title="the node at start")
        table.add_row(
            f"start, until it answers (start check: the last {UNWITNESSED:,} entries)", f"{start_s:.2f}", start_load
        )
        table.add_row(
            "first inclusion proof after that (proof levels built off the loop)",
            f"{building['proof']:.3f}",
            building_load,
        )
        table.add_row(
            f"GET checkpoint meanwhile, every 20 ms: median / max ({building['samples']} requests)",
            f"{building['median']:.3f} / {building['max']:.3f}",
            building_load,
        )
        table.add_row(
            "the same once they are built: median / max (20 requests)",
            f"{building['idle_median']:.3f} / {building['idle_max']:.3f}",
            building_load,
        )
        for name, seconds in local.items():
            if name.startswith("keeper"):
                table.add_row(f"{name} (in this process)", f"{seconds:.2f}", load())
        console.print(table)

        lookups, lookups_load = node["bulletin"]
        table = Table("a bulletin's entries", "seconds", "load 1/5 min", title=f"at {size:,} entries")
        for name, seconds in lookups.items():
            table.add_row(f"{name} (HTTPS, median of 5)", f"{seconds:.4f}", lookups_load)
        for name, seconds in local.items():
            if name.startswith("a bulletin"):
                table.add_row(name, f"{seconds:.2f}", load())
        console.print(table)

        if not args.skip_append:
            table = Table("writers", "keeper following", "entries/s", "entries per commit", "load", title="append")
            for follow in (False, True):
                db = f"sqlite+aiosqlite:///{root / f'append-{follow}.db'}"
                rate, per_commit = asyncio.run(append_rate(db, args.append, args.concurrency, follow, keys))
                table.add_row(
                    str(args.concurrency), "yes" if follow else "no", f"{rate:,.0f}", f"{per_commit:.1f}", load()
                )
            console.print(table)
    console.print(f"load average {load()} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
