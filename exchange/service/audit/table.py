"""Reading the `audit_log` table by index range, a page at a time, the next page read while the
caller works on the one it has."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa

from exchange.store import Store, audit_log

PAGE = 5000  # rows per read


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
