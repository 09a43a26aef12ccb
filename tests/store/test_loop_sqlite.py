"""SQLite statements that cannot wait run on the event loop, the others in aiosqlite's thread
(exchange.store.loop_sqlite): reads and the statements of a transaction holding the write lock
take no thread hand-off; taking the lock and committing a write do, so a writer that waits for
another process's lock never stalls the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.store import Store
from exchange.store.loop_sqlite import LoopConnection, _deferred_begin, connect
from exchange.store.tables import audit_log
from exchange.store.writer import AuditBuffer


@pytest.fixture
def hand_offs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The calls LoopConnection hands to aiosqlite's thread, by name."""
    seen: list[str] = []
    original = LoopConnection._in_thread

    async def counted(self: LoopConnection, call: Any, *args: Any) -> Any:
        seen.append(args[0].split()[0].upper() if args and isinstance(args[0], str) else call.__name__)
        return await original(self, call, *args)

    monkeypatch.setattr(LoopConnection, "_in_thread", counted)
    yield seen


async def _store(tmp_path: Path) -> Store:
    return await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'node.db'}")  # an empty file is migrated


async def test_reads_take_no_hand_off_and_a_group_commit_takes_two(tmp_path: Path, hand_offs: list[str]) -> None:
    store = await _store(tmp_path)
    try:
        async with store.read() as conn:  # the connection is opened (its pragmas run in the thread)
            await conn.scalar(sa.select(1))
        hand_offs.clear()
        async with store.read() as conn:
            for _ in range(20):
                assert await conn.scalar(sa.select(sa.func.count()).select_from(audit_log)) == 0
        assert hand_offs == []

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            for n in range(5):  # reads and writes inside the transaction that holds the lock
                await conn.scalar(sa.select(sa.func.count()).select_from(audit_log))
                audit.add({"event": "test", "n": n})  # type: ignore[arg-type]  # a made-up kind: the store takes any
                await audit.flush(conn)

        await store.write(job)
        # The lock is taken in the thread (it may wait) and the commit runs there (it syncs).
        assert hand_offs == ["BEGIN", "commit"]
        async with store.read() as conn:
            assert await conn.scalar(sa.select(sa.func.count()).select_from(audit_log)) == 5
    finally:
        await store.close()


async def test_a_writer_waiting_for_another_process_lock_does_not_stall_the_loop(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        async with store.read() as conn:
            await conn.scalar(sa.select(1))
        # An administrator's command in another process holds the write lock for 0.6 s.
        holder = sqlite3.connect(tmp_path / "node.db", isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.6, holder.execute, args=("COMMIT",))
        release.start()
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        ticker = asyncio.create_task(tick())
        # Waits about 0.6 s for the lock, in the thread; a made-up kind: the store takes any.
        await store.audit({"event": "test"})  # type: ignore[arg-type]
        ticker.cancel()
        release.join()
        holder.close()
        assert ticks >= 10, f"the event loop ran only {ticks} times while the write waited"
        async with store.read() as conn:
            assert await conn.scalar(sa.select(sa.func.count()).select_from(audit_log)) == 1
    finally:
        await store.close()


async def test_a_failed_write_is_rolled_back_and_the_next_one_commits(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:

        async def bad(conn: AsyncConnection, audit: AuditBuffer) -> None:
            audit.add({"event": "test"})  # type: ignore[arg-type]  # a made-up kind: the store takes any
            await audit.flush(conn)
            await conn.execute(sa.text("INSERT INTO no_such_table VALUES (1)"))

        with pytest.raises(sa.exc.OperationalError):
            await store.write(bad)
        await store.audit({"event": "after"})  # type: ignore[arg-type]  # a made-up kind: the store takes any
        async with store.read() as conn:
            entries = (await conn.execute(sa.select(audit_log.c.entry))).scalars().all()
        assert len(entries) == 1 and "after" in (entries[0] if isinstance(entries[0], str) else entries[0].decode())
    finally:
        await store.close()


def test_only_begin_immediate_or_exclusive_takes_the_lock_at_once() -> None:
    assert _deferred_begin("BEGIN") and _deferred_begin("begin deferred transaction")
    assert not _deferred_begin("BEGIN IMMEDIATE") and not _deferred_begin("BEGIN EXCLUSIVE")
    assert not _deferred_begin("INSERT INTO t VALUES (1)")


def test_a_database_that_cannot_be_opened_leaves_no_thread_behind(tmp_path: Path) -> None:
    """A failed connect left aiosqlite's thread to process its stop after the loop had closed, and
    about one CLI run in six printed that thread's traceback after the command's one-line error
    (omnilib/aiosqlite#241). The thread is now waited for before the error goes on."""

    def workers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.endswith("(_connection_worker_thread)") and t.is_alive()}

    before = workers()  # an earlier test's, which may end meanwhile: only new ones count
    missing = tmp_path / "no-such-folder" / "node.db"
    for _ in range(5):
        with pytest.raises(sqlite3.OperationalError):
            asyncio.run(connect(str(missing)))
        assert not workers() - before
