"""Several worker processes over one PostgreSQL database: the locks that keep them one node.

- The log's lock (`lock_log`): a transaction-level advisory lock every write transaction of every
  worker takes first, so transactions that give out audit indices, sequence numbers or row numbers
  (`bulletins.n`, `outbox.n`, which catch-up and delivery page by) commit one after the other, in
  the order of what they gave out. A reader therefore never sees a gap that is filled in later.
- Roles (`Role`): a session-level advisory lock held on a connection of its own, so that one
  worker at a time signs checkpoints and runs the witness round; when that worker dies, its
  connection closes, the lock is released, and another worker takes the role.
- Outbox leases (`claim_lease`, `renew_lease`): one worker at a time sends to a partner; see
  `exchange.service.leases`.

SQLite has one process per database and takes none of these (`Store.shared` is False).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import zlib
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from exchange.clock import cancel_and_wait
from exchange.store.tables import audit_log, outbox_leases

log = logging.getLogger("exchange.workers")

LISTEN_CHECK_SECONDS = 5.0  # how often the listening connection is checked
# Advisory lock keys: in the node's own database, so nodes sharing a server do not meet.
LOG_LOCK = zlib.crc32(b"exchange:audit_log")
# How often a worker looks for what other workers committed (the audit log's end, queued items),
# besides what their notifications tell it (`Changes`): a notification lost with its connection.
POLL_SECONDS = 1.0


def role_key(name: str) -> int:
    """The advisory lock key of a role ("signer", "witness")."""
    return zlib.crc32(f"exchange:role:{name}".encode())


async def log_end(conn: AsyncConnection) -> int:
    """One past the largest audit index committed: a seek on the primary key."""
    top = await conn.scalar(sa.select(sa.func.max(audit_log.c.idx)))
    return 0 if top is None else int(top) + 1


async def lock_log(conn: AsyncConnection) -> None:
    """Take the log's lock for this transaction.

    Read the log's end after it, in a statement of its own (a statement's snapshot is taken when
    it starts), so that it counts every transaction that held the lock before: `Store` reads it
    with the last numbers of the streams its jobs take numbers of, in one statement.
    """
    await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOG_LOCK})


class Role:
    """A role only one worker plays at a time, held by a session advisory lock on a connection of
    its own. `held()` tries to take it (cheaply, when it is held already) and says if it is ours."""

    def __init__(self, engine: AsyncEngine, name: str) -> None:
        self.engine = engine
        self.name = name
        self._conn: AsyncConnection | None = None

    async def held(self) -> bool:
        if self.engine.dialect.name != "postgresql":
            return True  # one process per database
        if self._conn is not None:
            try:
                await self._conn.scalar(sa.text("SELECT 1"))  # the session, and with it the lock, lives
                return True
            except sa.exc.DBAPIError:
                await self.release()
        conn = await self.engine.connect()
        try:
            got = await conn.scalar(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": role_key(self.name)})
            await conn.commit()
        except BaseException:
            await conn.close()
            raise
        if got:
            self._conn = conn
            return True
        await conn.close()
        return False

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.invalidate()  # the session ends, and the lock with it
            finally:
                await conn.close()


# What the triggers of migration 0007 notify (the payload: a destination, a channel, nothing).
OUTBOX, CHANNELS, AUDIT = "exchange_outbox", "exchange_channels", "exchange_audit"
# What a write notifies itself (`notify`): a channel's epoch records, keys or grants (the channel).
EPOCHS = "exchange_epochs"
# What a worker notifies on its own (`Leases.seen`): a partner talked to it (the partner's id).
PEERS = "exchange_peers"


async def notify(conn: AsyncConnection, topic: str, payload: str) -> None:
    """Tell the other workers, at this transaction's commit, that it stored something of `topic`
    (PostgreSQL delivers it then, and not at all if the transaction rolls back); SQLite: nothing."""
    if conn.dialect.name == "postgresql":
        await conn.execute(sa.text("SELECT pg_notify(:topic, :payload)"), {"topic": topic, "payload": payload})


class Changes:
    """What other workers commit, as PostgreSQL notifies it (LISTEN on a connection of its own):
    `on(topic, callback)` before `start()`; each notification's payload goes to its topic's
    callbacks, on the event loop. A lost connection is opened again, and `on_reconnect` callbacks
    run each time it is listening, the first included (notifications sent before are lost: they
    re-read what they follow)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._callbacks: dict[str, list[Callable[[str], None]]] = {}
        self._reconnected: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None

    def on(self, topic: str, callback: Callable[[str], None]) -> None:
        self._callbacks.setdefault(topic, []).append(callback)

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        self._reconnected.append(callback)

    def start(self) -> None:
        if self.engine.dialect.name == "postgresql" and self._task is None:
            self._task = asyncio.create_task(self._listen(), name="worker-changes")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task, quiet=True)  # it never ends on its own: a failure is not the stop's

    def _deliver(self, _conn: Any, _pid: int, topic: str, payload: str) -> None:
        for callback in self._callbacks.get(topic, []):
            try:
                callback(payload)
            except Exception:  # one follower's failure must not stop the others
                log.exception("a follower of %s failed", topic)

    async def _listen(self) -> None:
        """Listen until cancelled, whatever the connection does. asyncpg's own errors (a server
        restarted, a backend terminated, a connection dropped) are neither OSError nor SQLAlchemy's:
        caught as those alone, they ended the task for good, and this worker heard no other
        worker's change again (a partner removed there still got its posts; found by a read-only
        review). A check that gets no answer (a partition) times out and is a failure too."""
        while True:
            try:
                async with self.engine.connect() as conn:
                    try:
                        await self._session(conn)
                    except Exception:
                        with contextlib.suppress(Exception):
                            await conn.invalidate()  # not back to the pool: it may be dead
                        raise
            except Exception as exc:
                log.warning("listening for other workers' commits failed (%r); listening again", exc)
                await asyncio.sleep(LISTEN_CHECK_SECONDS)

    async def _session(self, conn: AsyncConnection) -> None:
        raw = (await conn.get_raw_connection()).driver_connection  # asyncpg's
        assert raw is not None, "an open connection has its driver's"
        for topic in self._callbacks:
            await raw.add_listener(topic, self._deliver)
        # The first time too: what other workers committed between this worker's
        # load and now (its audit check, its start) was notified to no listener.
        for callback in self._reconnected:
            callback()
        while True:  # the session lives: notifications arrive on it
            await asyncio.sleep(LISTEN_CHECK_SECONDS)
            # On the driver's connection, outside any transaction: SQLAlchemy would
            # begin one, and PostgreSQL holds a session's notifications until it ends.
            async with asyncio.timeout(LISTEN_CHECK_SECONDS):
                await raw.fetchval("SELECT 1")


