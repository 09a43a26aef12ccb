"""Reading the `audit_log` table by index range: a page at a time (the next page read while the
caller works on the one it has), or streamed by one query through the database driver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import sqlalchemy as sa

from exchange.store import Store, audit_log

PAGE = 5000  # rows per read
CHUNK = 5000  # rows per fetch of a streamed query


async def rows(store: Store, lo: int, hi: int, *columns: Any) -> list[Any]:
    """(idx, *columns) of the entries with lo <= idx < hi, by index."""
    async with store.read() as conn:
        query = sa.select(audit_log.c.idx, *columns).where(audit_log.c.idx >= lo, audit_log.c.idx < hi)
        return list((await conn.execute(query.order_by(audit_log.c.idx))).all())


async def pages(store: Store, lo: int, hi: int, *columns: Any) -> AsyncIterator[list[Any]]:
    """The rows of [lo, hi) a page of PAGE indices at a time (fewer rows if some are missing),
    reading the next page while the caller works on this one."""
    if lo >= hi:
        return
    task = asyncio.ensure_future(rows(store, lo, min(hi, lo + PAGE), *columns))
    try:
        for start in range(lo, hi, PAGE):
            page = await task
            if start + PAGE < hi:
                task = asyncio.ensure_future(rows(store, start + PAGE, min(hi, start + 2 * PAGE), *columns))
            yield page
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def stream(store: Store, lo: int, hi: int, *columns: Any) -> AsyncGenerator[Sequence[Sequence[Any]], None]:
    """The rows (idx, *columns) of [lo, hi), by index, CHUNK rows at a time, read by one query.

    The rows are the driver's own (tuples from sqlite3, records from asyncpg): no SQLAlchemy row
    is built, which halves the cost of reading a million entries. Values are as the database
    holds them; a tampered row may hold another type (SQLite keeps any), as with `rows`.
    """
    lo, hi = int(lo), int(hi)  # bound as literals below
    if lo >= hi:
        return
    query = (
        sa.select(audit_log.c.idx, *columns)
        .where(audit_log.c.idx >= lo, audit_log.c.idx < hi)
        .order_by(audit_log.c.idx)
    )
    async with store.read() as conn:
        # Only integers are bound, so the literal form is safe; the driver needs the dialect's SQL.
        sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        driver: Any = (await conn.get_raw_connection()).driver_connection
        if conn.dialect.name == "sqlite":
            cursor = await driver.execute(sql)
            try:
                while chunk := await cursor.fetchmany(CHUNK):
                    yield chunk
            finally:
                await cursor.close()
        elif conn.dialect.name == "postgresql":
            async with driver.transaction():  # asyncpg's cursors live in a transaction
                cursor = await driver.cursor(sql)
                while chunk := await cursor.fetch(CHUNK):
                    yield chunk
        else:
            result = await conn.stream(query.execution_options(yield_per=CHUNK))
            async for part in result.partitions():
                yield part
