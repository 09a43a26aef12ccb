"""End-to-end throughput of real federations at 2 and 10 readers, next to the crypto ceiling measured in the same run.

Run: .venv/bin/python bench/throughput.py [--readers 2,10] [--count N] [--layout both|loop|processes]
                                          [--batch-size B] [--via service|http] [--profile DIR]

For each number of readers K it provisions a federation of K nodes in a temporary folder (one
channel whose K members all read; the author A and B may post), starts every node on loopback
with real mutual TLS and SQLite files, posts N bulletins at A through NodeService.post (or A's
client API with --via http), and times until every reader stores all N and until A holds every
reader's signed receipt. Two layouts:

  loop       every node in this process, on one event loop: the federation's work on one core.
  processes  A in this process, every reader its own `exchange node run` process: the nodes
             share the machine's cores as deployed nodes would.

The ceiling is measured in the same run from the crypto primitives alone (the formula is printed).
It also prints the CPU each process spent per bulletin (from /proc), the machine's load average
and the CPU other processes took during each run, the SQL statements, aiosqlite thread hops and
group commits per bulletin at each side, the steps of A's push cycle, and with --profile a py-spy
profile of A and B by area (SQL, canonical JSON, pydantic, crypto, asyncio…). bench/README.md
has the figures and what they say. It prints figures and never asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling helper, when run from elsewhere

from cpu_profile import AREAS, Profile, Sampler, cpu_seconds, machine_busy_seconds, py_spy, workers_cpu_seconds

from exchange.app import RunningNode, keep_what_started, start_node
from exchange.clock import timestamp
from exchange.config import NodeConfig
from exchange.crypto import DecryptionKey, NodeKeys, SealedContent, open_content, strict_loads
from exchange.keystore import NodeKeyFiles, load_federation, read_file, read_provisioned_channels
from exchange.model import Bulletin, NodeId
from exchange.node.tls import client_context
from exchange.protocol.channel import ChannelState, apply_event
from exchange.protocol.envelope import build_envelope, wrap_info
from exchange.protocol.roster import Federation
from exchange.protocol.signing import signing_input
from exchange.provision import init_federation
from exchange.service.node import NodeService
from exchange.service.users import authenticate
from exchange.store import Store

CHANNEL = "bench"
NODE_A, NODE_B = "a-customs", "b-customs"
BODY = ("Shipper XYZ Trading routes lithium batteries via AMS, mis-declared under HS 9503 as toys. " * 12)[:1024]
ALL_HERE = "all nodes (this process)"
HIGH = 1_000_000  # request rates and bursts: the bench measures the node, not its rate limits
console = Console()
if not console.is_terminal:
    console = Console(width=180)  # piped output: do not squeeze the tables into 80 columns


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


SEND_FAILURES: list[str] = []  # "send failed; will retry" from the outbox loggers of the nodes in this process


class _CountFailures(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        SEND_FAILURES.append(f"{getattr(record, 'peer', '?')}: {str(getattr(record, 'error', ''))[:160]}")


def loop_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process's main thread (its event loop) so far, from /proc."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> tuple[float, float, float]:
    return os.getloadavg()


def fmt_load(x: tuple[float, float, float]) -> str:
    return f"{x[0]:.2f} {x[1]:.2f} {x[2]:.2f}"


# -- provisioning ---------------------------------------------------------------------------------


def node_ids(readers: int) -> list[str]:
    return [NODE_A, NODE_B] + [f"r{i:03d}-customs" for i in range(3, readers + 1)]


async def provision(
    folder: Path, readers: int, batch_size: int | None, crypto_workers: int | None = None
) -> dict[str, NodeConfig]:
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
    limits = "".join(
        f"{k} = {HIGH}\n"
        for k in (
            "rate_per_token",
            "burst_per_token",
            "rate_per_peer",
            "burst_per_peer",
            "rate_per_address",
            "burst_per_address",
        )
    )
    for i, node_id in enumerate(ids):
        (folder / f"{node_id}.toml").write_text(
            f'[node]\nid = "{node_id}"\nname = "Bench {node_id}"\ncountry = "X{chr(65 + i % 26)}"\n'
            f'agency = "customs"\nport = {free_port()}\n'
            + ("" if batch_size is None else f"batch_size = {batch_size}\n")
            + ("" if crypto_workers is None else f"crypto_workers = {crypto_workers}\n")
            + "retry_base_seconds = 0.05\nretry_max_seconds = 1.0\nrequest_timeout_seconds = 30\n"
            + limits
        )
    await init_federation(folder)
    return {n: NodeConfig.load(folder / f"{n}.toml", environ={}) for n in ids}


def sqlite_path(cfg: NodeConfig) -> str:
    url = sa.engine.make_url(cfg.database_url)
    if not url.drivername.startswith("sqlite") or not url.database:
        raise SystemExit(f"the bench runs on SQLite files; {cfg.id} has {url.drivername}")
    return url.database


class Progress:
    """Counts read straight from the nodes' SQLite files (read-only, WAL), never through a node."""

    def __init__(self, configs: dict[str, NodeConfig]) -> None:
        self._conns = {
            n: sqlite3.connect(f"file:{sqlite_path(cfg)}?mode=ro", uri=True, check_same_thread=False)
            for n, cfg in configs.items()
        }
        self.readers = [n for n in configs if n != NODE_A]

    def stored(self, node: str) -> int:
        """Bulletins by A held at `node`."""
        row = self._conns[node].execute("SELECT count(*) FROM bulletins WHERE author = ?", (NODE_A,)).fetchone()
        return int(row[0])

    def holds(self, node: str, total: int) -> bool:
        """Whether `node` holds A's first `total` bulletins: an index seek for the top of A's stream, then a count."""
        top = (
            self._conns[node]
            .execute("SELECT max(seq) FROM bulletins WHERE author = ? AND channel = ?", (NODE_A, CHANNEL))
            .fetchone()[0]
        )
        return top is not None and top >= total and self.stored(node) >= total

    def receipts(self) -> dict[str, int]:
        """'received' receipts A holds, per reader."""
        rows = (
            self._conns[NODE_A]
            .execute("SELECT node, count(*) FROM receipts WHERE status = 'received' GROUP BY node")
            .fetchall()
        )
        return {str(n): int(c) for n, c in rows}

    def receipt_signatures(self) -> tuple[int, int]:
        """'received' receipts A holds from the readers, and how many distinct signatures they carry
        (a v2 receipt carries its batch statement's signature, shared by the whole batch; one taken in
        the batch form is a leaf of its batch's row, which holds the signature)."""
        row = (
            self._conns[NODE_A]
            .execute(
                "SELECT count(*), count(DISTINCT CASE WHEN batch IS NULL THEN json_extract(receipt, '$.signature') "
                "ELSE (SELECT signature FROM receipt_batches WHERE id = batch) END) FROM receipts "
                "WHERE status = 'received' AND node != ?",
                (NODE_A,),
            )
            .fetchone()
        )
        return int(row[0]), int(row[1])

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()


