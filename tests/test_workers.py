"""Must-show (issue 14, workers): one node as several worker processes over one PostgreSQL database.

Real processes: `exchange node run --workers N` (a supervisor and N workers sharing the port with
SO_REUSEPORT) and a partner node, over mutual TLS. Concurrent posts through many connections
must give gap-free sequence numbers and audit indices in commit order, an audit log that
`exchange audit verify` accepts, every bulletin delivered once with its receipt home, and no
failed request. SQLite is one process, and says so.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests import workers as w
from tests.conftest import write_federation

TOTAL = 240
KILLS = 3
STREAM = 600


async def _is_some(value: Awaitable[object]) -> bool:
    return await value is not None


async def pg_urls(database: Callable[[str], Awaitable[str]]) -> dict[str, str]:
    urls = {n: await database(n) for n in w.NODES}
    assert all(urls.values()), "workers share one PostgreSQL database"
    return urls


# Workers share one PostgreSQL database (SQLite is one process: the last test), so these run on
# PostgreSQL only, rather than skipping on SQLite.
POSTGRES_ONLY = pytest.mark.parametrize(
    "database", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@pytest.mark.slow
@POSTGRES_ONLY
async def test_four_workers_give_gap_free_commit_ordered_numbers(
    tmp_path: Path, database: Callable[[str], Awaitable[str]]
) -> None:
    cluster = await w.Cluster.provision(tmp_path, await pg_urls(database), workers=4)
    try:
        await cluster.up()
        assert len(cluster.worker_pids()) == 4
        posted = await w.post_many(cluster, TOTAL, concurrency=24)
        assert not posted.failed, posted.failed[:5]
        assert posted.ok == TOTAL and sorted(posted.seqs) == list(range(1, TOTAL + 1))
        await w.until(lambda: w.delivered(cluster, TOTAL), 120, "not everything was delivered")
        code, out, err = await w.run_cli("audit", "verify", "--node", str(cluster.path(w.AUTHOR)))
        assert code == 0 and "OK" in out, (out, err)
        checked = await w.check(cluster)
    finally:
        cluster.stop()
    # Sequence numbers: 1..TOTAL, and in commit order (rows are numbered under the log's lock).
    assert checked.seqs == list(range(1, TOTAL + 1))
    # Audit indices: gap-free, and the posts' entries in the order of their sequence numbers.
    assert checked.indices == list(range(len(checked.indices)))
    assert checked.posted_seqs == list(range(1, TOTAL + 1))
    assert checked.started >= 4  # each worker started on the same log
    assert checked.receipts == TOTAL and checked.reader_holds == TOTAL
    assert len(checked.holders) == 1  # one worker sent to the partner (its lease)


@pytest.mark.slow
@POSTGRES_ONLY
async def test_a_surviving_worker_takes_over_a_killed_workers_partner(
    tmp_path: Path, database: Callable[[str], Awaitable[str]]
) -> None:
    """SIGKILL the worker that holds the partner's lease, repeatedly, during a stream: every
    acknowledged bulletin is delivered exactly once and every receipt comes home, and the lease
    is then held by a worker that is alive (the supervisor restarts the killed ones)."""
    cluster = await w.Cluster.provision(tmp_path, await pg_urls(database), workers=3)
    kills: list[int] = []

    async def holder() -> int | None:
        """The worker that holds the partner's lease, if it is alive and was not killed."""
        holders = (await w.check(cluster)).holders
        pid = int(holders[0].rsplit(":", 1)[1]) if holders else None
        return pid if pid in cluster.worker_pids() and pid not in kills else None

    async def chaos() -> None:
        for _ in range(KILLS):
            await asyncio.sleep(1.0)
            await w.until(lambda: _is_some(holder()), 60, "no surviving worker took the partner over")
            pid = await holder()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            kills.append(pid)

    try:
        await cluster.up()
        stream, _ = await asyncio.gather(w.post_many(cluster, STREAM, concurrency=4, pace=0.05), chaos())
        await w.until(lambda: w.delivered(cluster, len(stream.ids)), 180, "not everything acknowledged was delivered")
        committed = len((await w.check(cluster)).seqs)
        await w.until(lambda: w.delivered(cluster, committed), 60, "not every committed bulletin was delivered")
        # The last killed holder may have sent everything before it died: its lease then names it
        # until it expires, when a surviving worker's next look (a poll) takes it over.
        await w.until(lambda: _is_some(holder()), 60, "no surviving worker took the partner over")
        checked = await w.check(cluster)
        alive = cluster.worker_pids()
    finally:
        cluster.stop()
    print(f"\n{stream.ok} acknowledged, {len(stream.failed)} lost with their worker; holders killed: {kills}")
    assert len(kills) == KILLS
    # A killed worker's requests in flight fail with it (or commit unacknowledged); the rest hold.
    assert stream.ok + len(stream.failed) == STREAM and stream.ok > 0
    assert stream.ids <= checked.reader_ids  # every acknowledged bulletin delivered ...
    assert checked.reader_holds == len(checked.seqs)  # ... exactly once, as everything committed
    assert checked.receipts == len(checked.seqs)  # every receipt home
    assert checked.seqs == list(range(1, len(checked.seqs) + 1))
    assert checked.indices == list(range(len(checked.indices)))
    last = int(checked.holders[0].rsplit(":", 1)[1])
    assert last not in kills and last in alive


def test_sqlite_refuses_more_than_one_worker(tmp_path: Path) -> None:
    write_federation(tmp_path, w.NODES, [w.CHANNEL], {})
    proc = subprocess.run(
        [sys.executable, "-m", "exchange.cli", "node", "run", str(tmp_path / f"{w.AUTHOR}.toml"), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "SQLite serves one process" in lines[0], proc.stderr