async def claim_lease(
    conn: AsyncConnection, dest: str, holder: str, now: dt.datetime, seconds: float
) -> tuple[bool, dt.datetime]:
    """Take or renew the lease on sending to `dest` for `holder`, in this transaction. Returns
    whether `holder` has it now, and until when the lease (its own or another worker's) runs; a
    lease another worker is taking right now (its row locked) counts as held for `seconds`."""
    until = now + dt.timedelta(seconds=seconds)
    await conn.execute(
        sa.text("INSERT INTO outbox_leases (dest, holder, expires) VALUES (:d, '', :t) ON CONFLICT DO NOTHING"),
        {"d": dest, "t": now},
    )
    row = (
        await conn.execute(
            sa.select(outbox_leases.c.holder, outbox_leases.c.expires)
            .where(outbox_leases.c.dest == dest)
            .with_for_update(skip_locked=True)
        )
    ).first()
    if row is None:
        return False, until
    if row.holder != holder and row.expires > now:
        return False, row.expires
    await conn.execute(
        sa.update(outbox_leases).where(outbox_leases.c.dest == dest).values(holder=holder, expires=until)
    )
    return True, until


async def renew_lease(conn: AsyncConnection, dest: str, holder: str, until: dt.datetime) -> bool:
    """Renew `holder`'s lease on `dest` in this transaction; False if another worker took it.

    The lease row stays locked until the transaction ends, so it cannot be taken while the
    caller writes under it."""
    done = await conn.execute(
        sa.update(outbox_leases)
        .where(outbox_leases.c.dest == dest, outbox_leases.c.holder == holder)
        .values(expires=until)
    )
    return bool(done.rowcount)


async def renew_leases(conn: AsyncConnection, dests: list[str], holder: str, until: dt.datetime) -> set[str]:
    """`renew_lease` for several destinations in one statement: those `holder` still holds."""
    done = await conn.execute(
        sa.update(outbox_leases)
        .where(outbox_leases.c.dest.in_(dests), outbox_leases.c.holder == holder)
        .values(expires=until)
        .returning(outbox_leases.c.dest)
    )
    return set(done.scalars())


async def release_leases(conn: AsyncConnection, holder: str, now: dt.datetime) -> None:
    """A worker stopping cleanly: its leases end now, for the others to take at once."""
    await conn.execute(sa.update(outbox_leases).where(outbox_leases.c.holder == holder).values(expires=now))


__all__ = [
    "AUDIT",
    "CHANNELS",
    "EPOCHS",
    "LOG_LOCK",
    "OUTBOX",
    "POLL_SECONDS",
    "Changes",
    "Role",
    "claim_lease",
    "lock_log",
    "log_end",
    "notify",
    "release_leases",
    "renew_lease",
    "renew_leases",
    "role_key",
]
