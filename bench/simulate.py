"""Federation simulator (issue 14, must-shows 4 and 5): N real nodes on loopback over mutual TLS,
several per process, one global channel and regional ones; delivery time, CPU, bytes, witnessing
load and memory per node, and how each grows with N.

Run: .venv/bin/python bench/simulate.py [--nodes 10,50,200] [--per-process 25] [--alerts 30]
                                        [--warmup 65] [--window 120] [--crypto-workers 0] [--envelope-v2]

For each N it writes a federation folder in a temporary directory with tests.conftest.write_federation
(free loopback ports, SQLite files), provisions it with exchange.provision.init_federation (generated
keys, roster, channel logs, users; timed), and starts the nodes in worker processes of
--per-process nodes each (`python bench/simulate.py --worker`, one event loop per process, nodes
started with exchange.app.start_node and then put out of the garbage collector's reach as
`exchange node run` does, exchange.app.keep_what_started; RLIMIT_NOFILE raised to the hard limit).
Channels: `global` with all N as members (every node reads and posts), and `region-NN` of
--region-size nodes each.

Phases, and where each figure comes from:

  idle    after --warmup seconds (the first audit round comes 60 s after a node starts), two
          scrapes of GET /metrics at every node (the `admin` token), --window seconds apart:
          witnessing requests per minute per node = the growth of exchange_http_requests_total
          for the witness routes (/fed/v1/audit/cosign, /fed/v1/audit/checkpoint,
          /fed/v1/audit/cosignatures: requests each node answered; each log has audit_witnesses
          designated witnesses, docs/audit.md section 12) over the window; every other
          /fed route likewise; CPU of the worker processes over the window (/proc, their child
          processes included); memory: each worker's VmRSS / its nodes (and the growth over its
          RSS before it started a node), and process_resident_memory_bytes from /metrics (one
          value per process: the largest its nodes answered, summed over the processes / N;
          summing the distinct values, as before 2026-12-01, counted a process once per value
          its nodes answered while its RSS moved, up to 2.5 times).
  alerts  --alerts posts to `global` from --authors authors in turn, one every --interval
          seconds, through each author's client API (`officer`), and one to each of the first
          --regional regions; waits until every member holds every alert (counts read from the
          SQLite files), then scrapes /metrics again and checks exchange_bulletins_stored per
          channel at every node. Time to full delivery of an alert = the latest `stored_at`
          (ms) among its members' databases minus the wall time just before its POST was sent.
          CPU per alert = the workers' CPU over the alert phase minus the idle rate, / alerts.
          Bytes per alert = the envelope as stored by its author (SQLite) x the other members
          (payload only: no HTTP, TLS, receipts), and loopback bytes (/proc/net/dev `lo`,
          machine-wide: other engineers' traffic included) over the phase minus the idle rate.

The audit checkpoint interval is the node's default (printed). It prints figures, the goals of
issue 14 to compare against, and the load average with each figure; it never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

# the copy of exchange/ (and tests/conftest.py) that a run imports (relaunch), else the repository's
sys.path.insert(0, os.environ.get("EXCHANGE_SIMULATE_CODE") or str(Path(__file__).resolve().parents[1]))

from exchange.config import NodeConfig

REPO = Path(__file__).resolve().parents[1]
CODE_ENV = "EXCHANGE_SIMULATE_CODE"
GLOBAL = "global"
WITNESS_ROUTES = ("/fed/v1/audit/cosign", "/fed/v1/audit/checkpoint", "/fed/v1/audit/cosignatures")
HIGH = 1_000_000.0  # rate limits out of the way, as bench/batch.py does
GOALS = (
    "goals at 200 nodes (issue 14): an alert to the global channel fully delivered with p99 under 2 s; "
    "witnessing load per node independent of N; memory per idle node under 40 MB"
)
MB = 1024 * 1024
Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]  # (sample name, labels) -> value


def load1() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def say(text: str) -> None:
    print(f"{text} ({load1()})", flush=True)


def node_id(i: int) -> str:
    return f"s{i:03d}-customs"


def country(i: int) -> str:
    return chr(65 + i // 26 % 26) + chr(65 + i % 26)


def bulletin(i: int, channel: str) -> dict[str, Any]:
    return {
        "kind": "alert",
        "title": f"Undeclared lithium batteries, consignment {i} ({channel})",
        "body": "Declared as toys; X-ray shows cells. Hold and inspect on arrival. " * 4,
        "indicators": {"air_waybills": [f"176-{i:07d}{i % 7}"], "airports": ["NBO", "AMS"], "flights": ["KL566"]},
    }


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def tree_cpu(pids: Iterable[int]) -> float:
    """User + system CPU seconds of these processes and their living descendants (crypto workers), from /proc."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (p / "stat").read_text().rpartition(")")[2].split()
            parent[int(p.name)] = int(fields[1])
            cpu[int(p.name)] = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tick
    roots = set(pids)
    total = 0.0
    for pid in cpu:
        q = pid
        while q > 1 and q not in roots:
            q = parent.get(q, 0)
        if q in roots:
            total += cpu[pid]
    return total


