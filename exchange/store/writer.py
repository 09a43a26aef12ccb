"""The node's database writer: one connection pool and a group-commit writer.

Every write goes through `Store.write` (a job that may read) or `Store.insert` (one that only
adds rows), which gather the jobs that arrive while a commit runs and commit them in one
transaction, with one executemany per table for the rows they add. The writer is also the only
place that gives audit entries their index, so the audit log has no gaps and no races within one
process; and, for jobs that name a stream (an author's bulletins in a channel), the next sequence
numbers, read once per transaction for all of them (`AuditBuffer.take_seq`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from exchange.audit.events import AuditEntry
from exchange.clock import cancel_and_wait, wait_event
from exchange.crypto import canonical_json
from exchange.errors import ConfigError, Unavailable
from exchange.merkle import leaf_hash
from exchange.store import schema, workers
from exchange.store.bulk import insert_rows
from exchange.store.engine import make_engine, reason
from exchange.store.tables import audit_log, bulletins

T = TypeVar("T")
# An author's bulletins in a channel: (author, channel), whose sequence numbers are gap-free.
Stream = tuple[str, str]


@dataclass
class AuditBuffer:
    """What the jobs of one transaction add: audit entries, indexed when it commits, and rows to
    insert, sent as one executemany per table (see `insert`)."""

    next_idx: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    inserts: dict[tuple[sa.Table, tuple[str, ...]], list[dict[str, Any]]] = field(default_factory=dict)
    # The last sequence number of each stream the transaction's jobs named, as the table had it
    # when the transaction took the log's lock (`take_seq` hands out the next ones).
    seqs: dict[Stream, int] = field(default_factory=dict)

    def add(self, entry: AuditEntry) -> None:
        body = canonical_json({"idx": self.next_idx + len(self.rows), **entry})
        # The bulletin the entry names, indexed so a trace seeks its entries (ix_audit_log_bulletin):
        # its "bulletin", else a "ref" that is a bulletin id (a refused envelope's send).
        named = entry.get("bulletin")
        if not isinstance(named, str):
            ref = entry.get("ref")
            named = ref if isinstance(ref, str) and len(ref) == 64 and set(ref) <= set("0123456789abcdef") else None
        bulletin = named if isinstance(named, str) and len(named) <= 64 else None
        self.rows.append(
            {"idx": self.next_idx + len(self.rows), "entry": body, "leaf_hash": leaf_hash(body), "bulletin": bulletin}
        )

    def take_seq(self, author: str, channel: str) -> int:
        """The next sequence number of `author`'s bulletins in `channel`, for a job that named that
        stream (`Store.insert(..., stream=)`): read once per transaction, under the log's lock (on
        PostgreSQL) or SQLite's write lock, so the numbers are gap-free and in commit order whatever
        the number of worker processes."""
        stream = (author, channel)
        if stream not in self.seqs:
            raise LookupError(f"a job took a sequence number of a stream it did not name: {stream}")
        self.seqs[stream] += 1
        return self.seqs[stream]

    def insert(self, table: sa.Table, rows: Iterable[dict[str, Any]]) -> None:
        """Insert `rows` into `table` in this transaction, together with every other job's rows for
        the table: before the next job that may read runs, and before the transaction commits.

        One executemany per table and set of columns, instead of a statement (and a hand-off to
        the database driver's thread) per row, is most of what a group commit saves.
        """
        for row in rows:
            self.inserts.setdefault((table, tuple(row)), []).append(row)

    async def flush(self, conn: AsyncConnection) -> None:
        """Send the rows `insert` holds, in the order their tables were first named."""
        inserts, self.inserts = self.inserts, {}
        for (table, _), rows in inserts.items():
            await insert_rows(conn, table, rows)


Job = Callable[[AsyncConnection, AuditBuffer], Awaitable[T]]
# A job that reads nothing: it only adds rows (`AuditBuffer.insert`) and audit entries.
Rows = Callable[[AuditBuffer], T]


@dataclass
class _Pending:
    future: asyncio.Future[Any]
    job: Job[Any] | None = None
    rows: Rows[Any] | None = None  # a job that reads nothing
    stream: Stream | None = None  # the stream whose numbers it takes (`AuditBuffer.take_seq`)


# Leaf hashes held for the log keeper at most, if it falls behind: the table has the rest.
MAX_HANDED_LEAVES = 50_000


def private_file(path: Path) -> None:
    """Make a new SQLite database file readable by this node's user alone (0600; its folder 0700
    if it is made too): it holds the decrypted bulletins and the channels' epoch keys, and SQLite
    would make it, and its -wal and -shm files after it, with the umask's mode (often 0644)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:  # made meanwhile: SQLite opens it as it is
        return
    try:
        os.fchmod(fd, 0o600)  # whatever the umask made of it
    finally:
        os.close(fd)


