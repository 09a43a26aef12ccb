"""SQLite statements that cannot wait run on the event loop; the others in aiosqlite's thread.

aiosqlite runs every call (cursor, execute, fetch, close, commit) in a thread of its own and hands
the result back to the event loop: two thread switches and a wake-up of the loop per call, four
calls per statement. Measured on this project's 2-core machine, a one-row SELECT through it costs
about 325 µs of CPU against 20 µs for the same statement run directly (bench/sqlite_calls.py);
about twenty statements per delivery made those hand-offs a large part of a node's CPU, much of
it kernel time.

A call needs a thread only when it may wait: for SQLite's write lock (a write outside a
transaction that holds it, `BEGIN IMMEDIATE`, with up to the busy timeout of sleeping) or for the
disk (the commit of a write transaction, which syncs the log). Everything else cannot wait and
is run directly, on the event loop, by `LoopConnection`:

- reads (`SELECT`): in WAL mode a reader never waits for a writer;
- any statement of a transaction that already holds the write lock (after `BEGIN IMMEDIATE`, or
  after its first write, which ran in the thread);
- fetching rows, cursors, and the commit or rollback of a transaction that wrote nothing.

Calls on one connection never overlap: SQLAlchemy's pool lends it to one task at a time and each
call is awaited before the next, so the sqlite3 connection (opened with `check_same_thread=False`)
is used by one thread at a time, as sqlite3 requires.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import aiosqlite

# Statements that only read: the first word of the statement (SQLAlchemy writes SELECT in capitals).
_READS = ("SELECT", "select")


class LoopCursor:
    """An aiosqlite-shaped cursor over a sqlite3 cursor (see the module's notes)."""

    def __init__(self, owner: LoopConnection) -> None:
        self._owner = owner
        self._cursor = owner.sqlite.cursor()

    async def __aenter__(self) -> LoopCursor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Any = ()) -> LoopCursor:
        await self._owner.run(sql, self._cursor.execute, sql, parameters if parameters is not None else ())
        return self

    async def executemany(self, sql: str, parameters: Any) -> LoopCursor:
        await self._owner.run(sql, self._cursor.executemany, sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    async def setinputsizes(self, *_sizes: Any) -> None:
        return None

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class LoopConnection:
    """An aiosqlite connection whose calls that cannot wait run on the event loop.

    What it does not define (the thread's queue, `stop`, `create_function`, the isolation level)
    is aiosqlite's own, so SQLAlchemy's aiosqlite dialect drives it unchanged."""

    def __init__(self, thread: aiosqlite.Connection) -> None:
        self.threaded = thread
        self.sqlite = thread._conn
        # The open transaction holds SQLite's write lock: its statements cannot wait for it.
        self._locked = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.threaded, name)

    async def run(self, sql: str, call: Callable[..., Any], *args: Any) -> Any:
        """Run `call` (which executes `sql`) on the loop if it cannot wait, else in the thread."""
        if self._locked and self.sqlite.in_transaction:
            return call(*args)
        self._locked = False
        if sql.lstrip().startswith(_READS):
            return call(*args)
        result = await self._in_thread(call, *args)
        # A write, or BEGIN IMMEDIATE, that left a transaction open took the write lock (a plain
        # BEGIN, deferred, takes no lock: its first write may still wait).
        self._locked = self.sqlite.in_transaction and not _deferred_begin(sql)
        return result

    async def _in_thread(self, call: Callable[..., Any], *args: Any) -> Any:
        return await self.threaded._execute(call, *args)  # type: ignore[no-untyped-call]

    def cursor(self) -> LoopCursor:
        return LoopCursor(self)

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> LoopCursor:
        cursor = LoopCursor(self)
        return await cursor.execute(sql, parameters)

    async def commit(self) -> None:
        await self._end(self.sqlite.commit)

    async def rollback(self) -> None:
        await self._end(self.sqlite.rollback)

    async def _end(self, call: Callable[[], None]) -> None:
        wrote, self._locked = self._locked, False
        if wrote and self.sqlite.in_transaction:
            await self._in_thread(call)  # a write transaction's commit syncs to disk
        else:
            call()  # nothing written (or nothing open): no lock to wait for, nothing to sync


def _deferred_begin(sql: str) -> bool:
    words = sql.upper().split()
    return bool(words) and words[0] == "BEGIN" and not {"IMMEDIATE", "EXCLUSIVE"} & set(words)


async def connect(database: str, **kwargs: Any) -> LoopConnection:
    """Open `database` as aiosqlite does, for use from both its thread and the event loop."""
    thread = aiosqlite.connect(database, **(kwargs | {"check_same_thread": False}))
    thread._thread.daemon = True  # as SQLAlchemy does for aiosqlite's own connections
    try:
        return LoopConnection(await thread)
    except BaseException:
        # A failed connect queues a stop of aiosqlite's thread that nobody waits for: were the loop
        # closed first (a CLI command ending on the error), the thread would print a traceback
        # after the command's one line (omnilib/aiosqlite#241). Its stop is quick: wait for it here.
        thread._thread.join(timeout=5)
        raise
