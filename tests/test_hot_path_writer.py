"""The group-commit writer's row buffer (`Store.insert`, `AuditBuffer.insert`), on SQLite and PostgreSQL.

Jobs that only add rows share one executemany per table in a group commit; a job that reads sees
every row added before it in the same transaction; and a job whose rows break a constraint fails
alone, with nothing of it stored, while the others of its group commit are stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit import events as ev
from exchange.store import AuditBuffer, Store, outbox

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def store(database: Callable[[str], Awaitable[str]], tmp_path: Path) -> AsyncIterator[Store]:
    url = await database("hot_path") or f"sqlite+aiosqlite:///{tmp_path / 'node.db'}"
    opened = await Store.open(url)
    try:
        yield opened
    finally:
        await opened.close()


def queued(ref: str) -> dict[str, Any]:
    return {"dest": "ke-customs", "kind": "envelope", "ref": ref, "state": "queued"}


def adds(ref: str) -> Callable[[AuditBuffer], str]:
    """A job that reads nothing: one outbox row and one audit entry."""

    def rows(audit: AuditBuffer) -> str:
        audit.insert(outbox, [queued(ref)])
        audit.add(
            ev.BulletinSent(event=ev.BULLETIN_SENT, at="2026-11-30T00:00:00.000Z", bulletin=ref, to="ke", txn="t")
        )
        return ref

    return rows


async def refs(store: Store) -> list[str]:
    async with store.read() as conn:
        return list(await conn.scalars(sa.select(outbox.c.ref).order_by(outbox.c.n)))


async def statements_of(store: Store, work: Callable[[], Awaitable[Any]]) -> list[tuple[str, int]]:
    """(first word of each INSERT statement, rows in it) that `work` makes the writer send."""
    sent: list[tuple[str, int]] = []

    def before(_conn: Any, _cursor: Any, statement: str, params: Any, _ctx: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("INSERT"):
            table = statement.split()[2].strip('"')
            sent.append((table, len(params) if many else 1))

    sa.event.listen(store.engine.sync_engine, "before_cursor_execute", before)
    try:
        await work()
    finally:
        sa.event.remove(store.engine.sync_engine, "before_cursor_execute", before)
    return sent


async def test_blind_jobs_of_a_group_commit_share_one_executemany_per_table(store: Store) -> None:
    names = [f"b{i:02d}" for i in range(20)]

    async def work() -> None:
        assert await asyncio.gather(*(store.insert(adds(n)) for n in names)) == names

    sent = await statements_of(store, work)
    assert sorted(await refs(store)) == names
    assert store.audit_size == 20
    # Queued together, the twenty jobs are one group commit: one INSERT for the outbox, one for the log.
    assert sent == [("outbox", 20), ("audit_log", 20)]


async def test_a_group_commits_jobs_add_their_rows_in_the_order_they_came(store: Store) -> None:
    seen: list[list[str]] = []

    async def reads(conn: AsyncConnection, audit: AuditBuffer) -> None:
        seen.append(list(await conn.scalars(sa.select(outbox.c.ref).order_by(outbox.c.ref))))
        audit.insert(outbox, [queued("after-read")])

    await asyncio.gather(store.insert(adds("x1")), store.write(reads), store.insert(adds("x2")))
    # One group commit, in the order the jobs came: the reading job sees the row added before it,
    # and the rows are numbered in that order (a stream's posts, keyed or not, as queued for readers).
    assert seen == [["x1"]]
    assert await refs(store) == ["x1", "after-read", "x2"]


async def test_a_job_whose_rows_break_a_constraint_fails_alone(store: Store) -> None:
    await store.insert(adds("taken"))
    size = store.audit_size
    results = await asyncio.gather(
        store.insert(adds("ok-1")), store.insert(adds("taken")), store.insert(adds("ok-2")), return_exceptions=True
    )
    assert results[0] == "ok-1" and results[2] == "ok-2"
    assert isinstance(results[1], sa.exc.IntegrityError)
    assert sorted(await refs(store)) == ["ok-1", "ok-2", "taken"]
    assert store.audit_size == size + 2  # nothing of the refused job, its audit entry included


async def test_a_failing_blind_job_stores_nothing_and_raises(store: Store) -> None:
    def broken(audit: AuditBuffer) -> None:
        audit.insert(outbox, [queued("half")])
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        await store.insert(broken)
    assert await refs(store) == []
    assert store.audit_size == 0