# -- SQL statements and aiosqlite hops (loop layout: the engines are in this process) ------------


@dataclass
class SqlCounts:
    statements: int = 0
    reads: int = 0
    single_writes: int = 0
    executemany: int = 0
    executemany_rows: int = 0
    commits: int = 0
    hops: int = 0  # calls handed to aiosqlite's worker thread (execute, fetch, close, commit…)
    writes: int = 0  # group commits of the node's writer (Store._commit)
    jobs: int = 0  # Store.write jobs in them
    write_seconds: float = 0.0  # wall time the writer spent in them, from BEGIN to COMMIT done


class SqlCounter:
    """What each node's engine sends to the database, from SQLAlchemy's events."""

    def __init__(self) -> None:
        self.by_node: dict[str, SqlCounts] = {}
        self._conn_node: dict[int, str] = {}
        self._store_node: dict[int, str] = {}
        self._unpatch: list[Callable[[], None]] = []

    def attach(self, node: str, store: Store) -> None:
        self.by_node[node] = SqlCounts()
        self._store_node[id(store)] = node
        sync = store.engine.sync_engine

        def before(_conn: Any, _cursor: Any, statement: str, params: Any, _ctx: Any, many: bool) -> None:
            c = self.by_node[node]
            c.statements += 1
            verb = statement.lstrip()[:6].upper()
            if verb in ("SELECT", "WITH"):
                c.reads += 1
            elif many:
                c.executemany += 1
                c.executemany_rows += len(params)
            else:
                c.single_writes += 1

        def commit(_conn: Any) -> None:
            self.by_node[node].commits += 1

        def checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
            raw = getattr(dbapi_conn, "_connection", dbapi_conn)
            # A node's SQLite engine wraps aiosqlite's connection (exchange.store.loop_sqlite).
            self._conn_node[id(getattr(raw, "threaded", raw))] = node

        sa.event.listen(sync, "before_cursor_execute", before)
        sa.event.listen(sync, "commit", commit)
        sa.event.listen(sync, "checkout", checkout)

    def patch(self) -> None:
        """Count aiosqlite's hand-offs to its worker thread and time each group commit: bench-only wrappers
        around two private methods, removed by close(); skipped if either is gone."""
        try:
            from aiosqlite.core import Connection
        except ImportError:
            execute = None
        else:
            execute = getattr(Connection, "_execute", None)
        if execute is not None:

            async def counted(conn: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
                node = self._conn_node.get(id(conn))
                if node is not None:
                    self.by_node[node].hops += 1
                return await execute(conn, fn, *args, **kwargs)

            # A bench-only wrapper, undone by close(): not the method's type (its first argument is `conn`).
            Connection._execute = counted  # type: ignore[method-assign,assignment]
            self._unpatch.append(lambda: setattr(Connection, "_execute", execute))
        commit_once = getattr(Store, "_commit", None)
        if commit_once is not None:

            async def timed_commit(store: Store, batch: list[Any]) -> Any:
                t0 = time.perf_counter()
                try:
                    return await commit_once(store, batch)
                finally:
                    node = self._store_node.get(id(store))
                    if node is not None:
                        c = self.by_node[node]
                        c.writes += 1
                        c.jobs += len(batch)
                        c.write_seconds += time.perf_counter() - t0

            # As above: its first argument is `store`.
            Store._commit = timed_commit  # type: ignore[method-assign,assignment]
            self._unpatch.append(lambda: setattr(Store, "_commit", commit_once))

    def reset(self) -> None:
        for node in self.by_node:
            self.by_node[node] = SqlCounts()

    def close(self) -> None:
        while self._unpatch:
            self._unpatch.pop()()


class PushTimer:
    """Where the time of A's pushes goes: each step of a sender's cycle, timed on A's own objects
    (bench-only wrappers around its outbox and transport methods, removed by close())."""

    STEPS = ("pending", "mark_sent", "send", "accept_receipts", "screen", "ingest_screened")

    def __init__(self) -> None:
        self.calls: dict[str, int] = dict.fromkeys(self.STEPS, 0)
        self.seconds: dict[str, float] = dict.fromkeys(self.STEPS, 0.0)
        self.items = 0  # envelopes and receipts pushed
        self.cycles = 0  # intervals between two sends to the same reader
        self.cycle_seconds = 0.0
        self._last_send: dict[str, float] = {}
        self._unpatch: list[Callable[[], None]] = []

    def attach(self, service: NodeService) -> None:
        for owner, step in (
            (service.outbox, "pending"),
            (service.outbox, "mark_sent"),
            (service.outbox.transport, "send"),
            (service.outbox, "accept_receipts"),
        ):
            self._wrap(owner, step)

    def attach_reader(self, service: NodeService) -> None:
        """B's half of a push, when B runs in this process: screening the batch (the crypto
        workers' part), then the rules that need state and the write (`ingest_screened`)."""
        self._wrap(service.receiving, "screen")
        self._wrap(service.receiving, "ingest_screened")

    def _wrap(self, owner: object, step: str) -> None:
        cls = type(owner)
        original = getattr(cls, step, None)
        if original is None:
            return

        async def timed(this: Any, *args: Any, **kwargs: Any) -> Any:
            if this is not owner:
                return await original(this, *args, **kwargs)
            t0 = time.perf_counter()
            if step == "send" and args:
                last = self._last_send.get(str(args[0]))
                if last is not None:
                    self.cycles += 1
                    self.cycle_seconds += t0 - last
                self._last_send[str(args[0])] = t0
            try:
                return await original(this, *args, **kwargs)
            finally:
                self.calls[step] += 1
                self.seconds[step] += time.perf_counter() - t0
                if step == "mark_sent" and len(args) >= 2:
                    self.items += len(args[1])

        setattr(cls, step, timed)
        self._unpatch.append(lambda: setattr(cls, step, original))

    def reset(self) -> None:
        self.calls = dict.fromkeys(self.STEPS, 0)
        self.seconds = dict.fromkeys(self.STEPS, 0.0)
        self.items = 0
        self.cycles, self.cycle_seconds = 0, 0.0
        self._last_send.clear()

    def close(self) -> None:
        while self._unpatch:
            self._unpatch.pop()()


# -- posting --------------------------------------------------------------------------------------


async def post_service(service: NodeService, token: str, numbers: range, concurrency: int) -> int:
    user = await authenticate(service.store, token)  # the provisioned contact point, with its channels
    todo: Iterator[int] = iter(numbers)
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


async def post_http(cfg: NodeConfig, token: str, numbers: range, concurrency: int) -> int:
    ctx = client_context(read_file(cfg.keys_dir / "tls.crt").decode())
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{cfg.endpoint}/api/v1/channels/{CHANNEL}/bulletins"
    todo: Iterator[int] = iter(numbers)
    failed = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=concurrency)) as session:

        async def worker() -> None:
            nonlocal failed
            for i in todo:
                async with session.post(url, json=bulletin(i), headers=headers) as resp:
                    if resp.status != 201:
                        failed += 1
                        console.print(f"[red]post {i}: HTTP {resp.status}: {(await resp.text())[:300]}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failed


# -- node processes -------------------------------------------------------------------------------


class NodeProcess:
    """One `exchange node run` process."""

    def __init__(self, cfg: NodeConfig, config_path: Path, log: Path) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "exchange.cli", "node", "run", str(self.config_path)],
                cwd=self.log.parent,  # not the repository: `-m` puts the cwd first on sys.path (PYTHONPATH wins)
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    async def ready(self, timeout: float = 60) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            try:
                _, writer = await asyncio.open_connection(self.cfg.host, self.cfg.port, ssl=ctx)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise SystemExit(f"{self.cfg.id} did not start; see {self.log}:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


# -- one end-to-end run -----------------------------------------------------------------------


@dataclass
class Run:
    layout: str
    via: str
    readers: int
    count: int
    batch_size: int | None
    post_s: float = float("nan")  # all N posts returned at A
    stored_s: float = float("nan")  # every reader stores all N
    receipts_s: float = float("nan")  # A holds every reader's receipt for all N
    failed_posts: int = 0
    send_failures: int = 0  # failed pushes by the nodes in this process, in the window (retried)
    send_errors: list[str] = field(default_factory=list)
    timed_out: bool = False
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    elapsed: float = float("nan")  # the measured window, seconds
    machine_cpu: float = 0.0  # CPU seconds all cores were busy during the window
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process during the window
    loop_cpu: dict[str, float] = field(default_factory=dict)  # of it, the main thread's (the event loop)
    worker_cpu: dict[str, float] = field(default_factory=dict)  # of it, the crypto worker processes'
    sql: dict[str, SqlCounts] = field(default_factory=dict)
    push_calls: dict[str, int] = field(default_factory=dict)  # A's push cycle, step by step
    push_seconds: dict[str, float] = field(default_factory=dict)
    push_items: int = 0
    push_cycles: int = 0
    push_cycle_seconds: float = 0.0
    receipts: int = 0  # 'received' receipts A stored from the readers in the window
    receipt_signatures: int = 0  # distinct signatures among them
    profiles: dict[str, Profile] = field(default_factory=dict)

    @property
    def per_signature(self) -> float:
        """B achieved: bulletins per receipt signature the readers made in the window (1 if none were seen)."""
        return self.receipts / self.receipt_signatures if self.receipt_signatures else 1.0

    @property
    def label(self) -> str:
        return self.layout + (" via http" if self.via == "http" else "")

    @property
    def node_cpu(self) -> float:
        """CPU seconds of the nodes, with the posting code and polling that share A's process."""
        return sum(v for k, v in self.cpu.items() if k != "py-spy")

    @property
    def others_cores(self) -> float:
        """Cores' worth of CPU that processes other than this bench's took during the window."""
        ours = sum(self.cpu.values())
        return max(0.0, self.machine_cpu - ours) / self.elapsed if self.elapsed == self.elapsed else float("nan")


async def end_to_end(root: Path, args: argparse.Namespace, layout: str, readers: int) -> Run:
    via = args.via
    folder = root / f"{layout}-{readers}"
    configs = await provision(folder / "nodes", readers, args.batch_size, args.crypto_workers)
    run = Run(layout, via, readers, args.count, args.batch_size)
    token = (configs[NODE_A].keys_dir / "tokens" / "officer").read_text().strip()
    running: list[RunningNode] = []
    procs: dict[str, NodeProcess] = {}
    counter = SqlCounter()
    pushes = PushTimer()
    progress: Progress | None = None
    samplers: dict[str, Sampler] = {}
    try:
        # A always runs here, so that posting goes through NodeService.post in both layouts.
        in_here = list(configs) if layout == "loop" else [NODE_A]
        for node_id in configs:
            if node_id not in in_here:
                procs[node_id] = NodeProcess(
                    configs[node_id], folder / "nodes" / f"{node_id}.toml", folder / f"{node_id}.log"
                )
                procs[node_id].start()
        for node_id in in_here:
            running.append(await start_node(configs[node_id]))
            counter.attach(node_id, running[-1].service.store)
        counter.patch()
        pushes.attach(running[0].service)
        if len(running) > 1:
            pushes.attach_reader(running[1].service)
        for p in procs.values():
            await p.ready()
        # As `exchange node run` does once its nodes started, for the nodes in this process: what is
        # alive now is left out of the cyclic collector's full passes (B's processes do it already).
        keep_what_started()
        progress = Progress(configs)
        service = running[0].service

        async def post(numbers: range) -> int:
            if via == "service":
                return await post_service(service, token, numbers, args.concurrency)
            return await post_http(configs[NODE_A], token, numbers, args.concurrency)

        async def delivered(total: int, deadline: float, on_stored: Callable[[], None] | None = None) -> bool:
            """Wait until every reader stores `total` and A holds `total` receipts from each."""
            assert progress is not None
            pending = set(progress.readers)
            while time.monotonic() < deadline:
                pending = {n for n in pending if not progress.holds(n, total)}
                if not pending and on_stored is not None:
                    on_stored()
                    on_stored = None
                if not pending:
                    got = progress.receipts()
                    if all(got.get(n, 0) >= total for n in progress.readers):
                        return True
                await asyncio.sleep(0.05)
            return False

        # Warm-up: sequence numbers loaded, senders started, TLS sessions open between the nodes.
        warm = args.warmup
        if warm:
            await post(range(-warm, 0))
            if not await delivered(warm, time.monotonic() + args.timeout):
                raise SystemExit(f"{layout}, {readers} readers: the warm-up did not arrive; logs in {folder}")

        here = ALL_HERE if layout == "loop" else NODE_A
        pids: dict[str, int] = {here: os.getpid()} | {node_id: p.pid for node_id, p in procs.items()}
        if args.profile:
            profiled = {here: os.getpid()} | ({NODE_B: procs[NODE_B].pid} if NODE_B in procs else {})
            for name, pid in profiled.items():
                out = Path(args.profile) / f"{layout}-{readers}r-{name.split()[0]}.txt"
                samplers[name] = Sampler(pid, out, args.profile_rate)
                samplers[name].start()
            await asyncio.sleep(0.5)  # py-spy attaches
        run.load_before = load()
        cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
        loop0 = {k: loop_cpu_seconds(pid) for k, pid in pids.items()}
        workers0 = {k: workers_cpu_seconds(pid) for k, pid in pids.items()}
        spy0 = {k: cpu_seconds(s.own_pid) for k, s in samplers.items() if s.own_pid}
        busy0 = machine_busy_seconds()
        counter.reset()
        pushes.reset()
        SEND_FAILURES.clear()
        receipts0 = progress.receipt_signatures()

        t0 = time.monotonic()

        def stored() -> None:
            run.stored_s = time.monotonic() - t0

        async def post_all() -> int:
            failed = await post(range(args.count))
            run.post_s = time.monotonic() - t0
            return failed

        poster = asyncio.create_task(post_all())
        ok = await delivered(warm + args.count, t0 + args.timeout, stored)
        run.elapsed = time.monotonic() - t0
        if ok:
            run.receipts_s = run.elapsed
        else:
            run.timed_out = True
        busy1 = machine_busy_seconds()
        run.cpu = {k: cpu_seconds(pid) - cpu0[k] for k, pid in pids.items()}
        run.loop_cpu = {k: loop_cpu_seconds(pid) - loop0[k] for k, pid in pids.items()}
        run.worker_cpu = {k: workers_cpu_seconds(pid) - workers0[k] for k, pid in pids.items()}
        run.cpu["py-spy"] = sum(
            cpu_seconds(s.own_pid) - spy0[k] for k, s in samplers.items() if s.own_pid and k in spy0
        )
        run.machine_cpu = busy1 - busy0
        run.load_after = load()
        run.send_failures = len(SEND_FAILURES)
        run.send_errors = sorted(set(SEND_FAILURES))[:5]
        run.sql = {k: SqlCounts(**vars(v)) for k, v in counter.by_node.items()}
        run.push_calls, run.push_seconds, run.push_items = dict(pushes.calls), dict(pushes.seconds), pushes.items
        run.push_cycles, run.push_cycle_seconds = pushes.cycles, pushes.cycle_seconds
        receipts1 = progress.receipt_signatures()
        run.receipts, run.receipt_signatures = receipts1[0] - receipts0[0], receipts1[1] - receipts0[1]
        run.profiles = {k: s.stop() for k, s in samplers.items()}
        if not poster.done():
            poster.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            run.failed_posts = await poster
        if run.timed_out:
            got = progress.receipts()
            console.print(
                f"[red]{layout}, {readers} readers: timed out after {args.timeout}s: stored "
                + ", ".join(f"{n} {progress.stored(n)}" for n in progress.readers)
                + f"; receipts at A {got}"
            )
    finally:
        for sampler in samplers.values():
            sampler.stop()  # a no-op once stopped
        counter.close()
        pushes.close()
        if progress is not None:
            progress.close()
        for node in reversed(running):
            await node.stop()
        for p in procs.values():
            p.stop()
    return run


# -- the crypto ceiling ---------------------------------------------------------------------------


@dataclass
class Material:
    fed: Federation
    state: ChannelState
    keys_a: NodeKeys
    keys_b: NodeKeys


def material(configs: dict[str, NodeConfig]) -> Material:
    """Keys, roster and channel state as the nodes load them from the provisioned folder."""
    cfg = configs[NODE_A]
    fed = load_federation(cfg)
    state: ChannelState | None = None
    for events in read_provisioned_channels(cfg.channels_dir):
        for event in events:
            state = apply_event(state, event, fed)
    assert state is not None
    return Material(fed, state, NodeKeyFiles(cfg.keys_dir).load(), NodeKeyFiles(configs[NODE_B].keys_dir).load())


@dataclass
class Primitives:
    """Microseconds per operation, one thread, with the bytes a real bulletin of K readers has."""

    readers: int
    sign_envelope: float
    verify_envelope: float
    sign_receipt: float
    verify_receipt: float
    hpke_seal: float
    aes_seal: float
    open_content: float  # HPKE open + AES-GCM open (+ the key-commitment hash)
    envelope_input: int  # bytes
    receipt_input: int
    payload: int

    def sender(self, k: int, per_signature: float) -> float:
        """S(K): the author's crypto per bulletin."""
        return self.sign_envelope + k * self.hpke_seal + self.aes_seal + (k - 1) * self.verify_receipt / per_signature

    def reader(self, per_signature: float) -> float:
        """R: one reader's crypto per bulletin."""
        return self.verify_envelope + self.open_content + self.sign_receipt / per_signature

    def total(self, k: int, per_signature: float) -> float:
        """C(K) = S(K) + (K-1)·R."""
        return self.sender(k, per_signature) + (k - 1) * self.reader(per_signature)


def timed(fn: Callable[[], object], n: int, rounds: int) -> float:
    """Median over `rounds` of the mean µs per call over `n` calls."""
    per_round = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        per_round.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(per_round)


def measure_primitives(m: Material, k: int, n: int, rounds: int) -> Primitives:
    """Time each primitive on the exact inputs of one bulletin with K readers."""
    item = Bulletin.model_validate(bulletin(0))
    a, b = NodeId(NODE_A), NodeId(NODE_B)
    # The header lists K recipients and the signature covers K wraps: the extra readers of a
    # K-reader channel get fresh keys here, with the names the runs give them (only sizes matter).
    readers = [(NodeId(n), m.fed.encryption_key(n)) for n in m.state.readers]
    readers += [(NodeId(n), DecryptionKey.generate().public) for n in node_ids(k)[len(readers) :]]
    env = build_envelope(
        item, state=m.state, author=a, key=m.keys_a.signing, seq=1, readers=readers, created=timestamp()
    )
    env_input = signing_input("envelope", {"header": strict_loads(env.header.canonical), "wraps": env.wraps})
    env_sig = m.keys_a.signing.sign(env_input)
    receipt_body = {
        "v": 1,
        "bulletin": "ab" * 32,
        "node": b,
        "status": "received",
        "at": timestamp(),
        "signer": m.keys_b.signing.kid,
    }
    receipt_input = signing_input("receipt", receipt_body)
    receipt_sig = m.keys_b.signing.sign(receipt_input)
    payload = item.payload_bytes
    reader_key = m.fed.encryption_key(NODE_B)
    sealed = SealedContent(payload)
    info = wrap_info("ab" * 32, reader_key.kid)
    wrapped = sealed.wrap(reader_key, info)
    verify_a = m.fed.verify_key(NODE_A)
    verify_b = m.fed.verify_key(NODE_B)
    return Primitives(
        readers=k,
        sign_envelope=timed(lambda: m.keys_a.signing.sign(env_input), n, rounds),
        verify_envelope=timed(lambda: verify_a.verify(env_sig, env_input), n, rounds),
        sign_receipt=timed(lambda: m.keys_b.signing.sign(receipt_input), n, rounds),
        verify_receipt=timed(lambda: verify_b.verify(receipt_sig, receipt_input), n, rounds),
        hpke_seal=timed(lambda: sealed.wrap(reader_key, info), n, rounds),
        aes_seal=timed(lambda: SealedContent(payload), n, rounds),
        open_content=timed(
            lambda: open_content(
                wrapped_key=wrapped,
                info=info,
                reader=m.keys_b.decryption,
                key_commitment_=sealed.key_commitment,
                nonce=sealed.nonce,
                ciphertext=sealed.ciphertext,
            ),
            n,
            rounds,
        ),
        envelope_input=len(env_input),
        receipt_input=len(receipt_input),
        payload=len(payload),
    )


# -- report ---------------------------------------------------------------------------------------


def per_s(count: int, seconds: float) -> float:
    return count / seconds if seconds == seconds and seconds > 0 else float("nan")


def num(x: float, spec: str = ",.0f") -> str:
    return format(x, spec) if x == x else "—"


def per_signature(args: argparse.Namespace, runs: list[Run], k: int) -> float:
    """B for channels of K readers: as given, else as the runs of K achieved (their mean), else 1."""
    if args.receipts_per_signature is not None:
        return float(args.receipts_per_signature)
    achieved = [r.per_signature for r in runs if r.readers == k and r.receipt_signatures]
    return statistics.mean(achieved) if achieved else 1.0


def run_b(args: argparse.Namespace, r: Run) -> float:
    return float(args.receipts_per_signature) if args.receipts_per_signature is not None else r.per_signature


def report_ceiling(
    prims: dict[int, Primitives], args: argparse.Namespace, at_load: tuple[float, float, float], runs: list[Run]
) -> None:
    bs = {k: per_signature(args, runs, k) for k in prims}
    cores = os.cpu_count() or 1
    t = Table(
        title=f"Crypto primitives, µs per operation on one thread (median of {args.rounds} rounds; "
        f"load {fmt_load(at_load)})"
    )
    t.add_column("operation")
    for k in prims:
        t.add_column(f"K={k}", justify="right")
    rows: list[tuple[str, Callable[[Primitives], float]]] = [
        ("Ed25519 sign, envelope signing input", lambda p: p.sign_envelope),
        ("Ed25519 verify, envelope signing input", lambda p: p.verify_envelope),
        ("Ed25519 sign, receipt signing input", lambda p: p.sign_receipt),
        ("Ed25519 verify, receipt signing input", lambda p: p.verify_receipt),
        ("HPKE seal of the 32-byte content key", lambda p: p.hpke_seal),
        ("AES-GCM seal of the payload (+ key, nonce, commitment)", lambda p: p.aes_seal),
        ("HPKE open + AES-GCM open (open_content)", lambda p: p.open_content),
        ("  bytes: envelope signing input / receipt input / payload", lambda p: float("nan")),
    ]
    for label, get in rows:
        if label.startswith("  bytes"):
            t.add_row(label, *(f"{p.envelope_input} / {p.receipt_input} / {p.payload}" for p in prims.values()))
        else:
            t.add_row(label, *(f"{get(p):,.1f}" for p in prims.values()))
    console.print(t)
    console.print(
        "Per bulletin in a channel of K readers (the author is one of them; the author signs no receipt for itself), "
        "receipts signed once per B bulletins (B = "
        + ", ".join(f"{v:.1f} at K={k}" for k, v in bs.items())
        + (
            ", as given by --receipts-per-signature"
            if args.receipts_per_signature is not None
            else ": the receipts per distinct signature that A stored from the readers in the runs of K"
        )
        + "):\n"
        "  author   S(K) = sign_env + K·hpke_seal + aes_seal + (K-1)·verify_receipt/B\n"
        "  reader   R    = verify_env + open_content (HPKE open + AES-GCM open) + sign_receipt/B\n"
        "  all      C(K) = S(K) + (K-1)·R\n"
        "  ceiling, 1 core  = 1/C(K): the whole federation's crypto for a bulletin, done on one core. Every node of "
        "the run shares this machine, so all of C(K) counts against the same cores; in the loop layout all nodes "
        "also share one event loop, hence one core. This is the ceiling the goal refers to.\n"
        f"  ceiling, {cores} cores = {cores}/C(K): the same work spread perfectly over the {cores} cores, an upper "
        "bound for the processes layout (and for a node that moves crypto to threads: Ed25519 releases the GIL, "
        "HPKE does not). A node doing its crypto on its event loop cannot pass 1/S(K) either, whatever the cores.\n"
        "  (--receipts-per-signature B fixes B, e.g. 1 for one signature per receipt.)"
    )
    c = Table(title="Crypto ceiling")
    for col in (
        "readers K",
        "B",
        "S(K) µs",
        "R µs",
        "C(K) µs",
        "ceiling 1 core b/s",
        f"ceiling {cores} cores b/s",
        "1/S(K) b/s",
    ):
        c.add_column(col, justify="right")
    for k, p in prims.items():
        b = bs[k]
        total = p.total(k, b)
        c.add_row(
            str(k),
            f"{b:.1f}",
            f"{p.sender(k, b):,.0f}",
            f"{p.reader(b):,.0f}",
            f"{total:,.0f}",
            f"{1e6 / total:,.0f}",
            f"{cores * 1e6 / total:,.0f}",
            f"{1e6 / p.sender(k, b):,.0f}",
        )
    console.print(c)


def report_runs(runs: list[Run], prims: dict[int, Primitives], args: argparse.Namespace) -> None:
    cores = os.cpu_count() or 1
    t = Table(title="End to end: posted at A → stored at every reader (and → every reader's receipt at A)")
    for col in (
        "layout",
        "readers",
        "N",
        "B",
        "e2e b/s",
        "to-receipt b/s",
        "post-only b/s",
        "ceiling b/s: 1 core | 2 cores",
        "ratio to 1 core | 2 cores",
        "node CPU ms/b",
        "of it, event loops",
        "of it, crypto workers",
        "crypto share of CPU",
        "load before → after",
        "others' CPU (cores)",
    ):
        t.add_column(col, justify="right")
    for r in runs:
        b = run_b(args, r)
        one = 1e6 / prims[r.readers].total(r.readers, b)
        e2e = per_s(r.count, r.stored_s)
        cpu_us = r.node_cpu / r.count * 1e6
        total = prims[r.readers].total(r.readers, b)
        t.add_row(
            r.label + (" (TIMED OUT)" if r.timed_out else "") + (" (profiled)" if r.profiles else ""),
            str(r.readers),
            str(r.count),
            f"{b:.1f}",
            num(e2e),
            num(per_s(r.count, r.receipts_s)),
            num(per_s(r.count, r.post_s)),
            f"{one:,.0f} | {one * cores:,.0f}",
            f"{num(e2e / one, '.0%')} | {num(e2e / one / cores, '.0%')}",
            f"{cpu_us / 1000:.2f}",
            f"{sum(r.loop_cpu.values()) / r.count * 1e3:.2f}",
            f"{sum(r.worker_cpu.values()) / r.count * 1e3:.2f}",
            f"{total / cpu_us:.0%}",
            f"{r.load_before[0]:.2f} → {r.load_after[0]:.2f}",
            f"{r.others_cores:.2f}",
        )
    console.print(t)
    console.print(
        "B = bulletins per receipt signature the readers made in the run (receipts A stored / their distinct "
        "signatures), used in its ceiling; e2e b/s = N / seconds until every reader stores all N; "
        f"ratio = e2e b/s / ceiling (1/C(K) on one core, {cores}/C(K) on {cores}); node CPU = CPU seconds "
        "of every node's process in the window / N, its crypto worker processes included (A's process also runs the "
        "posting loop and the polling); of it, event loops = the main threads' CPU alone, crypto workers = the "
        "nodes' worker processes (`crypto_workers`; the rest is worker threads: SQLite's, signature checks); crypto "
        "share = C(K) / node CPU per bulletin; others' CPU = the machine's busy CPU in the window minus this bench's "
        "processes (py-spy included), in cores."
    )
    for r in runs:
        if r.failed_posts or r.send_failures:
            console.print(
                f"[yellow]{r.label}, {r.readers} readers: {r.failed_posts} failed posts, {r.send_failures} failed "
                f"pushes (retried) by the nodes in this process; errors: {'; '.join(r.send_errors) or '-'}"
            )

    procs = [r for r in runs if r.layout == "processes"]
    if procs:
        t = Table(title="Processes layout: CPU per bulletin at each side (from /proc), against its crypto")
        for col in ("readers", "process", "CPU ms/bulletin", "crypto floor µs", "crypto share", "CPU cores used"):
            t.add_column(col, justify="right")
        for r in procs:
            p = prims[r.readers]
            b = run_b(args, r)
            recv = [v for k, v in r.cpu.items() if k not in (NODE_A, "py-spy")]
            author = "A, the author (+ the posting loop" + (" over HTTPS" if r.via == "http" else "") + ", polling)"
            rows = [
                (author, r.cpu[NODE_A], p.sender(r.readers, b)),
                (
                    f"a reader (mean of {len(recv)}; min {min(recv) / r.count * 1e3:.2f}, "
                    f"max {max(recv) / r.count * 1e3:.2f})",
                    statistics.mean(recv),
                    p.reader(b),
                ),
            ]
            if r.cpu.get("py-spy"):
                rows.append(("py-spy (while profiling)", r.cpu["py-spy"], float("nan")))
            for label, secs, floor in rows:
                us = secs / r.count * 1e6
                t.add_row(
                    str(r.readers),
                    label,
                    f"{us / 1000:.2f}",
                    num(floor),
                    num(floor / us, ".0%"),
                    f"{secs / r.elapsed:.2f}",
                )
        console.print(t)

    loops = [r for r in runs if r.sql]
    if loops:
        t = Table(
            title="Database work per bulletin at each side (SQLAlchemy events, aiosqlite hand-offs; the readers' "
            "only in the loop layout)"
        )
        for col in (
            "layout",
            "readers",
            "side",
            "statements",
            "reads",
            "single-row writes",
            "executemany calls",
            "rows in them",
            "commits",
            "aiosqlite hops",
            "jobs per group commit",
            "ms per group commit",
            "writer busy",
        ):
            t.add_column(col, justify="right")
        for r in loops:
            readers = [v for k, v in r.sql.items() if k != NODE_A]
            sides = [("author A", [r.sql[NODE_A]], r.count)]
            if readers:
                sides.append((f"a reader (mean of {len(readers)})", readers, r.count * len(readers)))
            for side, counts, per in sides:

                def avg(name: str, counts: list[SqlCounts] = counts, per: int = per) -> str:
                    return f"{sum(getattr(c, name) for c in counts) / per:.2f}"

                t.add_row(
                    r.label,
                    str(r.readers),
                    side,
                    avg("statements"),
                    avg("reads"),
                    avg("single_writes"),
                    avg("executemany"),
                    avg("executemany_rows"),
                    avg("commits"),
                    avg("hops"),
                    num(sum(c.jobs for c in counts) / max(1, sum(c.writes for c in counts)), ".1f"),
                    num(sum(c.write_seconds for c in counts) / max(1, sum(c.writes for c in counts)) * 1e3, ".1f"),
                    num(sum(c.write_seconds for c in counts) / len(counts) / r.elapsed, ".0%"),
                )
        console.print(t)


def report_pushes(runs: list[Run]) -> None:
    t = Table(title="A's push cycle, per push to one reader (each sender pushes one batch at a time): mean ms per step")
    for col in ("layout", "readers", "pushes", "items per push", *PushTimer.STEPS, "cycle (send to send)"):
        t.add_column(col, justify="right")
    for r in runs:
        n = r.push_calls.get("send", 0)
        if not n:
            continue
        means = [
            r.push_seconds[s] / r.push_calls[s] * 1e3 if r.push_calls[s] else float("nan") for s in PushTimer.STEPS
        ]
        t.add_row(
            r.label,
            str(r.readers),
            str(n),
            f"{r.push_items / n:.0f}",
            *(f"{m:.1f}" if m == m else "—" for m in means),
            num(r.push_cycle_seconds / r.push_cycles * 1e3, ".1f") if r.push_cycles else "—",
        )
    console.print(t)
    console.print(
        "pending = read the queue and the envelopes' bytes; mark_sent = a write job (audit 'sent'; what is still "
        "queued goes); send = the HTTPS request, the reader verifying, storing and signing receipts; "
        "accept_receipts = verify them, a write job. A sender reads its next batch while this one travels and "
        "marks it sent just before it goes, and checks this one's "
        "receipts while the next one travels, so the steps overlap: cycle = the mean time from "
        "one send to the next to the same reader. screen, ingest_screened: B's handling of a push (loop layout), "
        "the checks and decryption (in its crypto workers, if any), then the rules that need state and the write."
    )


def report_profiles(runs: list[Run], args: argparse.Namespace) -> None:
    for r in runs:
        for name, prof in r.profiles.items():
            if not prof.samples:
                console.print(f"[yellow]{r.label}, {r.readers} readers, {name}: no samples")
                continue
            cpu = r.cpu.get(name, 0.0)
            per_b = cpu / r.count * 1e3
            head = (
                f"py-spy, {r.label}, {r.readers} readers, {name}: {per_b:.2f} ms CPU per bulletin "
                f"(/proc: {cpu:.1f} s); "
                f"{prof.samples} working samples (≈{prof.samples / args.profile_rate:.1f} s), "
                f"{prof.waiting} of blocked waits dropped"
            )
            t = Table(title=head)
            t.add_column("area")
            t.add_column("share", justify="right")
            t.add_column("ms/bulletin", justify="right")
            for area in AREAS:
                if prof.by_area[area]:
                    share = prof.share(prof.by_area, area)
                    t.add_row(area, f"{share:.1%}", f"{share * per_b:.3f}")
            console.print(t)
            t = Table(title="  … hottest functions (self time), and exchange functions by inclusive time")
            t.add_column("self", justify="right")
            t.add_column("function (innermost frame)")
            t.add_column("incl.", justify="right")
            t.add_column("exchange function (anywhere in the stack)")
            top_self = prof.self_time.most_common(args.profile_lines)
            top_incl = prof.inclusive.most_common(args.profile_lines)
            for i in range(max(len(top_self), len(top_incl))):
                s = top_self[i] if i < len(top_self) else ("", 0)
                c = top_incl[i] if i < len(top_incl) else ("", 0)
                t.add_row(
                    f"{s[1] / prof.samples:.1%}" if s[0] else "",
                    s[0],
                    f"{c[1] / prof.samples:.1%}" if c[0] else "",
                    c[0],
                )
            console.print(t)
    if any(r.profiles for r in runs):
        console.print(f"raw py-spy stacks (collapsed, for flamegraph.pl or speedscope) in {args.profile}")


def code_state() -> str:
    """Which exchange this run measures: the repository's commit and whether exchange/ has edits in it."""
    import exchange

    code = Path(exchange.__file__).resolve().parents[1]
    repo = Path(__file__).resolve().parents[1]
    if code != repo:
        return f"exchange imported from {code} (PYTHONPATH), not from this repository"

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=repo, capture_output=True, text=True).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--", "exchange").splitlines()
    except OSError:
        return "commit unknown"
    return f"commit {head}" + (f" + {len(dirty)} uncommitted files under exchange/" if dirty else " (exchange/ clean)")


