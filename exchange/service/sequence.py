"""Sequence numbers when several workers share one PostgreSQL database.

A worker seals a post with the number it expects (one past the last it knows of) outside the
writer, so the crypto runs in parallel. Inside the write transaction, which holds the log's lock
(exchange.store.workers), the number is checked against the table: if another worker took it
meanwhile, the post is sealed again with the next free number, there, under the lock. Numbers
are then gap-free and in commit order per (author, channel), as catch-up expects.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.store import bulletins


async def next_seq(conn: AsyncConnection, author: str, channel: str) -> int:
    """The next free sequence number of `author` in `channel`, as this transaction sees the table
    (call it under the log's lock: then it is the number the post commits with)."""
    last = await conn.scalar(
        sa.select(sa.func.max(bulletins.c.seq)).where(bulletins.c.author == author, bulletins.c.channel == channel)
    )
    return int(last or 0) + 1


__all__ = ["next_seq"]