NETNS_ENV = "EXCHANGE_SIMULATE_NETNS"  # set in the copy of this script that runs in its own network namespace


def relaunch(netns: bool, script: Path | None = None) -> None:
    """Run this script (or `script`, a bench that uses its workers) again on a copy of exchange/
    taken now, so that other engineers' edits to the
    working tree during a run (a new migration, say) never reach some nodes and not others; and, if
    `netns` and `unshare -n` works (root), in a network namespace of its own, so that the loopback
    counters of /proc/net/dev count this federation's traffic alone. Exits with the run's status."""
    import shutil

    code = Path(tempfile.mkdtemp(prefix="exchange-sim-code-"))
    try:
        shutil.copytree(REPO / "exchange", code / "exchange", ignore=shutil.ignore_patterns("__pycache__"))
        (code / "tests").mkdir()
        for name in ("__init__.py", "conftest.py"):
            shutil.copy(REPO / "tests" / name, code / "tests" / name)
        env = {**os.environ, CODE_ENV: str(code)}
        argv = [sys.executable, str(script or Path(__file__).resolve()), *sys.argv[1:]]
        try:
            netns = netns and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
        except OSError:
            netns = False
        if netns:
            argv, env[NETNS_ENV] = ["unshare", "-n", *argv], "1"
        status = subprocess.run(argv, env=env).returncode
    finally:
        shutil.rmtree(code, ignore_errors=True)
    sys.exit(status)


