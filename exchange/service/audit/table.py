"""Reading the `audit_log` table by index range: a page at a time (the next page read while the
caller works on the one it has), or streamed by one query through the database driver; and the
cosignatures kept of this node's checkpoints, each checked against its witness's key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit.checkpoint import WitnessKeys
from exchange.audit.keeper import checked_cosignatures
from exchange.audit.witness_sets import MAX_COSIGNATURES
from exchange.clock import timestamp
from exchange.errors import Conflict
from exchange.store import AuditBuffer, Store, audit_checkpoints, audit_cosignatures, audit_log

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


async def cosignature_lines(store: Store, witness: str, limit: int) -> list[tuple[int, str, str]]:
    """`witness`'s stored cosignature lines of this node's largest checkpoints, with each
    checkpoint's note: (size, note, line), largest first, at most `limit`."""
    cosig = audit_cosignatures
    query = (
        sa.select(cosig.c.size, audit_checkpoints.c.note, cosig.c.line)
        .join(audit_checkpoints, audit_checkpoints.c.size == cosig.c.size)
        .where(cosig.c.witness == witness)
        .order_by(cosig.c.size.desc())
        .limit(limit)
    )
    async with store.read() as conn:
        return [(int(size), str(note), str(line)) for size, note, line in await conn.execute(query)]


async def _count(conn: AsyncConnection, size: int) -> int:
    """How many cosignature lines checkpoint `size` holds."""
    query = sa.select(sa.func.count()).select_from(audit_cosignatures).where(audit_cosignatures.c.size == size)
    return int((await conn.execute(query)).scalar_one())


async def keep_cosignature(store: Store, size: int, witness: str, line: str, witnesses: WitnessKeys) -> None:
    """Keep a witness's (checked) cosignature line of checkpoint `size`: the first one it sent,
    unless the line held does not verify (a row edited into the table), which it replaces. A new
    witness's is refused (Conflict) once the checkpoint holds MAX_COSIGNATURES lines: past that,
    its note would no longer parse (note.MAX_SIGNATURES), and every verifier would refuse the log."""
    cosig, at = audit_cosignatures, timestamp()

    async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
        mine = sa.and_(cosig.c.size == size, cosig.c.witness == witness)
        query = sa.select(cosig.c.line, audit_checkpoints.c.note).join(
            audit_checkpoints, audit_checkpoints.c.size == size
        )
        held = (await conn.execute(query.where(mine))).first()
        if held is None and await _count(conn, size) >= MAX_COSIGNATURES:
            raise Conflict(f"checkpoint {size} holds {MAX_COSIGNATURES} cosignatures: no more are kept")
        if held is None or not checked_cosignatures(held.note, [(witness, held.line)], witnesses):
            await conn.execute(sa.delete(cosig).where(mine))
            await conn.execute(sa.insert(cosig).values(size=size, witness=witness, line=line, at=at))

    await store.write(job)
