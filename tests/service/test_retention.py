"""The outbox's retention: finished rows (delivered, rejected, cancelled) are deleted a retention
period after the loop first finds them finished; queued rows are never touched."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.clock import utc_now
from exchange.service import retention
from exchange.service.node import NodeService
from exchange.service.retention import Pruned, Retention
from exchange.store import AuditBuffer, outbox
from tests.conftest import eventually
from tests.service.lone_node import lone_node

WEEK = dt.timedelta(days=7)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[NodeService]:
    async for svc in lone_node(tmp_path / "nodes"):
        yield svc


async def queue(service: NodeService, states: dict[str, str]) -> None:
    """Outbox rows to partner `ke-customs`, ref -> state."""

    async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
        rows = [{"dest": "ke-customs", "kind": "envelope", "ref": ref, "state": s} for ref, s in states.items()]
        await conn.execute(sa.insert(outbox), rows)

    await service.store.write(job)


async def held(service: NodeService) -> dict[str, tuple[str, bool]]:
    """ref -> (state, marked)"""
    async with service.store.read() as conn:
        rows = await conn.execute(sa.select(outbox.c.ref, outbox.c.state, outbox.c.done_at))
        return {r.ref: (r.state, r.done_at is not None) for r in rows}


async def test_finished_rows_go_a_retention_after_they_finish_and_queued_ones_stay(service: NodeService) -> None:
    assert service.retention.keep == dt.timedelta(days=service.config.outbox_retention_days) == WEEK
    await queue(service, {"q1": "queued", "d1": "delivered", "r1": "rejected", "c1": "cancelled"})
    keeper = Retention(service.store, WEEK)
    start = utc_now()

    assert await keeper.prune(start) == Pruned(marked=3, deleted=0)
    assert await held(service) == {
        "q1": ("queued", False),
        "d1": ("delivered", True),
        "r1": ("rejected", True),
        "c1": ("cancelled", True),
    }
    # A row finished later is marked at the pass that finds it; a week after the first mark, only
    # those marked then go.
    await queue(service, {"d2": "delivered"})
    assert await keeper.prune(start + dt.timedelta(days=3)) == Pruned(marked=1, deleted=0)
    assert await keeper.prune(start + dt.timedelta(days=6)) == Pruned(marked=0, deleted=0)
    assert await keeper.prune(start + dt.timedelta(days=7, minutes=1)) == Pruned(marked=0, deleted=3)
    assert await held(service) == {"q1": ("queued", False), "d2": ("delivered", True)}
    assert await keeper.prune(start + dt.timedelta(days=10, minutes=1)) == Pruned(marked=0, deleted=1)
    assert await held(service) == {"q1": ("queued", False)}
    # The queued row is sent as before.
    assert await keeper.prune(start + dt.timedelta(days=400)) == Pruned(marked=0, deleted=0)


async def test_a_pass_works_in_bounded_transactions(service: NodeService, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention, "BATCH", 3)
    await queue(service, {f"d{i}": "delivered" for i in range(10)} | {"q": "queued"})
    keeper = Retention(service.store, dt.timedelta(0))
    now = utc_now()
    assert await keeper.prune(now) == Pruned(marked=10, deleted=0)
    assert await keeper.prune(now + dt.timedelta(seconds=1)) == Pruned(marked=0, deleted=10)
    assert await held(service) == {"q": ("queued", False)}


async def test_the_loop_prunes_until_it_is_stopped(service: NodeService) -> None:
    await queue(service, {"d": "delivered", "q": "queued"})
    keeper = Retention(service.store, dt.timedelta(0), interval=0.01)
    keeper.start()
    try:

        async def pruned() -> bool:
            return await held(service) == {"q": ("queued", False)}

        await eventually(pruned, what="the finished row pruned by the loop")
    finally:
        await keeper.close()
    await keeper.close()  # twice is harmless


def test_a_retention_past_a_hundred_years_is_refused_at_start(tmp_path: Path) -> None:
    """Found by a read-only review: a retention of a million days made every pruning pass fail
    (a date out of range), logged each hour, and the outbox was never pruned."""
    from exchange.config import NodeConfig
    from exchange.errors import ConfigError
    from tests.conftest import DEFAULT_NODES, write_federation

    write_federation(tmp_path, {"nl-customs": DEFAULT_NODES["nl-customs"]}, [], {}, {"outbox_retention_days": 1e6})
    with pytest.raises(ConfigError, match="outbox_retention_days"):
        NodeConfig.load(tmp_path / "nl-customs.toml", environ={})
