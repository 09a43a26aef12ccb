"""Fan-out on wired nodes (issue 13, must-show 1): the author's total CPU and upload per bulletin,
receipts and audit included, with K readers over real mutual TLS; envelope v1 against v2.

Run: .venv/bin/python bench/fanout_wired.py [--readers 2,10,50,200] [--versions v1,v2] [--count 100]
                                            [--warmup 20] [--idle 15] [--concurrency 8] [--per-process 25]

For each K it writes a federation of K nodes in a temporary folder (tests.conftest.write_federation,
SQLite files, rate limits raised and the catch-up interval 3600 s as bench/batch.py does,
crypto_workers = 0, the node's default retry and timeouts) with one channel whose K members all
read and post; the author (the channel's owner, so it also makes the v2 epochs) is one of the K
readers, and pushes to the K - 1 others.
init_federation provisions it. The K - 1 other nodes run in worker processes of --per-process nodes
each (`bench/simulate.py --worker`: one event loop per process); the author runs alone in a process
of its own (`fanout_wired.py --author`), so that its CPU is its process's (/proc, user + system,
threads and children included). Each process freezes what it started, as `exchange node run`
does (exchange.app.keep_what_started). Every node announces `envelope_v2 = true` except the author in the
v1 phase: the owner switches a channel to epoch keys only when all its readers take v2, so one
federation serves both phases; between them only the author restarts, with `envelope_v2 = true`.

Each phase: --warmup posts (which, in v2, make and wrap the epoch), until the author holds every
reader's receipt for them; --idle seconds of nothing (the author's idle CPU and upload rate: audit
rounds, witnessing); then --count posts at the author through NodeService.post in its process
(--concurrency in flight; no client API request), until the author holds every reader's receipt
for them ('received' receipts in its SQLite file, read-only). Per bulletin it prints:

  author CPU   the author process's CPU over the phase / bulletins (gross), and above its idle rate
  upload       bytes the author's process wrote to its TCP sockets (TLS records: envelopes, receipts'
               requests, audit and witnessing; asyncio's socket transport, counted in the process)
               / bulletins, gross; and the stored envelope x (K - 1), the payload part alone
  envelope     the envelope as the author stored it (mean)
  log/b        the entries the author's audit log grew by over the phase / bulletins (its witnessing and
               audit rounds included)
  b/push       bulletins per push: (K - 1) x bulletins / the pushes that first sent them (distinct
               reader and transaction in the author's `bulletin.sent_to` entries; retries are not audited)
  time         from the first post to the last post's return, and to the last receipt home
  readers      the other nodes' CPU over the phase / bulletins (all K - 1, their processes)
  lo           loopback bytes / bulletin (`unshare -n`: this federation's traffic alone, every node)

and the 1-minute load average before and after. --profile DIR saves a py-spy record of the author
over each measured phase (summed by area with bench/cpu_profile.py DIR/*.txt; the CPU figures of a
profiled run are higher); --cprofile DIR a cProfile of it (process CPU time per function and call
counts: py-spy counts a thread that waits for a core as running, which at the load of 200 readers
skews its shares). It prints figures and never asserts on time. With
200 readers the nodes take minutes to start on a loaded 2-core machine (the time is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CODE_ENV = "EXCHANGE_SIMULATE_CODE"  # as bench/simulate.py: its workers import the same copy
NETNS_ENV = "EXCHANGE_SIMULATE_NETNS"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get(CODE_ENV) or str(REPO))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # bench/simulate.py's helpers

CHANNEL = "fan"


def load1() -> float:
    return os.getloadavg()[0]


def system_cpu(pid: int) -> float:
    """The kernel's share of a process's CPU seconds so far (its crypto workers' not included). At
    200 readers it is mostly SQLite's file I/O (bench/README.md, 2026-12-05 morning)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


def alert(i: int) -> dict[str, Any]:
    return {
        "kind": "alert",
        "handling": {"tlp": "AMBER"},
        "title": f"Undeclared lithium batteries, consignment {i}",
        "body": "Declared as toys; X-ray shows cells. Hold and inspect on arrival. " * 4,
        "indicators": {"air_waybills": [f"176-{i:07d}{i % 7}"], "airports": ["NBO", "AMS"], "flights": ["KL566"]},
    }


# -- the author: one node alone in this process --------------------------------------------------


SENT = [0]  # bytes written to TCP sockets by this process (TLS records included)
TLS = [0, 0]  # TLS connections this process began: as a client, as a server


def count_socket_writes() -> None:
    """Count what asyncio's socket transport is asked to write (writelines calls write)."""
    from asyncio import selector_events

    cls: Any = getattr(selector_events, "_SelectorSocketTransport")  # noqa: B009 (private: not in the stubs)
    write = cls.write

    def counted(self: Any, data: Any) -> None:
        SENT[0] += len(data)
        write(self, data)

    cls.write = counted
    from asyncio import sslproto

    init = sslproto.SSLProtocol.__init__

    def begun(
        self: Any,
        loop: Any,
        app_protocol: Any,
        sslcontext: Any,
        waiter: Any,
        server_side: bool = False,
        *a: Any,
        **kw: Any,
    ) -> None:
        TLS[1 if server_side else 0] += 1
        init(self, loop, app_protocol, sslcontext, waiter, server_side, *a, **kw)

    sslproto.SSLProtocol.__init__ = begun  # type: ignore[method-assign]


async def post_many(service: Any, user: Any, numbers: range, concurrency: int) -> list[str]:
    """Post these alerts through NodeService.post, `concurrency` in flight; their ids."""
    from exchange.model import Bulletin

    todo = iter(numbers)
    ids: list[str] = []

    async def poster() -> None:
        for i in todo:
            ids.append(str((await service.post(user, CHANNEL, Bulletin.model_validate(alert(i)))).id))

    await asyncio.gather(*(poster() for _ in range(concurrency)))
    return ids


async def author(folder: Path, node: str) -> None:
    from exchange.app import keep_what_started, start_node
    from exchange.config import NodeConfig
    from exchange.service.users import authenticate

    count_socket_writes()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from simulate import with_extras  # why a send failed, in the log

    for handler in logging.getLogger().handlers:
        handler.addFilter(with_extras)
    cfg = NodeConfig.load(folder / f"{node}.toml", environ={})
    running = await start_node(cfg)
    keep_what_started()  # as `exchange node run` does (the readers' workers too: simulate.py)
    service = running.service
    user = await authenticate(service.store, (cfg.keys_dir / "tokens" / "officer").read_text().strip())
    print(json.dumps({"pid": os.getpid(), "envelope_v2": cfg.envelope_v2}), flush=True)
    try:
        while line := await asyncio.to_thread(sys.stdin.readline):
            ask = json.loads(line)
            if ask["op"] == "post":
                t0 = time.perf_counter()
                numbers = range(ask["start"], ask["start"] + ask["count"])
                try:
                    ids = await post_many(service, user, numbers, ask["concurrency"])
                except Exception as exc:  # the coordinator says so and stops
                    logging.exception("post failed")
                    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
                    continue
                print(json.dumps({"ids": ids, "seconds": time.perf_counter() - t0, "sent": SENT[0]}), flush=True)
            elif ask["op"] == "cprofile":  # deterministic per-function CPU (process time) until "cprofile_stop"
                PROFILE[0] = profile = cProfile.Profile(time.process_time)
                profile.enable()
                print(json.dumps({}), flush=True)
            elif ask["op"] == "cprofile_stop" and PROFILE[0] is not None:
                PROFILE[0].disable()
                PROFILE[0].dump_stats(ask["file"])
                PROFILE[0] = None
                print(json.dumps({}), flush=True)
            else:
                print(json.dumps({"sent": SENT[0], "tls": TLS}), flush=True)
    finally:
        await running.stop()


PROFILE: list[cProfile.Profile | None] = [None]


# -- the coordinator ---------------------------------------------------------------------------


class Author:
    def __init__(self, folder: Path, node: str, log: Path) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--author", str(folder), node]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("a"), text=True, bufsize=1
        )
        self.next = 0

    async def ask(self, **q: Any) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        if q:
            self.proc.stdin.write(json.dumps(q) + "\n")
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if not line:
            raise RuntimeError("the author's process died (see its log)")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the author: {answer['error']}")
        return answer

    async def post(self, count: int, concurrency: int) -> dict[str, Any]:
        got = await self.ask(op="post", start=self.next, count=count, concurrency=concurrency)
        self.next += count
        return got

    async def stop(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin
            self.proc.stdin.close()
        try:
            await asyncio.to_thread(self.proc.wait, 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class AuthorDb:
    def __init__(self, url: str) -> None:
        self.conn = sqlite3.connect(f"file:{url.split(':///', 1)[1]}?mode=ro", uri=True, check_same_thread=False)

    def receipts(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM receipts WHERE status = 'received'").fetchone()[0])

    def audit_size(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM audit_log").fetchone()[0])

    def pushes(self, first_idx: int, ids: list[str]) -> int:
        """The distinct (reader, transaction) pairs the author's `bulletin.sent_to` entries from
        `first_idx` on name for these bulletins: its first pushes (retries are not audited)."""
        wanted, pairs = set(ids), set()
        for (raw,) in self.conn.execute("SELECT entry FROM audit_log WHERE idx >= ?", (first_idx,)):
            entry = json.loads(raw)
            if entry.get("event") == "bulletin.sent_to" and entry.get("bulletin") in wanted:
                pairs |= {(dest, txn) for dest, txn in entry["to"].items()}
        return len(pairs)

    def envelope_mean(self, ids: list[str]) -> float:
        marks = ",".join("?" * len(ids))
        row = self.conn.execute(f"SELECT avg(length(envelope)) FROM bulletins WHERE id IN ({marks})", ids).fetchone()
        return float(row[0] or 0)

    def epochs(self) -> int:
        row = self.conn.execute("SELECT count(*) FROM channel_epochs WHERE channel = ?", (CHANNEL,)).fetchone()
        return int(row[0])


async def until_receipts(db: AuthorDb, want: int, timeout: float) -> float:
    t0 = time.perf_counter()
    while (await asyncio.to_thread(db.receipts)) < want:
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"the author holds {db.receipts()} receipts of {want} after {timeout:.0f} s")
        await asyncio.sleep(0.1)
    return time.perf_counter() - t0


async def phase(
    version: str, k: int, folder: Path, author_id: str, readers: Any, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    import simulate as sim

    toml = folder / f"{author_id}.toml"
    text = toml.read_text().replace("envelope_v2 = true", "").replace("envelope_v2 = false", "")
    toml.write_text(text + f"envelope_v2 = {'true' if version == 'v2' else 'false'}\n")
    from exchange.config import NodeConfig

    cfg = NodeConfig.load(toml, environ={})
    db = AuthorDb(cfg.database_url)
    a = Author(folder, author_id, tmp / "author.log")
    try:
        info = await a.ask()
        pid = int(info["pid"])
        base = await asyncio.to_thread(db.receipts)
        t0 = time.perf_counter()
        await a.post(args.warmup, args.concurrency)
        base += args.warmup * (k - 1)
        await until_receipts(db, base, args.timeout)
        warm = time.perf_counter() - t0
        epochs = db.epochs()
        # idle: the author's own rate with nothing posted (audit rounds, witnessing)
        c0, s0, w0 = sim.tree_cpu([pid]), (await a.ask(op="bytes"))["sent"], time.monotonic()
        await asyncio.sleep(args.idle)
        c1, s1, w1 = sim.tree_cpu([pid]), (await a.ask(op="bytes"))["sent"], time.monotonic()
        idle_cpu, idle_sent = (c1 - c0) / (w1 - w0), (s1 - s0) / (w1 - w0)
        # measured
        load0 = load1()
        counted = await a.ask(op="bytes")
        c0, s0, lo0, w0 = sim.tree_cpu([pid]), counted["sent"], sim.loopback_bytes(), time.monotonic()
        sys0 = system_cpu(pid)
        tls0 = counted["tls"]
        r0, log0 = sim.tree_cpu(readers.pids), await asyncio.to_thread(db.audit_size)
        sampler = None
        if args.profile:
            from cpu_profile import Sampler

            args.profile.mkdir(parents=True, exist_ok=True)
            sampler = Sampler(pid, args.profile / f"author-K{k}-{version}.txt")
            sampler.start()
            await asyncio.sleep(0.5)  # py-spy attaches
        if args.cprofile:
            await a.ask(op="cprofile")
        posted = await a.post(args.count, args.concurrency)
        post_s = time.monotonic() - w0
        await until_receipts(db, base + args.count * (k - 1), args.timeout)
        c1, lo1, w1 = sim.tree_cpu([pid]), sim.loopback_bytes(), time.monotonic()
        sys1 = system_cpu(pid)
        if sampler:
            sampler.stop()
        if args.cprofile:
            args.cprofile.mkdir(parents=True, exist_ok=True)
            await a.ask(op="cprofile_stop", file=str(args.cprofile / f"author-K{k}-{version}.prof"))
        counted = await a.ask(op="bytes")
        s1, tls1 = counted["sent"], counted["tls"]
        r1, log1 = sim.tree_cpu(readers.pids), await asyncio.to_thread(db.audit_size)
        span, m = w1 - w0, args.count
        envelope = db.envelope_mean(posted["ids"])
        pushes = await asyncio.to_thread(db.pushes, log0, posted["ids"])
        return {
            "version": version,
            "k": k,
            "warm_s": warm,
            "epochs": epochs,
            "cpu_ms": (c1 - c0) / m * 1e3,
            "cpu_net_ms": ((c1 - c0) - idle_cpu * span) / m * 1e3,
            "sys_ms": (sys1 - sys0) / m * 1e3,
            "idle_cpu_ms_s": idle_cpu * 1e3,
            "sent_kb": (s1 - s0) / m / 1e3,
            "sent_net_kb": ((s1 - s0) - idle_sent * span) / m / 1e3,
            "envelope_kb": envelope / 1e3,
            "payload_up_kb": envelope * (k - 1) / 1e3,
            "post_s": post_s,
            "receipts_s": span,
            "readers_cpu_ms": (r1 - r0) / m * 1e3,
            "log_entries": (log1 - log0) / m,
            "per_push": m * (k - 1) / max(pushes, 1),
            "lo_kb": (lo1 - lo0) / m / 1e3,
            "tls": f"{tls1[0] - tls0[0]}/{tls1[1] - tls0[1]}",
            "load": f"{load0:.2f}→{load1():.2f}",
        }
    finally:
        await a.stop()


async def run_k(k: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    import importlib

    import simulate as sim

    from exchange.config import NodeConfig
    from exchange.provision import init_federation

    write_federation = importlib.import_module("tests.conftest").write_federation
    ids = [f"f{i:03d}-customs" for i in range(k)]
    options: dict[str, Any] = {
        "crypto_workers": 0,
        "envelope_v2": True,
        "epoch_prefetch_seconds": 5.0,  # the node's default (write_federation's is the tests' 0)
        "retry_base_seconds": 0.5,  # the node's defaults (write_federation's are the tests' quicker ones)
        "retry_max_seconds": 60.0,
        "request_timeout_seconds": 30.0,
        # a node sweeps every member of its channels at start and then every catch-up interval (300 s by
        # default): K - 1 pulls at the author each time, not the fan-out's work (batch.py sets it too)
        "catchup_interval_seconds": 3600.0,
        **{
            f"{r}_per_{w}": sim.HIGH if r == "rate" else int(sim.HIGH)
            for r in ("rate", "burst")
            for w in ("token", "peer", "address")
        },
    }
    spec = {
        "id": CHANNEL,
        "owner": ids[0],
        "agencies": ["customs"],
        "members": {m: ["read", "post"] + (["admin"] if m == ids[0] else []) for m in ids},
    }
    out = []
    with tempfile.TemporaryDirectory(prefix=f"exchange-fanout{k}-") as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "nodes"
        t0 = time.perf_counter()
        for _ in range(5):  # free ports are taken at write time: again if two nodes drew the same
            write_federation(folder, {n: (sim.country(i), "customs") for i, n in enumerate(ids)}, [spec], {}, options)
            if len({NodeConfig.load(folder / f"{n}.toml", environ={}).port for n in ids}) == k:
                break
        await init_federation(folder)
        configs = {n: NodeConfig.load(folder / f"{n}.toml", environ={}) for n in ids[1:]}
        readers = sim.Fed(k - 1, folder, configs, {CHANNEL: ids})
        print(f"K={k}: federation written and provisioned in {time.perf_counter() - t0:.1f} s (load {load1():.2f})")
        try:
            started = await sim.start_workers(readers, args.per_process, tmp)
            print(
                f"K={k}: {sum(readers.nodes_of.values())} reader nodes started in {started:.1f} s in "
                f"{len(readers.procs)} processes (load {load1():.2f})",
                flush=True,
            )
            if sum(readers.nodes_of.values()) < k - 1:
                raise RuntimeError("not every reader started")
            for version in args.versions:
                if sim.mem_available() < args.min_free_mb * sim.MB:
                    raise RuntimeError(f"under {args.min_free_mb:.0f} MB of memory available: stopped")
                r = await phase(version, k, folder, ids[0], readers, args, tmp)
                out.append(r)
                print(row(r), flush=True)
        finally:
            await sim.stop_workers(readers)
            keep = Path(tempfile.gettempdir()) / "exchange-fanout-logs" / f"K{k}"
            keep.mkdir(parents=True, exist_ok=True)
            for log in [*tmp.glob("worker-*.log"), tmp / "author.log"]:
                if log.exists():
                    (keep / log.name).write_bytes(log.read_bytes())
            notes = sim.worker_logs(tmp)
            author_log = tmp / "author.log"
            failed = author_log.read_text(errors="replace").count("send failed") if author_log.exists() else 0
            notes.insert(0, f"{failed} sends failed at the author (its log)")
            print(f"  K={k}: logs in {keep}" + (f"; {'; '.join(notes[:4])}" if notes else "; no warnings"), flush=True)
    return out


HEAD = (
    f"{'K':>4} {'env':>3} | {'CPU ms':>7} {'net':>6} {'idle':>5} {'sys':>5} | {'up KB':>8} {'net':>8} {'env*K-1':>8} | "
    f"{'env KB':>6} {'epochs':>6} {'log/b':>6} {'b/push':>6} | {'post s':>6} {'rcpt s':>6} | "
    f"{'readers':>8} {'lo KB':>8} | {'TLS c/s':>7} | load"
)


def row(r: dict[str, Any]) -> str:
    return (
        f"{r['k']:>4} {r['version']:>3} | {r['cpu_ms']:7.2f} {r['cpu_net_ms']:6.2f} {r['idle_cpu_ms_s']:5.1f} "
        f"{r['sys_ms']:5.2f} | "
        f"{r['sent_kb']:8.1f} {r['sent_net_kb']:8.1f} {r['payload_up_kb']:8.1f} | {r['envelope_kb']:6.2f} "
        f"{r['epochs']:>6} {r['log_entries']:6.1f} {r['per_push']:6.1f} | {r['post_s']:6.1f} {r['receipts_s']:6.1f} | "
        f"{r['readers_cpu_ms']:8.1f} {r['lo_kb']:8.1f} | {r['tls']:>7} | {r['load']}"
    )


async def main(args: argparse.Namespace) -> None:
    import simulate as sim

    sim.raise_nofile()
    if os.environ.get(NETNS_ENV):
        sim.loopback_up()
    print(
        f"exchange from a copy taken at the start: {sim.code_state()}; "
        + ("own network namespace" if os.environ.get(NETNS_ENV) else "machine's network namespace (lo: machine-wide)")
    )
    print(
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {os.cpu_count()} CPUs, load {load1():.2f}; readers "
        f"{args.readers}, {args.count} posts per phase ({args.concurrency} in flight) after {args.warmup} warm-up "
        f"posts and {args.idle:g} s idle; {args.per_process} reader nodes per process"
    )
    print("goal at 200 readers (issue 13): envelope build < 3 ms, envelope < 6 KB, author CPU < 10 ms per bulletin")
    print(
        "per bulletin: author CPU gross / above its idle rate (ms), its idle rate (ms/s), of the gross its kernel "
        "time (ms); author's socket writes "
        "gross / above idle (KB), envelope x (K-1) (KB); stored envelope (KB); epochs made; author's audit entries; "
        "bulletins per push; "
        "posting and to-last-receipt time (s, for all posts); readers' CPU (ms); loopback (KB); TLS connections "
        "the author began during the phase, as a client / as a server; 1-min load before→after",
        flush=True,
    )
    print(HEAD)
    print("-" * len(HEAD), flush=True)
    results = []
    for k in args.readers:
        try:
            results += await run_k(k, args)
        except Exception as exc:  # the figures of the smaller K stand
            print(f"K={k} FAILED: {type(exc).__name__}: {exc} (load {load1():.2f})", flush=True)
    print()
    print(HEAD)
    for r in results:
        print(row(r))


def relaunch() -> None:
    """As bench/simulate.py: run again on a copy of exchange/ taken now, in a network namespace of its own."""
    import simulate as sim

    sim.relaunch(netns=True, script=Path(__file__).resolve())


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--readers", default="2,10,50,200", help="channel sizes K (the author is one of the K)")
    p.add_argument("--versions", default="v1,v2")
    p.add_argument("--count", type=int, default=100, help="posts measured per phase")
    p.add_argument("--warmup", type=int, default=20, help="posts before (v2: they make the epoch)")
    p.add_argument("--idle", type=float, default=15.0, help="seconds of the author's idle rate")
    p.add_argument("--concurrency", type=int, default=8, help="posts in flight at the author")
    p.add_argument("--per-process", type=int, default=25, help="reader nodes per worker process")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the receipts")
    p.add_argument("--min-free-mb", type=float, default=4000)
    p.add_argument(
        "--profile",
        type=Path,
        help="py-spy the author over each measured phase into this folder (bench/cpu_profile.py)",
    )
    p.add_argument(
        "--cprofile",
        type=Path,
        help="cProfile the author (process CPU time) over each measured phase into DIR/author-K{k}-{v}.prof"
        " (read with pstats: per-function calls and CPU, slower than py-spy's sampling but not skewed by"
        " time spent waiting for a core)",
    )
    p.add_argument("--author", nargs=2, metavar=("FOLDER", "ID"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.author:
        args.readers = [int(k) for k in args.readers.split(",")]
        args.versions = args.versions.split(",")
    return args


if __name__ == "__main__":
    a = parse_args()
    if a.author:
        asyncio.run(author(Path(a.author[0]), a.author[1]))
    elif not os.environ.get(CODE_ENV):
        relaunch()
    else:
        asyncio.run(main(a))
