"""Outbox leases: with several workers on one database, one worker at a time sends to a partner.

Every worker runs a sender per partner, but a sender sends only while its worker holds the
partner's lease (a row of `outbox_leases`: holder, expires; exchange.store.workers). The holder
renews it as it goes: each write a sender makes (marking items sent, storing receipts, rejecting
an item) first renews it in the same transaction, and fails (`LeaseLost`) if another worker has
taken it, so nothing is recorded by a worker that no longer sends; a timer renews it while a
request waits for the partner's answer and while the sender backs off after a failure (`kept`). A worker that dies stops
renewing; once its lease expires, the first sender of another worker to look takes it over, and
sends what is still queued. One that stops cleanly ends its leases (`release`), for others to take within a second.

On SQLite (one process) every sender holds its lease and none of this touches the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.clock import cancel_and_wait, utc_now, wait_event
from exchange.errors import LeaseLost
from exchange.store import Store
from exchange.store.workers import PEERS, POLL_SECONDS, claim_lease, notify, release_leases, renew_lease, renew_leases

log = logging.getLogger("exchange.outbox")

LEASE_SECONDS = 5.0  # how long a dead worker's partners wait for another worker
SEEN_EVERY = 5.0  # a partner's contact is told to the other workers at most this often


class Leases:
    """This worker's leases on sending to partners."""

    def __init__(self, store: Store, holder: str | None = None, seconds: float = LEASE_SECONDS) -> None:
        self.store = store
        self.shared = store.shared
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.seconds = seconds
        self._until: dict[str, dt.datetime] = {}  # our own leases' ends, as last renewed
        self._busy: dict[str, dt.datetime] = {}  # until when another worker holds a partner's lease
        self._told: dict[str, float] = {}  # partner -> when `seen` may tell the other workers again
        self._telling: set[asyncio.Task[None]] = set()

    def _renewed(self, dest: str) -> dt.datetime:
        until = utc_now() + dt.timedelta(seconds=self.seconds)
        self._until[dest] = until
        return until

    async def claim(self, dest: str) -> bool:
        """Whether this worker may send to `dest` now: it holds the lease (renewed when half
        spent), or takes it because it expired. Without the database while ours has time left or
        another worker's has not run out."""
        if not self.shared:
            return True
        now = utc_now()
        half = dt.timedelta(seconds=self.seconds / 2)
        if dest in self._until and self._until[dest] - now > half:
            return True
        if dest in self._busy and self._busy[dest] > now:
            return False
        async with self.store.engine.begin() as conn:
            ours, until = await claim_lease(conn, dest, self.holder, now, self.seconds)
        if ours:
            self._until[dest] = until
            self._busy.pop(dest, None)
        else:  # looked at again within a second: a lease ended early (`release`) is taken soon
            self._until.pop(dest, None)
            self._busy[dest] = min(until, now + dt.timedelta(seconds=1))
        return ours

    async def check(self, conn: AsyncConnection, dest: str) -> None:
        """In a write about `dest`: renew this worker's lease in the same transaction, or raise
        LeaseLost if another worker has taken it (the transaction then records nothing)."""
        if not self.shared:
            return
        if not await renew_lease(conn, dest, self.holder, self._renewed(dest)):
            self._until.pop(dest, None)
            raise LeaseLost(f"another worker now sends to {dest}")

    async def check_many(self, conn: AsyncConnection, dests: Iterable[str]) -> set[str]:
        """`check` for several partners in one statement: those whose lease another worker has
        taken (the caller records nothing about them in this transaction)."""
        if not self.shared:
            return set()
        wanted = sorted(set(dests))
        if not wanted:
            return set()
        until = utc_now() + dt.timedelta(seconds=self.seconds)
        kept = await renew_leases(conn, wanted, self.holder, until)
        for dest in wanted:
            if dest in kept:
                self._until[dest] = until
            else:
                self._until.pop(dest, None)
        return set(wanted) - kept

    async def renew(self, dest: str) -> bool:
        """Renew this worker's lease on `dest` in a transaction of its own; False if another
        worker has taken it."""
        if not self.shared:
            return True
        async with self.store.engine.begin() as conn:
            ours = await renew_lease(conn, dest, self.holder, self._renewed(dest))
        if not ours:
            self._until.pop(dest, None)
        return ours

    @contextlib.asynccontextmanager
    async def kept(self, dest: str) -> AsyncIterator[None]:
        """Keep renewing the lease on `dest` while the block runs: a request that waits for a slow
        partner's answer, a back-off after a failure. Without it, a partner answering later than
        the lease lasts would be taken by another worker, which sends the same batch again, and the
        first answer's receipts would be refused (LeaseLost); and each worker would retry a partner
        that is down on its own schedule. Stops renewing once another worker holds the lease."""
        if not self.shared or dest not in self._until:
            yield
            return

        async def keep() -> None:
            while True:
                await asyncio.sleep(self.seconds / 3)
                try:
                    if not await self.renew(dest):
                        return
                except Exception as exc:  # tried again; else it expires, and another worker takes it over
                    log.info("the lease on %s was not renewed: %s", dest, exc)

        keeper = asyncio.create_task(keep(), name=f"lease-{dest}")
        try:
            yield
        finally:
            await cancel_and_wait(keeper)

    def seen(self, dest: str) -> None:
        """`dest` talked to this worker, which does not hold its lease: tell the other workers
        (`PEERS`), so that the one backing off from it (`kept`) retries now. At most once per
        SEEN_EVERY seconds and partner; nothing on SQLite or when this worker holds the lease."""
        now = time.monotonic()
        if not self.shared or dest in self._until or self._told.get(dest, 0.0) > now:
            return
        self._told[dest] = now + SEEN_EVERY

        async def tell() -> None:
            try:
                async with self.store.engine.begin() as conn:
                    await notify(conn, PEERS, dest)
            except (OSError, sa.exc.DBAPIError, sa.exc.TimeoutError):  # the back-off ends on its own
                pass

        task = asyncio.create_task(tell(), name=f"seen-{dest}")
        self._telling.add(task)
        task.add_done_callback(self._telling.discard)

    async def idle(self, work: asyncio.Event) -> None:
        """Wait for work: `work` set here, or (shared) a poll, since other workers queue items too."""
        if not self.shared:
            await work.wait()
        else:
            await wait_event(work, POLL_SECONDS)

    async def release(self) -> None:
        """Stopping cleanly: end this worker's leases now, so that another takes them soon."""
        if not self.shared or not self._until:
            return
        self._until.clear()
        try:
            async with self.store.engine.begin() as conn:
                await release_leases(conn, self.holder, utc_now())
        except (OSError, sa.exc.DBAPIError):  # they expire on their own
            pass


__all__ = ["LEASE_SECONDS", "LeaseLost", "Leases"]