async def main(args: argparse.Namespace) -> None:
    outbox_log = logging.getLogger("exchange.outbox")  # failed pushes are counted, not printed
    outbox_log.setLevel(logging.WARNING)
    outbox_log.propagate = False
    outbox_log.addHandler(_CountFailures())
    layouts = ["loop", "processes"] if args.layout == "both" else [args.layout]
    console.print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {code_state()}, {os.cpu_count()} CPUs, "
        f"load average {fmt_load(load())}; N={args.count} per run after {args.warmup} warm-up posts, batch "
        f"{NodeConfig.model_fields['batch_size'].default if args.batch_size is None else args.batch_size}, "
        f"{args.concurrency} concurrent posters, crypto_workers "
        f"{NodeConfig.model_fields['crypto_workers'].default if args.crypto_workers is None else args.crypto_workers}"
    )
    if args.profile:
        if py_spy() is None:
            raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    prims: dict[int, Primitives] = {}
    with tempfile.TemporaryDirectory(prefix="exchange-bench-") as tmp:
        root = Path(tmp)
        ceiling_load = load()
        m = material(await provision(root / "ceiling" / "nodes", 2, args.batch_size))
        for k in args.readers:
            prims[k] = measure_primitives(m, k, args.samples, args.rounds)
        for layout in layouts:
            for k in args.readers:
                console.print(
                    f"[dim]running: {layout}, {k} readers, {args.count} bulletins (load {fmt_load(load())}) …"
                )
                runs.append(await end_to_end(root, args, layout, k))
    report_ceiling(prims, args, ceiling_load, runs)
    report_runs(runs, prims, args)
    report_pushes(runs)
    report_profiles(runs, args)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readers", default="2,10", help="channel sizes to run, comma-separated (default 2,10)")
    p.add_argument("--count", type=int, default=10_000, help="bulletins posted at A per run (default 10000)")
    p.add_argument("--warmup", type=int, default=50, help="bulletins posted and delivered before timing (default 50)")
    p.add_argument(
        "--layout", choices=["loop", "processes", "both"], default="both", help="loop, processes or both (default)"
    )
    p.add_argument("--via", choices=["service", "http"], default="service", help="loop layout: how A is posted to")
    p.add_argument(
        "--batch-size", type=int, default=None, help="node batch_size: envelopes per push (default: the node default)"
    )
    p.add_argument("--concurrency", type=int, default=256, help="concurrent posters at A (default 256)")
    p.add_argument(
        "--crypto-workers", type=int, help="each node's crypto_workers (default: the node's default, NodeConfig)"
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for delivery per run")
    p.add_argument("--samples", type=int, default=300, help="calls per round for each crypto primitive")
    p.add_argument("--rounds", type=int, default=5, help="rounds per crypto primitive (the median is kept)")
    p.add_argument(
        "--receipts-per-signature",
        type=int,
        default=None,
        help="bulletins one receipt signature covers, for the ceiling (default: as the readers achieved in the run)",
    )
    p.add_argument("--profile", metavar="DIR", help="py-spy each run (A and B in the processes layout); stacks in DIR")
    p.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second (default 100)")
    p.add_argument("--profile-lines", type=int, default=15, help="functions listed per profile")
    args = p.parse_args()
    args.readers = [int(k) for k in args.readers.split(",")]
    if min(args.readers) < 2:
        p.error("--readers: at least 2 (A and B)")
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
