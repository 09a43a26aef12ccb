"""Async SQLAlchemy engines for a node's database URL (SQLite through aiosqlite, PostgreSQL through asyncpg)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from exchange.errors import ConfigError
from exchange.store import loop_sqlite
from exchange.store.loop_sqlite import LoopConnection


def make_engine(
    url: str, *, transactional_ddl: bool = False, lock_wait: float = 30.0, connections: int = 15
) -> AsyncEngine:
    """An engine for `url`. With `transactional_ddl`, SQLite runs DDL inside the transaction too
    (the driver otherwise commits each CREATE TABLE on its own), so a migration is all or nothing,
    and each transaction takes the database's write lock when it begins (BEGIN IMMEDIATE), so two
    migrations take turns; PostgreSQL is transactional anyway. `lock_wait`: how many seconds a
    statement waits for another connection's lock on SQLite before it fails ("database is locked")."""
    kwargs: dict[str, Any] = {}
    sqlite = url.startswith("sqlite")
    if sqlite:
        kwargs["connect_args"] = {"timeout": lock_wait}
        if not transactional_ddl:  # a node's engine: its statements that cannot wait run on the loop
            kwargs["async_creator"] = _loop_sqlite(url, lock_wait)
    elif url.startswith("postgresql"):
        # At most `connections` (15 by default, as before), every one kept open once opened: with
        # SQLAlchemy's five kept and ten more opened on demand, the reads of a burst of requests
        # (each request's token lookup) opened and closed a connection each (TCP, startup,
        # statements prepared again): a quarter of a worker's CPU (bench/workers.py).
        kwargs |= {"pool_size": connections, "max_overflow": 0}
    # A failed statement's error names no parameters: they hold decrypted bulletins, webhook secrets
    # and token hashes, and the error reaches the log (`log.exception`) and messages.
    kwargs["hide_parameters"] = True
    try:
        engine = create_async_engine(url, **kwargs)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise ConfigError(f"bad database URL: {exc}") from exc
    if sqlite:
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        if transactional_ddl:
            sa.event.listen(engine.sync_engine, "connect", _sqlite_no_implicit_transactions)
            sa.event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


def shown(url: str) -> str:
    """A database URL fit for a message: without its password."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(unparseable database URL)"


def reason(exc: BaseException) -> str:
    """The driver's own words for a database error, on one line (without SQLAlchemy's wrapping)."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _loop_sqlite(url: str, lock_wait: float) -> Callable[[], Awaitable[LoopConnection]]:
    """Open `url`'s database as the aiosqlite dialect would, as a `LoopConnection`."""
    try:
        args, params = SQLiteDialect_aiosqlite().create_connect_args(sa.engine.make_url(url))
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"bad database URL: {exc}") from exc

    async def creator() -> LoopConnection:
        return await loop_sqlite.connect(*args, **{"timeout": lock_wait, **params})

    return creator


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_no_implicit_transactions(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # SQLAlchemy's recipe: we say BEGIN ourselves, below


def _sqlite_begin(conn: sa.Connection) -> None:
    # IMMEDIATE: the write lock now, waited for if need be. A plain BEGIN would read the revision
    # under a shared lock and fail at its first write if another upgrade wrote meanwhile.
    conn.exec_driver_sql("BEGIN IMMEDIATE")
