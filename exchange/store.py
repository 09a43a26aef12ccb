"""The node's database: SQLAlchemy Core tables and a group-commit writer.

Every write goes through `Store.write`, which gathers the jobs that arrive within a few
milliseconds and commits them in one transaction. The writer is also the only place that gives
audit entries their index, so the audit log has no gaps and no races within one process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from exchange.crypto import canonical_json
from exchange.errors import ConfigError, ExchangeError, Unavailable
from exchange.merkle import leaf_hash

metadata = sa.MetaData()

bulletins = sa.Table(
    "bulletins",
    metadata,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("channel", sa.String(64), nullable=False),
    sa.Column("author", sa.String(64), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("state_pos", sa.Integer, nullable=False),
    sa.Column("tlp", sa.String(16), nullable=False),
    sa.Column("created", sa.String(32), nullable=False),
    sa.Column("stored_at", sa.String(32), nullable=False),
    sa.Column("envelope", sa.LargeBinary, nullable=False),
    # " a b c ": the recipient node ids, so catch-up pages are filtered in SQL
    sa.Column("recipients", sa.Text, nullable=False),
    sa.Column("content", sa.Text, nullable=True),
    sa.UniqueConstraint("author", "channel", "seq", name="uq_bulletin_stream"),
    sa.Index("ix_bulletins_channel", "channel", "n"),
)

receipts = sa.Table(
    "receipts",
    metadata,
    sa.Column("bulletin_id", sa.String(64), primary_key=True),
    sa.Column("node", sa.String(64), primary_key=True),
    sa.Column("status", sa.String(16), primary_key=True),
    sa.Column("at", sa.String(32), nullable=False),
    sa.Column("receipt", sa.Text, nullable=False),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("dest", sa.String(64), nullable=False),
    # what to send: a bulletin's envelope (ref = bulletin id) or a channel event (ref = channel:pos)
    sa.Column("kind", sa.String(16), nullable=False, default="envelope"),
    sa.Column("ref", sa.String(140), nullable=False),
    # queued until the destination's signed receipt is stored; rejected if it refused it (4xx)
    sa.Column("state", sa.String(16), nullable=False, default="queued"),
    sa.Column("detail", sa.Text, nullable=True),
    # set at the first attempt, when the send is audited (retries are not)
    sa.Column("sent_at", sa.String(32), nullable=True),
    sa.UniqueConstraint("dest", "kind", "ref", name="uq_outbox_item"),
    sa.Index("ix_outbox_pending", "dest", "state", "n"),
)

channel_events = sa.Table(
    "channel_events",
    metadata,
    sa.Column("channel", sa.String(64), primary_key=True),
    sa.Column("pos", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("event", sa.Text, nullable=False),
)

user_channels = sa.Table(
    "user_channels",
    metadata,
    sa.Column("user", sa.String(64), primary_key=True),
    sa.Column("channel", sa.String(64), primary_key=True),
)

cursors = sa.Table(
    "cursors",
    metadata,
    # how far this node has pulled a channel from a partner, in that partner's storage order
    sa.Column("peer", sa.String(64), primary_key=True),
    sa.Column("channel", sa.String(64), primary_key=True),
    sa.Column("cursor", sa.Integer, nullable=False),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created", sa.String(32), nullable=False),
)

# exchange.web, the console: argon2 password hashes (a table of their own, so databases made
# before the console get it from create_all), server-side sessions (only the SHA-256 of the
# cookie is kept), sign-in failures for rate limiting, and which bulletins each user has opened.
user_passwords = sa.Table(
    "user_passwords",
    metadata,
    sa.Column("user", sa.String(64), primary_key=True),
    sa.Column("hash", sa.String(256), nullable=False),
    sa.Column("set_at", sa.String(32), nullable=False),
)

console_sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("user", sa.String(64), nullable=False, index=True),
    sa.Column("address", sa.String(64), nullable=False),
    sa.Column("created", sa.String(32), nullable=False),
    sa.Column("expires", sa.String(32), nullable=False),
    sa.Column("last_seen", sa.String(32), nullable=False),
)

signin_failures = sa.Table(
    "signin_failures",
    metadata,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user", sa.String(64), nullable=False),
    sa.Column("address", sa.String(64), nullable=False),
    sa.Column("at", sa.String(32), nullable=False),
    sa.Index("ix_signin_failures_user", "user", "at"),
    sa.Index("ix_signin_failures_address", "address", "at"),
)

user_reads = sa.Table(
    "user_reads",
    metadata,
    sa.Column("user", sa.String(64), primary_key=True),
    sa.Column("bulletin_id", sa.String(64), primary_key=True),
    sa.Column("at", sa.String(32), nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("idx", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("entry", sa.LargeBinary, nullable=False),
    sa.Column("leaf_hash", sa.LargeBinary, nullable=False),
)

# exchange.audit: this node's signed checkpoints (note = C2SP signed note with our signature only;
# frontier = the compact range at `size`, so a restart resumes without re-reading the log),
# the witnesses' cosignature lines, and what this node has witnessed of its partners' logs.
audit_checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("root", sa.LargeBinary, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("frontier", sa.LargeBinary, nullable=False),
    sa.Column("at", sa.String(32), nullable=False),
)

audit_cosignatures = sa.Table(
    "audit_cosignatures",
    metadata,
    sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("witness", sa.String(64), primary_key=True),
    sa.Column("line", sa.Text, nullable=False),
    sa.Column("at", sa.String(32), nullable=False),
)

audit_witnessed = sa.Table(
    "audit_witnessed",
    metadata,
    sa.Column("node", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("root", sa.LargeBinary, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("at", sa.String(32), nullable=False),
)

audit_split_views = sa.Table(
    "audit_split_views",
    metadata,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("node", sa.String(64), nullable=False),
    sa.Column("seen", sa.Text, nullable=False),  # the checkpoint this node had witnessed
    sa.Column("shown", sa.Text, nullable=False),  # the inconsistent one the log showed later
    sa.Column("shown_hash", sa.String(64), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("at", sa.String(32), nullable=False),
    sa.UniqueConstraint("node", "shown_hash", name="uq_split_view"),
)

T = TypeVar("T")


@dataclass
class AuditBuffer:
    """Audit entries added by the jobs of one transaction, indexed when it commits."""

    next_idx: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, entry: dict[str, Any]) -> None:
        body = canonical_json({"idx": self.next_idx + len(self.rows), **entry})
        self.rows.append({"idx": self.next_idx + len(self.rows), "entry": body, "leaf_hash": leaf_hash(body)})


Job = Callable[[AsyncConnection, AuditBuffer], Awaitable[T]]


@dataclass
class _Pending:
    job: Job[Any]
    future: asyncio.Future[Any]


class Store:
    """One node's database, shared by the HTTP handlers, the outbox senders and the CLI."""

    def __init__(self, engine: AsyncEngine, *, max_batch: int = 500, linger: float = 0.0) -> None:
        self.engine = engine
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._max_batch = max_batch
        self._linger = linger
        self._audit_size = 0
        self._closed = False
        self.audit_appended = asyncio.Event()

    @classmethod
    async def open(cls, url: str) -> Store:
        """Connect and create the schema if it is missing."""
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        try:
            engine = create_async_engine(url, **kwargs)
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise ConfigError(f"bad database URL: {exc}") from exc
        if url.startswith("sqlite"):
            sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            size = (await conn.execute(sa.select(sa.func.count()).select_from(audit_log))).scalar_one()
        store = cls(engine)
        store._audit_size = int(size)
        return store

    @property
    def audit_size(self) -> int:
        return self._audit_size

    async def close(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        await self.engine.dispose()

    async def write(self, job: Job[T]) -> T:
        """Run `job` inside a group-committed transaction and return its result once durable."""
        if self._closed:
            raise Unavailable("the node is stopping")
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="store-writer")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(job, future))
        return await future

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # Jobs that arrive while a commit runs wait in the queue and go in the next one, so
            # batches grow with load; an idle writer only yields once before committing.
            await asyncio.sleep(self._linger)
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            except Exception:
                # One job spoiled the batch: run each alone so the others still commit.
                for pending in batch:
                    if not pending.future.done():
                        try:
                            await self._commit([pending])
                        except Exception as exc:  # the job's own error goes to its caller
                            pending.future.set_exception(exc)

    async def _commit(self, batch: list[_Pending]) -> None:
        """Commit a batch; if another process appended to the audit log meanwhile (an admin
        command next to a running node), take the new end of the log and try again."""
        for attempt in range(5):
            try:
                return await self._commit_once(batch)
            except sa.exc.IntegrityError:
                moved = await self._resync_audit_size()
                if not moved or attempt == 4:
                    raise

    async def _resync_audit_size(self) -> bool:
        async with self.engine.connect() as conn:
            top = await conn.scalar(sa.select(sa.func.max(audit_log.c.idx)))
        size = -1 if top is None else int(top)
        changed = size + 1 != self._audit_size
        self._audit_size = size + 1
        return changed

    async def _commit_once(self, batch: list[_Pending]) -> None:
        buffer = AuditBuffer(self._audit_size)
        results: list[Any] = []
        async with self.engine.begin() as conn:
            for pending in batch:
                results.append(await pending.job(conn, buffer))
            if buffer.rows:
                await conn.execute(sa.insert(audit_log), buffer.rows)
        self._audit_size += len(buffer.rows)
        if buffer.rows:
            self.audit_appended.set()
            self.audit_appended = asyncio.Event()
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def audit(self, entry: dict[str, Any]) -> None:
        """Append one audit entry on its own (for events that store nothing else)."""

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            audit.add(entry)

        await self.write(job)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def is_unique_violation(exc: BaseException) -> bool:
    return isinstance(exc, sa.exc.IntegrityError)


__all__ = [
    "AuditBuffer",
    "ExchangeError",
    "Store",
    "audit_log",
    "bulletins",
    "channel_events",
    "cursors",
    "outbox",
    "receipts",
    "user_channels",
    "users",
]