class Store:
    """One node's database, shared by the HTTP handlers, the outbox senders and the CLI."""

    def __init__(self, engine: AsyncEngine, *, max_batch: int = 500, linger: float = 0.0) -> None:
        self.engine = engine
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._max_batch = max_batch
        self._linger = linger
        self._audit_size = 0
        # The leaf hashes of the entries this process committed last, from index _handed_from, until
        # the log keeper takes them (`committed_leaves`): it need not read back what was just written.
        self._handed_from = 0
        self._handed: list[bytes] = []
        self.hand_over_leaves = False  # set once a log keeper takes this store's entries (LogKeeper.start)
        self._closed = False
        self.audit_appended = asyncio.Event()
        # PostgreSQL may be shared by several worker processes (exchange.store.workers): each
        # transaction then takes the log's lock and the log's end from the table.
        self.shared = engine.dialect.name == "postgresql"

    @classmethod
    async def open(cls, url: str, *, node: str | None = None, connections: int = 15, create: bool = True) -> Store:
        """Connect to a database at the current schema revision; an empty one is brought there first
        (with `create`; else ConfigError, and a SQLite file that is not there is not made).

        An older schema raises SchemaOutdated, whose one line names `exchange db upgrade`: a
        deployed database only changes through that command (`node` names it in the message).
        """
        if (missing := schema.missing_file(url)) is not None:
            if not create:
                raise schema.holds_no_node(url, node)
            private_file(missing)
        engine = make_engine(url, connections=connections)
        try:
            await schema.require_current(engine, url, node=node, create=create)
            async with engine.connect() as conn:
                # The end of the log is its largest index plus one: a seek on the primary key, not a
                # count that grows with the log (and never an index below one already used).
                top = await conn.scalar(sa.select(sa.func.max(audit_log.c.idx)))
                size = 0 if top is None else int(top) + 1
        except (OSError, sa.exc.DBAPIError) as exc:
            await engine.dispose()
            raise ConfigError(f"cannot open {schema.database_name(url, node)}: {reason(exc)}") from exc
        except BaseException:
            await engine.dispose()
            raise
        store = cls(engine)
        store._audit_size = int(size)
        return store

    @property
    def audit_size(self) -> int:
        return self._audit_size

    def _hand_over(self, first: int, leaves: list[bytes]) -> None:
        if not self.hand_over_leaves:
            return
        if first != self._handed_from + len(self._handed) or len(self._handed) + len(leaves) > MAX_HANDED_LEAVES:
            self._handed_from, self._handed = first, []  # not contiguous, or not taken: the table has them
        if len(leaves) <= MAX_HANDED_LEAVES:
            self._handed.extend(leaves)

    def committed_leaves(self, lo: int, hi: int) -> list[bytes]:
        """The leaf hashes of entries lo, lo + 1, ... (below hi) as this process committed them, as
        many as it still holds from lo (none if it holds not lo); those before lo are let go."""
        if lo < self._handed_from or lo > self._handed_from + len(self._handed):
            return []
        del self._handed[: lo - self._handed_from]
        self._handed_from = lo
        return self._handed[: max(0, hi - lo)]

    async def appended(self, event: asyncio.Event) -> None:
        """Wait for `event` (an `audit_appended`); shared by workers, for at most POLL_SECONDS,
        since other workers' commits set no event here."""
        if not self.shared:
            await event.wait()
            return
        await wait_event(event, workers.POLL_SECONDS)

    async def refresh_audit_size(self) -> None:
        """Shared by workers: take the end of the log as the table has it now (other workers append)."""
        if self.shared:
            async with self.engine.connect() as conn:
                size = await workers.log_end(conn)
            if size > self._audit_size:
                self._audit_size = size
                self.audit_appended.set()
                self.audit_appended = asyncio.Event()

    async def close(self) -> None:
        self._closed = True
        await cancel_and_wait(self._writer)
        self._writer = None
        await self.engine.dispose()

    async def write(self, job: Job[T], *, stream: Stream | None = None) -> T:
        """Run `job` inside a group-committed transaction and return its result once durable.
        `stream`: the job takes sequence numbers of that stream (`AuditBuffer.take_seq`)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        return await self._enqueue(_Pending(future, job=job, stream=stream), future)

    async def insert(self, rows: Rows[T], *, stream: Stream | None = None) -> T:
        """Run `rows`, which reads nothing and only adds rows and audit entries, in a group-committed
        transaction; return its result once durable. `stream`: as for `write`.

        The rows of every such job in a group commit go to the database as one executemany per
        table, and no job waits for a statement of its own.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        return await self._enqueue(_Pending(future, rows=rows, stream=stream), future)

    async def _enqueue(self, pending: _Pending, future: asyncio.Future[T]) -> T:
        if self._closed:
            raise Unavailable("the node is stopping")
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="store-writer")
        self._queue.put_nowait(pending)
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
            except _StoreFailed as failed:  # not a job's fault: running each alone would not help
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(failed.error)
            except Exception:
                # One job spoiled the batch: run each alone so the others still commit.
                for pending in batch:
                    if not pending.future.done():
                        try:
                            await self._commit([pending])
                        except _StoreFailed as failed:  # the store failed meanwhile: not the job's error
                            pending.future.set_exception(failed.error)
                        except Exception as exc:  # the job's own error goes to its caller
                            pending.future.set_exception(exc)

    async def _commit(self, batch: list[_Pending]) -> None:
        """Commit a batch. The log's end is read inside the write transaction, once its lock is
        held: another process may have appended (other workers on PostgreSQL; an admin command,
        such as `roster import`, beside a running node on SQLite).

        What the lock serialises across workers is kept short: the log's end and the streams'
        last numbers in one statement, the jobs, one executemany per table, the commit. Jobs
        that read nothing (posts) wait for no statement of their own in between.
        """
        buffer = AuditBuffer(self._audit_size)
        results: list[Any] = [None] * len(batch)
        streams = list(dict.fromkeys(p.stream for p in batch if p.stream is not None))
        async with self._transaction() as conn:
            await self._begin(conn)
            buffer.next_idx, buffer.seqs = await _ends(conn, streams)
            # In the order the jobs came: rows are added in that order (the outbox's numbers, a
            # stream's posts as queued for its readers), and those of consecutive jobs that read
            # nothing share one executemany per table. (Running those first, as before, put a post
            # made with an Idempotency-Key behind the later posts of its batch in each reader's
            # queue, and the reader took the gap for a loss.)
            for i, pending in enumerate(batch):
                if pending.rows is not None:
                    results[i] = pending.rows(buffer)
                elif pending.job is not None:
                    await buffer.flush(conn)  # this job sees every row added before it
                    results[i] = await pending.job(conn, buffer)
            await buffer.flush(conn)
            if buffer.rows:
                await insert_rows(conn, audit_log, buffer.rows)
        if buffer.rows:
            self._hand_over(buffer.next_idx, [row["leaf_hash"] for row in buffer.rows])
        moved = buffer.next_idx != self._audit_size
        # Never backwards: another worker's commit may have moved it on (refresh_audit_size) meanwhile.
        self._audit_size = max(self._audit_size, buffer.next_idx + len(buffer.rows))
        if buffer.rows or moved:
            self.audit_appended.set()
            self.audit_appended = asyncio.Event()
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction. What fails before the jobs run (no pooled connection in time, the
        database unreachable) or at COMMIT is the store's failure, not a job's (`_StoreFailed`):
        at COMMIT the outcome is unknown, and running the jobs again alone could store one
        acknowledged post twice, so each caller gets Unavailable and may retry (a post with its
        Idempotency-Key gets the stored answer if the commit landed)."""
        begin = self.engine.begin()
        try:
            conn = await begin.__aenter__()
        except (sa.exc.TimeoutError, sa.exc.OperationalError, sa.exc.InterfaceError, OSError) as exc:
            raise _StoreFailed(Unavailable("the database is busy or unreachable; try again shortly")) from exc
        try:
            yield conn
        except BaseException as exc:  # rolled back; a job's failure, for each job to be run alone
            await begin.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        try:
            await begin.__aexit__(None, None, None)  # COMMIT
        except Exception as exc:
            raise _StoreFailed(
                Unavailable("the database did not confirm the commit, so whether it was stored is unknown; retry")
            ) from exc

    async def _begin(self, conn: AsyncConnection) -> None:
        """Take the write lock: another job cannot cause a failure here, so it is the store's."""
        try:
            if self.shared:  # indices (and sequence numbers) in commit order, across workers
                await workers.lock_log(conn)
            else:  # SQLite's write lock now, not at the first INSERT, and the end read under it
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
        except (sa.exc.OperationalError, sa.exc.InterfaceError, OSError) as exc:
            raise _StoreFailed(Unavailable("the database is busy or unreachable; try again shortly")) from exc

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection to read with; Unavailable (503, retryable) when every pooled connection is
        taken for longer than the pool's timeout, as under a flood, rather than an internal error.

        On PostgreSQL each statement runs on its own (autocommit): under READ COMMITTED every
        statement takes its own snapshot anyway, and a read then costs no BEGIN and ROLLBACK, two
        round trips of the three of a one-statement read (the token lookup of every request)."""
        conn = self.engine.connect()
        try:
            await conn.start()
        except sa.exc.TimeoutError as exc:
            raise Unavailable("the database is busy; try again shortly") from exc
        try:
            if self.shared:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn
        finally:
            await conn.close()

    async def audit(self, entry: AuditEntry) -> None:
        """Append one audit entry on its own (for events that store nothing else)."""

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            audit.add(entry)

        await self.write(job)


class _StoreFailed(Exception):
    """The store failed a whole batch (`error` goes to every job of it), not one job."""

    def __init__(self, error: Unavailable) -> None:
        super().__init__(error.detail)
        self.error = error


async def _ends(conn: AsyncConnection, streams: list[Stream]) -> tuple[int, dict[Stream, int]]:
    """The log's end (one past its largest index) and the last sequence number of each stream, in
    one statement: seeks on the primary key and on uq_bulletin_stream. Under the log's lock, in a
    statement of its own (a statement's snapshot is taken when it starts), so it counts every
    transaction that held the lock before."""
    columns = [sa.select(sa.func.max(audit_log.c.idx)).scalar_subquery()]
    for author, channel in streams:
        columns.append(
            sa.select(sa.func.max(bulletins.c.seq))
            .where(bulletins.c.author == author, bulletins.c.channel == channel)
            .scalar_subquery()
        )
    top, *lasts = (await conn.execute(sa.select(*columns))).one()
    return (0 if top is None else int(top) + 1), {s: int(last or 0) for s, last in zip(streams, lasts, strict=True)}


def is_unique_violation(exc: BaseException) -> bool:
    return isinstance(exc, sa.exc.IntegrityError)
