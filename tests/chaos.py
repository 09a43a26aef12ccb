"""A federation of real node processes under faults: the harness behind tests/test_fault.py and bench/fault.py.

Three nodes run as separate `exchange node run` processes. Bulletins are posted at a steady
rate at the first; the second is killed with SIGKILL at random moments and restarted; the third
is stopped for a while and restarted. Afterwards every node's database is counted.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from exchange.config import NodeConfig
from exchange.node.tls import client_context
from exchange.provision import init_federation
from exchange.store import bulletins, receipts
from tests.conftest import write_federation

NODES = {"nl-customs": ("NL", "customs"), "ke-customs": ("KE", "customs"), "de-customs": ("DE", "customs")}
POSTER, VICTIM, SLEEPER = "nl-customs", "ke-customs", "de-customs"
CHANNEL = {
    "id": "c2c",
    "owner": POSTER,
    "agencies": ["customs"],
    "members": {POSTER: ["read", "post", "admin"], VICTIM: ["read", "post"], SLEEPER: ["read", "post"]},
}


@dataclass
class Report:
    posted: int = 0
    kills: int = 0
    sleeps: int = 0
    elapsed: float = 0.0
    drain: float = 0.0
    held: dict[str, int] = field(default_factory=dict)
    distinct: dict[str, int] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)
    receipts: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            f"posted {self.posted} at {POSTER} in {self.elapsed:.1f}s; {VICTIM} SIGKILLed {self.kills}x, "
            f"{SLEEPER} stopped {self.sleeps}x; everything delivered {self.drain:.1f}s after the last post"
        ]
        for node in NODES:
            out.append(
                f"  {node:<11} holds {self.held[node]:>6} ({self.distinct[node]} distinct, "
                f"{self.missing[node]} missing)"
                + (f"; receipts at {POSTER}: {self.receipts[node]}" if node != POSTER else "")
            )
        return out

    @property
    def ok(self) -> bool:
        return all(self.held[n] == self.distinct[n] == self.posted and self.missing[n] == 0 for n in NODES) and all(
            self.receipts[n] == self.posted for n in NODES if n != POSTER
        )


class NodeProcess:
    def __init__(self, config_path: Path, log: Path) -> None:
        self.config_path = config_path
        self.config = NodeConfig.load(config_path, environ={})
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "exchange.cli", "node", "run", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self.proc = None

    async def ready(self, timeout: float = 30) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                _, writer = await asyncio.open_connection(self.config.host, self.config.port, ssl=ctx)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise AssertionError(f"{self.config.id} did not start; see {self.log}")


async def provision(folder: Path, db_urls: dict[str, str]) -> dict[str, NodeProcess]:
    nodes_dir = folder / "nodes"
    write_federation(
        nodes_dir,
        NODES,
        [CHANNEL],
        db_urls,
        {
            "retry_base_seconds": 0.1,
            "retry_max_seconds": 2.0,
            "request_timeout_seconds": 10,
            "catchup_interval_seconds": 5,
        },
    )
    await init_federation(nodes_dir)
    return {n: NodeProcess(nodes_dir / f"{n}.toml", folder / f"{n}.log") for n in NODES}


async def count(url: str, poster_ids: set[str] | None = None) -> tuple[int, int, set[str], dict[str, int]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            ids = list((await conn.execute(sa.select(bulletins.c.id))).scalars())
            rows = await conn.execute(
                sa.select(receipts.c.node, sa.func.count())
                .where(receipts.c.status == "received")
                .group_by(receipts.c.node)
            )
            got = {r[0]: int(r[1]) for r in rows}
    finally:
        await engine.dispose()
    return len(ids), len(set(ids)), set(ids), got


async def run(
    folder: Path,
    *,
    total: int,
    rate: float,
    kills: int,
    db_urls: dict[str, str] | None = None,
    seed: int = 7,
    say: Callable[[str], None] = print,
) -> Report:
    """Post `total` bulletins at `rate`/s while killing and stopping nodes; then count everything."""
    rng = random.Random(seed)
    procs = await provision(folder, db_urls or {})
    report = Report()
    try:
        return await _run(procs, report, rng, total=total, rate=rate, kills=kills, say=say)
    finally:
        for p in procs.values():
            if p.proc is not None:
                p.kill(signal.SIGKILL)


async def _run(
    procs: dict[str, NodeProcess],
    report: Report,
    rng: random.Random,
    *,
    total: int,
    rate: float,
    kills: int,
    say: Callable[[str], None],
) -> Report:
    for p in procs.values():
        p.start()
    for p in procs.values():
        await p.ready()
    poster = procs[POSTER]
    token = (poster.config.keys_dir / "tokens" / "officer").read_text().strip()
    ctx = client_context((poster.config.keys_dir / "tls.crt").read_text())
    duration = total / rate
    kill_times = sorted(rng.uniform(0.05, 0.9) * duration for _ in range(kills))
    sleep_window = (0.3 * duration, 0.6 * duration)
    started = time.monotonic()

    async def chaos() -> None:
        victim, sleeper = procs[VICTIM], procs[SLEEPER]
        asleep = False
        for at in kill_times:
            while time.monotonic() - started < at:
                now = time.monotonic() - started
                if not asleep and sleep_window[0] <= now < sleep_window[1]:
                    sleeper.kill(signal.SIGTERM)
                    asleep, report.sleeps = True, report.sleeps + 1
                if asleep and now >= sleep_window[1]:
                    sleeper.start()
                    asleep = False
                await asyncio.sleep(0.02)
            victim.kill(signal.SIGKILL)
            report.kills += 1
            await asyncio.sleep(rng.uniform(0.1, 1.0))
            victim.start()
            await victim.ready()
        while asleep and time.monotonic() - started < sleep_window[1]:
            await asyncio.sleep(0.02)
        if asleep:
            sleeper.start()
        elif report.sleeps == 0:
            sleeper.kill(signal.SIGTERM)
            report.sleeps += 1
            await asyncio.sleep(0.5)
            sleeper.start()

    async def post_all(session: aiohttp.ClientSession) -> None:
        url = f"{poster.config.endpoint}/api/v1/channels/c2c/bulletins"
        for i in range(total):
            due = started + i / rate
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
            body = {
                "kind": "seizure-report",
                "title": f"seizure {i}",
                "body": "x" * 200,
                "indicators": {"air_waybills": [f"176-{i % 10**7:07d}{i % 10**7 % 7}"]},
            }
            async with session.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 201, await resp.text()
            report.posted += 1
            if i and i % max(1, total // 10) == 0:
                say(f"  posted {i}/{total}")

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        await asyncio.gather(post_all(session), chaos())
    report.elapsed = time.monotonic() - started
    last_post = time.monotonic()
    for p in procs.values():
        if p.proc is None:
            p.start()
    urls = {n: p.config.database_url for n, p in procs.items()}

    async def everything_delivered() -> bool:
        _, _, posted, got = await count(urls[POSTER])
        if len(posted) < total or any(got.get(n, 0) < total for n in NODES if n != POSTER):
            return False
        held = [(await count(urls[n]))[0] for n in NODES if n != POSTER]
        return all(h >= total for h in held)

    await _until(everything_delivered, timeout=max(120, duration * 3))
    report.drain = time.monotonic() - last_post
    for p in procs.values():
        p.kill(signal.SIGTERM)
    _, _, posted_ids, got = await count(urls[POSTER])
    report.receipts = {n: got.get(n, 0) for n in NODES if n != POSTER}
    for n in NODES:
        held, distinct, ids, _ = await count(urls[n])
        report.held[n], report.distinct[n], report.missing[n] = held, distinct, len(posted_ids - ids)
    return report


async def _until(check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("the federation did not converge in time")
        await asyncio.sleep(0.25)


if __name__ == "__main__":  # pragma: no cover - run through bench/fault.py
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