def loopback_up() -> None:
    """Bring `lo` up in a fresh network namespace (SIOCGIFFLAGS, SIOCSIFFLAGS |= IFF_UP)."""
    import fcntl
    import socket
    import struct

    with socket.socket() as s:
        ifr = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, 0x8913, ifr))[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sh", b"lo", flags | 1))


def loopback_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            return int(rest.split()[0])
    return 0


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def when(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# -- the worker: K nodes on one event loop ----------------------------------------------------------


def with_extras(record: Any) -> bool:
    """Append the structured fields a node logs (an outbox's `peer` and `error`: why a send failed) to
    the message, once, so that the workers' logs say why, not only that."""
    extras = [f"{k}={getattr(record, k)}" for k in ("peer", "error", "retry_in", "batch") if hasattr(record, k)]
    if extras and not getattr(record, "_extras_added", False):
        record.msg = f"{record.msg} ({', '.join(extras)})"
        record._extras_added = True
    return True


async def worker(folder: Path, ids: list[str]) -> None:
    import logging

    from exchange.app import RunningNode, keep_what_started, start_node

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(with_extras)
    nofile = raise_nofile()
    before = rss_bytes(os.getpid())
    started = time.perf_counter()
    running: list[RunningNode] = []
    failed: dict[str, str] = {}
    for n in ids:
        try:
            running.append(await start_node(NodeConfig.load(folder / f"{n}.toml", environ={})))
            keep_what_started()  # as `exchange node run` does
        except Exception as exc:  # reported to the coordinator, which says so
            failed[n] = f"{type(exc).__name__}: {exc}"
    ready = {"pid": os.getpid(), "rss_before": before, "seconds": time.perf_counter() - started, "nofile": nofile}
    print(json.dumps({**ready, "failed": failed}), flush=True)
    await asyncio.to_thread(sys.stdin.read)  # the coordinator closes our stdin: stop
    for node in running:
        with contextlib.suppress(Exception):
            await node.stop()


# -- the coordinator --------------------------------------------------------------------------------


@dataclass
class Fed:
    n: int
    folder: Path
    configs: dict[str, NodeConfig]
    channels: dict[str, list[str]]  # channel -> members
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    ready: list[dict[str, Any]] = field(default_factory=list)
    nodes_of: dict[int, int] = field(default_factory=dict)  # worker pid -> nodes in it
    process_of: dict[str, int] = field(default_factory=dict)  # node -> its worker's pid
    sessions: dict[str, aiohttp.ClientSession] = field(default_factory=dict)
    tokens: dict[str, dict[str, str]] = field(default_factory=dict)  # node -> user -> token

    @property
    def pids(self) -> list[int]:
        return [int(r["pid"]) for r in self.ready]


def provision_files(folder: Path, n: int, region: int, options: dict[str, Any]) -> dict[str, list[str]]:
    import importlib

    write_federation = importlib.import_module("tests.conftest").write_federation  # as the tests write one

    ids = [node_id(i) for i in range(n)]
    channels = {GLOBAL: ids}
    for k in range(0, n, region):
        if len(ids[k : k + region]) >= 2:
            channels[f"region-{k // region:02d}"] = ids[k : k + region]
    specs = [
        {
            "id": c,
            "owner": members[0],
            "agencies": ["customs"],
            "members": {m: ["read", "post"] + (["admin"] if m == members[0] else []) for m in members},
        }
        for c, members in channels.items()
    ]
    for _ in range(5):  # free ports are taken at write time: write again if two nodes drew the same
        write_federation(folder, {i: (country(k), "customs") for k, i in enumerate(ids)}, specs, {}, options)
        ports = [NodeConfig.load(folder / f"{i}.toml", environ={}).port for i in ids]
        if len(set(ports)) == len(ports):
            break
    return channels


async def scrape(fed: Fed, node: str, sem: asyncio.Semaphore) -> tuple[Series, float]:
    """One GET /metrics at `node` with its admin token: every sample, and the seconds it took."""
    async with sem:
        t0 = time.perf_counter()
        headers = {"Authorization": f"Bearer {fed.tokens[node]['admin']}"}
        for attempt in range(3):  # a keep-alive connection the node closed: again
            try:
                async with fed.sessions[node].get(fed.configs[node].endpoint + "/metrics", headers=headers) as resp:
                    text = await resp.text()
                    if resp.status == 503 and attempt < 2:  # "the database is busy; try again shortly"
                        await asyncio.sleep(2.0)
                        continue
                    if resp.status != 200:
                        raise RuntimeError(f"{node}: /metrics answered {resp.status}: {text[:200]}")
                break
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionError) as exc:
                if attempt == 2:
                    print(f"  {node}: GET /metrics failed 3 times: {type(exc).__name__}: {exc}", flush=True)
                    raise
        took = time.perf_counter() - t0
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            series[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return series, took


async def scrape_all(fed: Fed) -> tuple[dict[str, Series], float, float]:
    sem = asyncio.Semaphore(16)
    t0 = time.perf_counter()
    got = await asyncio.gather(*(scrape(fed, n, sem) for n in fed.configs))
    took = [t for _, t in got]
    return dict(zip(fed.configs, (s for s, _ in got), strict=True)), time.perf_counter() - t0, statistics.median(took)


def requests_by_route(series: Series) -> dict[str, float]:
    out: dict[str, float] = collections.defaultdict(float)
    for (name, labels), value in series.items():
        if name == "exchange_http_requests_total":
            out[dict(labels)["route"]] += value
    return out


def request_rates(before: dict[str, Series], after: dict[str, Series], minutes: float) -> tuple[list[float], str]:
    """Witnessing requests each node answered per minute, and every route's requests/min per node (text)."""
    per_node: list[float] = []
    routes: dict[str, float] = collections.defaultdict(float)
    for nid in after:
        a, b = requests_by_route(before[nid]), requests_by_route(after[nid])
        per_node.append(sum(b.get(r, 0) - a.get(r, 0) for r in WITNESS_ROUTES) / minutes)
        for r in b:
            routes[r] += (b[r] - a.get(r, 0)) / minutes / len(after)
    text = ", ".join(f"{r} {v:.1f}" for r, v in sorted(routes.items(), key=lambda x: -x[1]) if v >= 0.05)
    return per_node, text


def stored(series: Series, channel: str) -> int:
    return int(series.get(("exchange_bulletins_stored", (("channel", channel),)), 0))


class Counts:
    """Bulletins per channel at every node, read from the SQLite files (read-only) while waiting."""

    def __init__(self, fed: Fed) -> None:
        self.conns = {
            n: sqlite3.connect(f"file:{c.database_url.split(':///', 1)[1]}?mode=ro", uri=True, check_same_thread=False)
            for n, c in fed.configs.items()
        }

    def held(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for n, conn in self.conns.items():
            rows = conn.execute("SELECT channel, count(*) FROM bulletins GROUP BY channel").fetchall()
            out[n] = {str(c): int(k) for c, k in rows}
        return out

    def stored_at(self, node: str, bulletin_id: str) -> str | None:
        row = self.conns[node].execute("SELECT stored_at FROM bulletins WHERE id = ?", (bulletin_id,)).fetchone()
        return None if row is None else str(row[0])

    def envelope_size(self, node: str, bulletin_id: str) -> int:
        row = self.conns[node].execute("SELECT length(envelope) FROM bulletins WHERE id = ?", (bulletin_id,)).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        for c in self.conns.values():
            c.close()


async def start_workers(fed: Fed, per_process: int, tmp: Path) -> float:
    ids = list(fed.configs)
    t0 = time.perf_counter()
    for k in range(0, len(ids), per_process):
        group = ids[k : k + per_process]
        log = (tmp / f"worker-{k // per_process:02d}.log").open("w")
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", str(fed.folder), ",".join(group)]
        fed.procs.append(
            subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
        )
    for p, k in zip(fed.procs, range(0, len(ids), per_process), strict=True):
        assert p.stdout is not None
        line = await asyncio.to_thread(p.stdout.readline)
        if not line:
            raise RuntimeError(f"worker {k // per_process} died while starting its nodes (see its log in {tmp})")
        info = json.loads(line)
        fed.ready.append(info)
        fed.nodes_of[int(info["pid"])] = len(ids[k : k + per_process]) - len(info["failed"])
        fed.process_of.update((node, int(info["pid"])) for node in ids[k : k + per_process])
        for why, k in collections.Counter(info["failed"].values()).most_common():
            print(f"  {k} nodes of worker {len(fed.ready) - 1} did not start: {why}")
    return time.perf_counter() - t0


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


async def memory_guard(fed: Fed, min_free_mb: float) -> str:
    """Return (and so stop the run) when the machine's available memory falls under `min_free_mb`:
    the machine is shared, and the OOM killer would not pick this bench alone."""
    while mem_available() >= min_free_mb * MB:
        await asyncio.sleep(1.0)
    pids = [p.pid for p in fed.procs if p.poll() is None]
    rss = sum(rss_bytes(pid) for pid in pids if Path(f"/proc/{pid}").exists())
    for p in fed.procs:
        p.kill()
    nodes = sum(fed.nodes_of.values()) or len(fed.configs)
    return (
        f"stopped: the machine's available memory fell under {min_free_mb:.0f} MB with {len(pids)} workers holding "
        f"{rss / MB:.0f} MB ({len(fed.ready)} of them ready, {nodes} nodes: {rss / nodes / MB:.0f} MB a node)"
    )


async def stop_workers(fed: Fed) -> None:
    for p in fed.procs:
        with contextlib.suppress(OSError):
            if p.stdin:
                p.stdin.close()
    for p in fed.procs:
        try:
            await asyncio.to_thread(p.wait, 60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def worker_logs(tmp: Path) -> list[str]:
    """Warnings and errors the workers' nodes logged, counted by their first 100 characters (no time stamp)."""
    seen: collections.Counter[str] = collections.Counter()
    for log in sorted(tmp.glob("worker-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3 and (" WARNING " in line or " ERROR " in line or "Traceback" in line):
                seen[parts[2][:100]] += 1
    return [f"{c} x {m}" for m, c in seen.most_common(8)]


@dataclass
class Result:
    n: int
    loads: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


async def run_one(n: int, args: argparse.Namespace) -> Result:
    res = Result(n)
    options: dict[str, Any] = {
        "crypto_workers": args.crypto_workers,
        "envelope_v2": args.envelope_v2,
        "epoch_prefetch_seconds": args.epoch_prefetch,
        "retry_base_seconds": 0.5,  # the node's defaults (write_federation's are the tests' quicker ones)
        "retry_max_seconds": 60.0,
        "request_timeout_seconds": 30.0,
        **{
            f"{k}_per_{w}": HIGH if k == "rate" else int(HIGH)
            for k in ("rate", "burst")
            for w in ("token", "peer", "address")
        },
    }
    with tempfile.TemporaryDirectory(prefix=f"exchange-sim{n}-") as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "nodes"
        t0 = time.perf_counter()
        channels = await asyncio.to_thread(provision_files, folder, n, args.region_size, options)
        from exchange.provision import init_federation

        t1 = time.perf_counter()
        await init_federation(folder)
        t2 = time.perf_counter()
        res.figures["write_s"], res.figures["init_s"] = t1 - t0, t2 - t1
        say(f"N={n}: federation files written in {t1 - t0:.1f} s, init_federation {t2 - t1:.1f} s")
        configs = {node_id(i): NodeConfig.load(folder / f"{node_id(i)}.toml", environ={}) for i in range(n)}
        fed = Fed(n, folder, configs, channels)
        say(
            f"N={n}: audit_checkpoint_seconds {configs[node_id(0)].audit_checkpoint_seconds:g} (the node's default), "
            f"audit_witnesses {configs[node_id(0)].audit_witnesses} (witnesses per log), "
            f"crypto_workers {args.crypto_workers}, envelope_v2 {args.envelope_v2}, {len(channels)} channels, "
            f"{-(-n // args.per_process)} workers"
        )
        from exchange.keystore import read_file
        from exchange.node.tls import client_context

        for nid, cfg in configs.items():
            fed.tokens[nid] = {u: (cfg.keys_dir / "tokens" / u).read_text().strip() for u in ("admin", "officer")}
            ctx = client_context(read_file(cfg.keys_dir / "tls.crt").decode())
            fed.sessions[nid] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ctx, limit=4), timeout=aiohttp.ClientTimeout(total=120)
            )
        counts: Counts | None = None

        async def run() -> None:
            nonlocal counts
            started = await start_workers(fed, args.per_process, tmp)
            res.figures["start_s"] = started
            say(f"N={n}: {sum(fed.nodes_of.values())} nodes started in {started:.1f} s")
            if sum(fed.nodes_of.values()) < n:
                raise RuntimeError(f"only {sum(fed.nodes_of.values())} of {n} nodes started")
            counts = Counts(fed)
            await measure(fed, counts, args, res)

        try:
            running = asyncio.create_task(run())
            guard = asyncio.create_task(memory_guard(fed, args.min_free_mb))
            await asyncio.wait({running, guard}, return_when=asyncio.FIRST_COMPLETED)
            if guard.done():
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await running
                raise RuntimeError(guard.result())
            guard.cancel()
            await running
        finally:
            if counts:
                counts.close()
            await stop_workers(fed)
            for s in fed.sessions.values():
                await s.close()
            res.notes += worker_logs(tmp)
            keep = Path(tempfile.gettempdir()) / "exchange-simulate-logs" / f"N{n}"
            keep.mkdir(parents=True, exist_ok=True)
            for log in tmp.glob("worker-*.log"):
                (keep / log.name).write_bytes(log.read_bytes())
            print(f"  N={n}: the workers' logs are in {keep}; {'; '.join(worker_logs(tmp)[:3])}", flush=True)
    return res


async def measure(fed: Fed, counts: Counts, args: argparse.Namespace, res: Result) -> None:
    n = fed.n
    f = res.figures
    await asyncio.sleep(args.warmup)
    # -- idle -----------------------------------------------------------------------------------
    m0, took, med = await scrape_all(fed)
    c0, lo0, w0 = tree_cpu(fed.pids), loopback_bytes(), time.monotonic()
    say(f"N={n}: scraped /metrics at {n} nodes in {took:.1f} s (median {med * 1e3:.0f} ms a node); idle window ...")
    f["scrape_all_s"], f["scrape_median_ms"] = took, med * 1e3
    await asyncio.sleep(args.window)
    c1, lo1, w1 = tree_cpu(fed.pids), loopback_bytes(), time.monotonic()
    m1, _, _ = await scrape_all(fed)
    res.loads.append(load1())
    per_node, routes = request_rates(m0, m1, (w1 - w0) / 60)
    f["witness_per_node_min"] = statistics.mean(per_node)
    f["witness_max_node_min"] = max(per_node)
    k = next(iter(fed.configs.values())).audit_witnesses  # witnesses per log (docs/audit.md, section 12)
    f["idle_cpu_per_node"] = (c1 - c0) / (w1 - w0) / n  # cores
    idle_cpu_rate, idle_lo_rate = (c1 - c0) / (w1 - w0), (lo1 - lo0) / (w1 - w0)
    rss = {pid: rss_bytes(pid) for pid in fed.pids}
    f["max_fds"] = max(len(os.listdir(f"/proc/{pid}/fd")) for pid in fed.pids)
    f["rss_per_node_mb"] = sum(rss.values()) / n / MB
    f["rss_growth_per_node_mb"] = sum(rss[int(r["pid"])] - int(r["rss_before"]) for r in fed.ready) / n / MB
    f["rss_before_mb"] = statistics.mean(int(r["rss_before"]) for r in fed.ready) / MB
    f["processes"] = len(fed.pids)
    f["deployed_node_mb"] = f["rss_before_mb"] + f["rss_growth_per_node_mb"]
    # Each process once: its nodes answer with the RSS of the moment they were scraped, so the
    # largest of their answers stands for it.
    prom: dict[int, float] = {}
    for nid in fed.configs:
        pid = fed.process_of[nid]
        prom[pid] = max(prom.get(pid, 0.0), m1[nid].get(("process_resident_memory_bytes", ()), 0.0))
    f["prom_rss_per_node_mb"] = sum(prom.values()) / n / MB
    say(
        f"N={n} idle, {w1 - w0:.0f} s: witnessing {f['witness_per_node_min']:.1f} requests/min answered per node "
        f"(max {f['witness_max_node_min']:.0f}; at most 3 x min(k, N-1) = {3 * min(k, n - 1)} on average with "
        f"k = {k} witnesses per log, against 3 x (N-1) = {3 * (n - 1)} if every partner witnessed every partner); "
        f"idle CPU {f['idle_cpu_per_node'] * 1e3:.1f} ms/s per node"
    )
    print(f"  requests/min per node, by route: {routes}")
    say(
        f"N={n} memory: worker RSS / nodes {f['rss_per_node_mb']:.1f} MB a node (a worker is "
        f"{f['rss_before_mb']:.0f} MB before its first node: {f['rss_growth_per_node_mb']:.1f} MB a node above "
        f"that, so about {f['deployed_node_mb']:.0f} MB for a node alone in its process, as deployed; "
        f"at most {f['max_fds']:.0f} open files in a worker); "
        "process_resident_memory_bytes from /metrics, the largest of each process's nodes, / N: "
        f"{f['prom_rss_per_node_mb']:.1f} MB"
    )
    # -- alerts ---------------------------------------------------------------------------------
    ids = list(fed.configs)
    authors = [ids[(k * n) // args.authors] for k in range(min(args.authors, n))]
    regions = [c for c in fed.channels if c != GLOBAL][: args.regional]
    plan: list[tuple[str, str]] = [(GLOBAL, authors[k % len(authors)]) for k in range(args.alerts)]
    for k, c in enumerate(regions):  # spread through the stream
        plan.insert(min(len(plan), (k + 1) * len(plan) // (len(regions) + 1) + k), (c, fed.channels[c][-1]))
    Posted = tuple[str, str, str, float]  # channel, author, bulletin id, wall time before the POST

    async def post(i: int, channel: str, author: str, into: list[Posted]) -> None:
        cfg, token = fed.configs[author], fed.tokens[author]["officer"]
        url = f"{cfg.endpoint}/api/v1/channels/{channel}/bulletins"
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f"simulate-alert-{i:08d}"}
        sent = time.time()
        for attempt in range(3):  # a keep-alive connection the node closed: again, under the same key
            try:
                async with fed.sessions[author].post(url, json=bulletin(i, channel), headers=headers) as resp:
                    body = await resp.json()
                    if resp.status != 201:
                        raise RuntimeError(f"post at {author} answered {resp.status}: {body}")
                break
            except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:  # noted; the run goes on
                res.notes.append(f"post {i} at {author}, attempt {attempt + 1}: {type(exc).__name__}: {exc}")
                if attempt == 2 or isinstance(exc, RuntimeError):
                    return
        into.append((channel, author, str(body["id"]), sent))

    async def burst(steps: list[tuple[str, str]], first: int) -> tuple[list[Posted], list[str]]:
        """Post `steps` `--interval` apart, wait for full delivery; what was posted, and who is short."""
        before = await asyncio.to_thread(counts.held)
        into: list[Posted] = []
        tasks = []
        for i, (channel, author) in enumerate(steps):
            tasks.append(asyncio.create_task(post(first + i, channel, author, into)))
            await asyncio.sleep(args.interval)
        await asyncio.gather(*tasks)
        want = collections.Counter(c for c, *_ in into)
        deadline = time.monotonic() + args.timeout
        short: list[str] = []
        while time.monotonic() < deadline:
            held = await asyncio.to_thread(counts.held)
            short = [
                f"{m}:{c}"
                for c, k in want.items()
                for m in fed.channels[c]
                if held[m].get(c, 0) < before[m].get(c, 0) + k
            ]
            if not short:
                break
            await asyncio.sleep(0.25)
        return into, short

    def full_time(channel: str, bid: str, sent: float) -> tuple[float, str] | None:
        """Time to full delivery of one bulletin, and the member that stored it last."""
        times = [counts.stored_at(m, bid) for m in fed.channels[channel]]
        if not all(times):
            return None
        late = max(zip((when(t) for t in times if t), fed.channels[channel], strict=True))
        return late[0] - sent, late[1]

    first_times: list[float] = []
    if args.first_alerts:
        # Each author's first alert to `global`, apart: without epochs ahead of posts
        # (--epoch-prefetch 0) the first makes the channel's epoch (v2), and every member fetches
        # it with the readers' announcements (docs/protocol.md, 15).
        first, lacking = await burst([(GLOBAL, a) for a in authors], 1_000_000)
        firsts = [(a, full_time(c, b, t)) for c, a, b, t in first]
        first_times = [x[0] for _, x in firsts if x is not None]
        f["first_alert_max"] = max(first_times, default=float("nan"))
        say(
            f"N={n} first alert of each author (not in p50 and p99 below; in p99 with the first alerts): "
            + "; ".join(f"{a} {x[0]:.2f} s" if x else f"{a} not delivered" for a, x in firsts)
            + (f"; {len(lacking)} member-channels short" if lacking else "")
        )
        await asyncio.sleep(args.settle)
    c0, lo0, w0 = tree_cpu(fed.pids), loopback_bytes(), time.monotonic()
    posted, missing = await burst(plan, 0)
    want = collections.Counter(c for c, *_ in posted)
    c1, lo1, w1 = tree_cpu(fed.pids), loopback_bytes(), time.monotonic()
    res.loads.append(load1())
    if missing:
        res.notes.append(f"NOT fully delivered after {args.timeout:.0f} s: {len(missing)} member-channels short")
    # witnessing while alerts flow: from the first post to at least --window seconds after it
    await asyncio.sleep(max(0.0, w0 + args.window - time.monotonic()))
    short: list[str] | None = None  # None: the scrape after the alerts failed (noted); the delivery figures stand
    try:
        m2, _, _ = await scrape_all(fed)
    except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
        res.notes.append(f"the /metrics scrape after the alerts failed: {type(exc).__name__}: {exc}")
    else:
        minutes = (time.monotonic() - w0) / 60
        per_node, routes = request_rates(m1, m2, minutes)
        f["witness_busy_per_node_min"] = statistics.mean(per_node)
        say(
            f"N={n} with alerts, {minutes * 60:.0f} s from the first post: witnessing "
            f"{statistics.mean(per_node):.1f} requests/min answered per node (max {max(per_node):.0f})"
        )
        print(f"  requests/min per node, by route: {routes}")
        short = [
            nid for nid in ids if stored(m2[nid], GLOBAL) < stored(m1[nid], GLOBAL) + want[GLOBAL]
        ]  # /metrics agrees with the databases?
    full: dict[str, list[float]] = collections.defaultdict(list)
    sizes: list[int] = []
    each: list[str] = []  # every global alert's time to full delivery and its last member, as posts were answered
    for channel, author, bid, sent in posted:
        got = full_time(channel, bid, sent)
        if got is not None:
            full[channel if channel == GLOBAL else "regional"].append(got[0])
            if channel == GLOBAL:
                each.append(f"{author} {got[0]:.2f} s (last {got[1]})")
        sizes.append(counts.envelope_size(author, bid) * (len(fed.channels[channel]) - 1))
    g = full[GLOBAL] or [float("nan")]
    f["p50"], f["p99"], f["max"] = percentile(g, 0.5), percentile(g, 0.99), max(g)
    if first_times:  # the first alerts too: what a user of the global channel sees
        f["p99_all"] = percentile(g + first_times, 0.99)
    f["regional_p50"] = percentile(full["regional"], 0.5) if full["regional"] else float("nan")
    span = w1 - w0
    f["cpu_per_alert"] = ((c1 - c0) - idle_cpu_rate * span) / max(1, len(posted))
    f["cpu_gross_per_alert"] = (c1 - c0) / max(1, len(posted))
    f["bytes_per_alert"] = statistics.mean(sizes) if sizes else float("nan")
    f["global_bytes_per_alert"] = statistics.mean(s for s, (c, *_) in zip(sizes, posted, strict=True) if c == GLOBAL)
    f["lo_per_alert"] = ((lo1 - lo0) - idle_lo_rate * span) / max(1, len(posted))
    say(
        f"N={n} alerts: {len(full[GLOBAL])}/{args.alerts} to {GLOBAL} ({n} members) fully delivered: "
        f"p50 {f['p50']:.2f} s, p99 {f['p99']:.2f} s, max {f['max']:.2f} s; {len(full['regional'])} regional "
        f"(p50 {f['regional_p50']:.2f} s); phase {span:.0f} s"
    )
    say(
        f"N={n} per alert: CPU {f['cpu_per_alert']:.2f} s across the federation above the idle rate "
        f"({f['cpu_gross_per_alert']:.2f} s gross); envelope bytes x recipients "
        f"{f['global_bytes_per_alert'] / 1e3:.0f} kB a global alert (mean of all {f['bytes_per_alert'] / 1e3:.0f} kB); "
        f"loopback {f['lo_per_alert'] / 1e3:.0f} kB above the idle rate"
        + ("" if os.environ.get(NETNS_ENV) else " (machine-wide)")
    )
    audit_round = max(c.audit_checkpoint_seconds for c in fed.configs.values())
    if args.window < audit_round:
        # Each node's audit round comes every audit_checkpoint_seconds: a shorter idle window holds one of
        # some nodes or none, so its rate can be off by more than an alert's cost (even below zero).
        say(
            f"N={n}: the idle window ({args.window:g} s) is shorter than an audit round ({audit_round:g} s): "
            "the figures 'above the idle rate' may be off either way; compare the gross ones"
        )
    print(f"  global alerts, in the order their posts were answered: {'; '.join(each)}")
    if short:
        res.notes.append(f"/metrics exchange_bulletins_stored short of the alerts at {len(short)} nodes: {short[:5]}")
    elif short is not None:
        grew = f"grew by at least {want[GLOBAL]} at all {n} nodes"
        print(f"  /metrics exchange_bulletins_stored{{channel={GLOBAL}}} {grew}")


def report(results: list[Result]) -> None:
    print()
    print(GOALS)
    rows: list[tuple[str, str, str, float]] = [
        ("init_federation, s", "init_s", "{:.1f}", 1.0),
        ("start all nodes, s", "start_s", "{:.1f}", 1.0),
        ("scrape /metrics at all nodes, s", "scrape_all_s", "{:.1f}", 1.0),
        ("first alert of each author, slowest, s", "first_alert_max", "{:.2f}", 1.0),
        ("global alert, full delivery p50, s", "p50", "{:.2f}", 1.0),
        ("global alert, full delivery p99, s", "p99", "{:.2f}", 1.0),
        ("global alert, full delivery p99 with the first alerts, s", "p99_all", "{:.2f}", 1.0),
        ("regional alert, full delivery p50, s", "regional_p50", "{:.2f}", 1.0),
        ("CPU-seconds per alert (above idle)", "cpu_per_alert", "{:.2f}", 1.0),
        ("CPU-seconds per alert (gross: the alert phase's CPU / alerts)", "cpu_gross_per_alert", "{:.2f}", 1.0),
        ("envelope bytes x recipients, global alert, kB", "global_bytes_per_alert", "{:.0f}", 1e-3),
        ("loopback bytes per alert above idle, kB", "lo_per_alert", "{:.0f}", 1e-3),
        ("witnessing requests/min per node, idle", "witness_per_node_min", "{:.1f}", 1.0),
        ("witnessing requests/min per node, with alerts", "witness_busy_per_node_min", "{:.1f}", 1.0),
        ("idle CPU per node, ms/s", "idle_cpu_per_node", "{:.1f}", 1e3),
        ("memory per idle node (worker RSS / nodes), MB", "rss_per_node_mb", "{:.1f}", 1.0),
        ("  of it above a bare worker, MB", "rss_growth_per_node_mb", "{:.1f}", 1.0),
        ("memory per node from /metrics, MB", "prom_rss_per_node_mb", "{:.1f}", 1.0),
        ("a node alone in its process (bare worker + growth), MB", "deployed_node_mb", "{:.0f}", 1.0),
    ]
    head = "| figure | " + " | ".join(f"N={r.n}" for r in results) + " | growth |"
    print(head)
    print("|---" * (len(results) + 2) + "|")
    for label, key, fmt, k in rows:
        vals = [r.figures.get(key, float("nan")) * k for r in results]
        growth = ""
        if len(vals) > 1 and vals[0] and vals[0] == vals[0]:
            growth = " → ".join(f"{v / vals[0]:.1f}x" for v in vals[1:])
        print(f"| {label} | " + " | ".join(fmt.format(v) for v in vals) + f" | {growth} |")
    print("| load (1 min) after idle, after alerts | " + " | ".join(", ".join(r.loads) for r in results) + " | |")
    big = max(results, key=lambda r: r.n)
    f = big.figures
    print(
        f"at N={big.n}: p99 {f.get('p99', float('nan')):.2f} s (goal < 2 s: "
        f"{'met' if f.get('p99', 99) < 2 else 'NOT met'}), with the first alerts "
        f"{f.get('p99_all', float('nan')):.2f} s ({'met' if f.get('p99_all', 99) < 2 else 'NOT met'}); "
        f"memory per idle node {f.get('rss_per_node_mb', 0):.1f} MB "
        f"(goal < 40 MB: {'met' if f.get('rss_per_node_mb', 99) < 40 else 'NOT met'} with {big.n} nodes over "
        f"{f.get('processes', 0):.0f} processes; a node alone in its process, as "
        f"deployed: about {f.get('deployed_node_mb', 0):.0f} MB, "
        f"{'met' if f.get('deployed_node_mb', 99) < 40 else 'NOT met'})"
    )
    if len(results) > 1:
        w = [r.figures.get("witness_busy_per_node_min", 0.0) for r in results]
        print(
            "witnessing per node with alerts: "
            + ", ".join(f"N={r.n}: {v:.0f}/min" for r, v in zip(results, w, strict=True))
            + f" (goal: independent of N: {'met' if max(w) <= 1.5 * min(w) else 'NOT met, it grows with N'})"
        )
    for r in results:
        for note in r.notes:
            print(f"  N={r.n}: {note}")


def code_state() -> str:
    """The repository's commit, and how many files under exchange/ differ from it."""

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--", "exchange").splitlines()
    except OSError:
        return "commit unknown"
    return f"commit {head}" + (f" + {len(dirty)} uncommitted files under exchange/" if dirty else " (exchange/ clean)")


async def main(args: argparse.Namespace) -> None:
    raise_nofile()
    if os.environ.get(NETNS_ENV):
        loopback_up()
        print("in a network namespace of its own: loopback bytes are this federation's traffic alone")
    else:
        print("in the machine's network namespace: loopback bytes include other processes' traffic")
    print(f"exchange from a copy of {REPO / 'exchange'} taken at the start: {code_state()}")
    print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, {load1()}; nodes {args.nodes}, "
        f"{args.per_process} per process; {args.alerts} global alerts from {args.authors} authors, one every "
        f"{args.interval:g} s, + {args.regional} regional; warm-up {args.warmup:g} s, idle window {args.window:g} s"
    )
    print(GOALS, flush=True)
    results = []
    for n in args.nodes:
        try:
            results.append(await run_one(n, args))
        except Exception as exc:  # say what failed and keep the figures of the smaller N
            print(f"N={n} FAILED: {type(exc).__name__}: {exc} ({load1()})", flush=True)
            break
    if results:
        report(results)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--nodes", default="10,50,200", help="federation sizes, comma-separated (default 10,50,200)")
    p.add_argument("--per-process", type=int, default=25, help="nodes per worker process (default 25)")
    p.add_argument("--region-size", type=int, default=10, help="nodes per regional channel (default 10)")
    p.add_argument("--alerts", type=int, default=30, help="alerts posted to the global channel (default 30)")
    p.add_argument("--authors", type=int, default=5, help="nodes that post them in turn (default 5)")
    p.add_argument("--regional", type=int, default=5, help="regional channels that get one alert each (default 5)")
    p.add_argument(
        "--interval", type=float, default=4.0, help="seconds between two posts (default 4: 30 alerts over 2 minutes)"
    )
    p.add_argument("--warmup", type=float, default=65.0, help="seconds after start before the idle window")
    p.add_argument("--window", type=float, default=120.0, help="idle window for witnessing, CPU and memory (s)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for full delivery")
    p.add_argument(
        "--first-alerts",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="post each author's first alert before the measured ones, and print its times apart (default on)",
    )
    p.add_argument("--settle", type=float, default=15.0, help="seconds after the first alerts (default 15)")
    p.add_argument(
        "--min-free-mb", type=float, default=4000, help="stop if the machine's available memory falls under this"
    )
    p.add_argument("--crypto-workers", type=int, default=0, help="each node's crypto_workers (default 0)")
    p.add_argument(
        "--epoch-prefetch",
        type=float,
        default=5.0,
        help="each node's epoch_prefetch_seconds (default 5, the node's; 0: epochs made by the first alert)",
    )
    p.add_argument(
        "--envelope-v2",
        action="store_true",
        help="every node announces envelope_v2 = true, so every channel uses epoch keys (default: v1)",
    )
    p.add_argument(
        "--no-netns", action="store_true", help="stay in the machine's network namespace (loopback bytes: machine-wide)"
    )
    p.add_argument("--worker", nargs=2, metavar=("FOLDER", "IDS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.worker:
        args.nodes = [int(k) for k in args.nodes.split(",")]
    return args


if __name__ == "__main__":
    a = parse_args()
    if not a.worker and not os.environ.get(CODE_ENV):
        relaunch(netns=not a.no_netns)
    if a.worker:
        asyncio.run(worker(Path(a.worker[0]), a.worker[1].split(",")))
    else:
        asyncio.run(main(a))
