"""A node of several worker processes over one PostgreSQL database, and a partner to deliver to:
the harness behind tests/test_workers.py and bench/workers.py.

The author node runs as `exchange node run --workers N` (a supervisor and N processes sharing the
port); the reader node as one `exchange node run`. Bulletins are posted through many connections
at once, so the kernel spreads them over the workers; afterwards the author's database is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from exchange.audit.events import BULLETIN_POSTED, NODE_STARTED
from exchange.config import NodeConfig
from exchange.node.tls import client_context
from exchange.provision import init_federation
from exchange.store import audit_log, bulletins, receipts
from exchange.store.tables import outbox_leases
from tests.conftest import write_federation

AUTHOR, READER = "nl-customs", "ke-customs"
NODES = {AUTHOR: ("NL", "customs"), READER: ("KE", "customs")}
CHANNEL = {
    "id": "c2c",
    "owner": AUTHOR,
    "agencies": ["customs"],
    "members": {AUTHOR: ["read", "post", "admin"], READER: ["read", "post"]},
}


def listening(port: int) -> int:
    """How many sockets listen on `port` (each worker has its own, with SO_REUSEPORT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def children(pid: int) -> list[int]:
    """The processes `pid` started (the supervisor's workers)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@dataclass
class Cluster:
    """The two nodes' files, processes and logs."""

    folder: Path
    workers: int
    reader_workers: int = 1
    configs: dict[str, NodeConfig] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @classmethod
    async def provision(
        cls, folder: Path, db_urls: dict[str, str], workers: int, *, v2: bool = False, reader_workers: int = 1
    ) -> Cluster:
        """The two nodes' files; `v2`: both take envelope v2 (tests/test_workers_v2.py)."""
        nodes_dir = folder / "nodes"
        write_federation(
            nodes_dir,
            NODES,
            [CHANNEL],
            db_urls,
            {"retry_base_seconds": 0.1, "retry_max_seconds": 1.0, "request_timeout_seconds": 10, "envelope_v2": v2},
        )
        await init_federation(nodes_dir)
        cluster = cls(folder, workers, reader_workers)
        for node in NODES:
            cluster.configs[node] = NodeConfig.load(nodes_dir / f"{node}.toml", environ={})
        return cluster

    def path(self, node: str) -> Path:
        return self.folder / "nodes" / f"{node}.toml"

    def start(self, node: str, workers: int = 1) -> None:
        args = ["node", "run", str(self.path(node))] + (["--workers", str(workers)] if workers > 1 else [])
        with (self.folder / f"{node}.log").open("ab") as out:
            self.procs[node] = subprocess.Popen(
                [sys.executable, "-m", "exchange.cli", *args], stdout=out, stderr=subprocess.STDOUT
            )

    async def up(self, timeout: float = 90, *, author_first: bool = False) -> None:
        """Start both nodes and wait until every worker listens; `author_first`: every author
        worker listens before the reader starts (so that none has loaded an epoch the owner made
        when the reader, starting, asked it for epochs: tests/test_workers_v2.py)."""
        want = {AUTHOR: self.workers, READER: self.reader_workers}
        deadline = time.monotonic() + timeout

        async def listens(node: str) -> None:
            while listening(self.configs[node].port) < want[node]:
                proc = self.procs[node]
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.folder / f"{node}.log").read_text()
                    raise AssertionError(f"{node} did not start {want[node]} worker(s):\n{log[-3000:]}")
                await asyncio.sleep(0.1)

        for node in (AUTHOR, READER) if author_first else (READER, AUTHOR):
            self.start(node, want[node])
            if author_first:
                await listens(node)
        for node in want:
            await listens(node)

    def worker_pids(self, node: str = AUTHOR) -> list[int]:
        return children(self.procs[node].pid)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill_all(self) -> None:
        for node, proc in self.procs.items():
            pids = self.worker_pids(node)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def token(self, node: str = AUTHOR) -> str:
        return (self.configs[node].keys_dir / "tokens" / "officer").read_text().strip()

    def client(self, node: str = AUTHOR, connections: int = 16, fresh: bool = True) -> aiohttp.ClientSession:
        """A session whose requests spread over the node's workers (the kernel picks a worker per
        connection): with `fresh`, each request on a new connection, else `connections` kept open."""
        cfg = self.configs[node]
        ctx = client_context((cfg.keys_dir / "tls.crt").read_text())
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=connections, force_close=fresh))


