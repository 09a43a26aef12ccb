"""Retention: what the node keeps only for a while, pruned by a periodic loop.

An outbox row is finished once it is delivered (the destination's receipt is stored), rejected
(the destination refused it for good) or cancelled (the destination left the channel); nothing
reads it again but the operator. Each pass of the loop marks the finished rows it finds for the
first time (`outbox.done_at`) and deletes those marked more than `outbox_retention_days` ago, so
the outbox holds what is queued plus one retention's worth of history, whatever the node has sent.
What was sent and delivered stays in the audit log, which is never pruned.

Idempotency keys have a retention of their own, pruned as posts are made (exchange.service.posting).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.clock import cancel_and_wait, stop_requested, timestamp, utc_now
from exchange.store import OUTBOX_FINISHED, AuditBuffer, Store, outbox

log = logging.getLogger("exchange.retention")

BATCH = 1000  # rows per transaction, so a pass never holds the writer for long
INTERVAL_SECONDS = 3600.0  # between two passes (and a first one soon after the start)
FIRST_PASS_SECONDS = 60.0


@dataclass(frozen=True)
class Pruned:
    """What one pass did: finished rows marked for the first time, and rows deleted."""

    marked: int
    deleted: int


class Retention:
    """The outbox's retention loop, started and stopped with the node."""

    def __init__(self, store: Store, keep: dt.timedelta, interval: float = INTERVAL_SECONDS) -> None:
        self.store = store
        self.keep = keep
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def prune(self, now: dt.datetime | None = None) -> Pruned:
        """One pass, in transactions of at most BATCH rows: mark, then delete what has expired."""
        now = now or utc_now()
        marked = await self._in_batches(self._mark, timestamp(now))
        deleted = await self._in_batches(self._delete, timestamp(now - self.keep))
        if marked or deleted:
            log.info("outbox retention: %d finished rows marked, %d deleted", marked, deleted)
        return Pruned(marked, deleted)

    async def _in_batches(self, step: Callable[[AsyncConnection, str], Awaitable[int]], at: str) -> int:
        total = 0
        while True:

            async def job(conn: AsyncConnection, audit: AuditBuffer) -> int:
                return await step(conn, at)

            done = await self.store.write(job)
            total += done
            if done < BATCH:
                return total

    @staticmethod
    async def _mark(conn: AsyncConnection, now: str) -> int:
        # Seeks on ix_outbox_finished (done_at), which holds the finished rows only: those not yet marked.
        batch = (
            sa.select(outbox.c.n).where(OUTBOX_FINISHED, outbox.c.done_at.is_(None)).limit(BATCH)
        ).scalar_subquery()
        done = await conn.execute(sa.update(outbox).where(outbox.c.n.in_(batch)).values(done_at=now))
        return int(done.rowcount)

    @staticmethod
    async def _delete(conn: AsyncConnection, cutoff: str) -> int:
        batch = (sa.select(outbox.c.n).where(OUTBOX_FINISHED, outbox.c.done_at < cutoff).limit(BATCH)).scalar_subquery()
        done = await conn.execute(sa.delete(outbox).where(outbox.c.n.in_(batch)))
        return int(done.rowcount)

    async def run(self) -> None:
        """Prune soon after the start, then every `interval`; a failed pass is logged and retried."""
        await asyncio.sleep(min(FIRST_PASS_SECONDS, self.interval))
        while True:
            try:
                await self.prune()
            except Exception:
                if not stop_requested():  # else no failure: the node stops (below)
                    log.exception("the outbox retention pass failed; it is tried again at the next one")
            if stop_requested():  # cancelled in a wait that ended otherwise (exchange.clock)
                raise asyncio.CancelledError
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="retention")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