def bulletin(i: int) -> dict[str, Any]:
    return {
        "kind": "seizure-report",
        "title": f"seizure {i}",
        "body": "x" * 200,
        "indicators": {"air_waybills": [f"176-{i % 10**7:07d}{i % 10**7 % 7}"]},
    }


@dataclass
class Posted:
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    elapsed: float = 0.0


async def post_many(
    cluster: Cluster, total: int, concurrency: int = 16, pace: float = 0.0, fresh: bool = True, first: int = 0
) -> Posted:
    """Post `total` bulletins through `concurrency` connections at once (each poster waiting
    `pace` seconds between posts); what came back."""
    url = f"{cluster.configs[AUTHOR].endpoint}/api/v1/channels/c2c/bulletins"
    headers = {"Authorization": f"Bearer {cluster.token()}"}
    out = Posted()
    queue = iter(range(first, first + total))
    started = time.monotonic()

    async def poster(session: aiohttp.ClientSession) -> None:
        for i in queue:
            try:
                async with session.post(url, json=bulletin(i), headers=headers) as resp:
                    text = await resp.text()
                    if resp.status == 201:
                        answer = json.loads(text)
                        out.ok += 1
                        out.seqs.append(int(answer["seq"]))
                        out.ids.add(answer["id"])
                    else:
                        out.failed.append(f"{resp.status}: {text[:200]}")
            except (aiohttp.ClientError, OSError) as exc:
                out.failed.append(f"{type(exc).__name__}: {exc}")
            if pace:
                await asyncio.sleep(pace)

    async with cluster.client(connections=concurrency, fresh=fresh) as session:
        await asyncio.gather(*(poster(session) for _ in range(concurrency)))
    out.elapsed = time.monotonic() - started
    return out


@dataclass
class Checked:
    """The author's database after the posts."""

    seqs: list[int]  # its own bulletins' sequence numbers in c2c, in commit (row) order
    indices: list[int]  # audit indices, in order
    posted_seqs: list[int]  # the seq of each bulletin.posted entry, in index order
    started: int  # node.started entries: one per worker start
    receipts: int  # receipts home from the reader
    reader_holds: int  # bulletins the reader stored
    reader_ids: set[str]  # which
    holders: list[str]  # the lease holders of the outbox


async def check(cluster: Cluster) -> Checked:
    engine = create_async_engine(cluster.configs[AUTHOR].database_url)
    reader = create_async_engine(cluster.configs[READER].database_url)
    try:
        async with engine.connect() as conn:
            seqs = list(
                await conn.scalars(
                    sa.select(bulletins.c.seq)
                    .where(bulletins.c.author == AUTHOR, bulletins.c.channel == "c2c")
                    .order_by(bulletins.c.n)
                )
            )
            rows = (await conn.execute(sa.select(audit_log.c.idx, audit_log.c.entry).order_by(audit_log.c.idx))).all()
            got = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(receipts)
                .where(receipts.c.node == READER, receipts.c.status == "received")
            )
            holders = list(await conn.scalars(sa.select(outbox_leases.c.holder)))
        async with reader.connect() as conn:
            reader_ids = list(await conn.scalars(sa.select(bulletins.c.id)))
    finally:
        await engine.dispose()
        await reader.dispose()
    entries = [json.loads(entry) for _, entry in rows]
    return Checked(
        seqs=seqs,
        indices=[int(idx) for idx, _ in rows],
        posted_seqs=[e["seq"] for e in entries if e["event"] == BULLETIN_POSTED],
        started=sum(1 for e in entries if e["event"] == NODE_STARTED),
        receipts=int(got or 0),
        reader_holds=len(reader_ids),
        reader_ids=set(reader_ids),
        holders=holders,
    )


async def until(what: Callable[[], Awaitable[bool]], timeout: float, why: str) -> None:
    deadline = time.monotonic() + timeout
    while not await what():
        if time.monotonic() > deadline:
            raise AssertionError(why)
        await asyncio.sleep(0.25)


async def delivered(cluster: Cluster, total: int) -> bool:
    c = await check(cluster)
    return c.receipts >= total and c.reader_holds >= total


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exchange.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    return int(proc.returncode or 0), out.decode(), err.decode()
