"""Reading bulletins at a cost that does not grow with the store, for exchange.service.inbox: windows
of storage positions that are index seeks per channel, and summaries read from `bulletins.summary`
(never the content with its attachments).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.model import BulletinId, ChannelId, NodeId
from exchange.service.records import search_text_of, summary_of
from exchange.service.views import BulletinSummary
from exchange.store import bulletins

# The columns a bulletin summary is made from: no envelope and no content, so lists stay light.
SUMMARY = (
    bulletins.c.n,
    bulletins.c.id,
    bulletins.c.channel,
    bulletins.c.author,
    bulletins.c.seq,
    bulletins.c.tlp,
    bulletins.c.created,
    bulletins.c.summary,
)


def positions(
    channels: Sequence[str],
    limit: int,
    *,
    after: int = 0,
    newest: bool = False,
    before: int | None = None,
    dialect: str = "sqlite",
) -> sa.CompoundSelect[Any] | sa.Select[Any]:
    """The storage positions (n) of at most `limit` bulletins of `channels`: the oldest above `after`,
    or the `newest` (below `before` if given). One range of ix_bulletins_channel per channel, merged
    in order and read only as far as `limit`, so the cost is about limit + channels (at most
    channels x limit) whatever the store holds.

    The members differ by `dialect`: SQLite merges plain members lazily in index order (a member
    with its own ORDER BY and LIMIT would be sorted in a temporary B-tree, row by row), while
    PostgreSQL's planner may sort every plain member whole, so each of its members is limited too.
    """
    order = bulletins.c.n.desc() if newest else bulletins.c.n
    parts = []
    for channel in channels:
        part = sa.select(bulletins.c.n).where(bulletins.c.channel == channel)
        if not newest:
            part = part.where(bulletins.c.n > after)
        elif before is not None:
            part = part.where(bulletins.c.n < before)
        parts.append(part.order_by(order).limit(limit) if dialect != "sqlite" or len(channels) == 1 else part)
    if len(parts) == 1:
        return parts[0]
    merged = sa.union_all(*parts)
    column = merged.selected_columns.n
    return merged.order_by(column.desc() if newest else column).limit(limit)


async def newest_start(conn: AsyncConnection, channels: Sequence[str], size: int) -> tuple[int, bool]:
    """Where the `size` newest bulletins of `channels` begin (the oldest one's storage position), and
    whether there are older ones: a query then reads one range per channel above it."""
    window = positions(channels, size, newest=True, dialect=conn.dialect.name).subquery()
    oldest, count = (await conn.execute(sa.select(sa.func.min(window.c.n), sa.func.count()))).one()
    return int(oldest or 0), count == size


async def summarised(conn: AsyncConnection, rows: Sequence[Any]) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Each row with its summary, parsed as it is reached (a search stops at a page of matches); a
    row stored before summaries were kept (summary NULL) gets one made from its content, read for
    those rows only."""
    missing = [r.n for r in rows if r.summary is None]
    contents: dict[int, str] = {}
    if missing:
        query = sa.select(bulletins.c.n, bulletins.c.content).where(bulletins.c.n.in_(missing))
        contents = {r.n: r.content for r in await conn.execute(query)}
    return (
        (r, json.loads(r.summary) if r.summary is not None else summary_of(json.loads(contents[r.n]))) for r in rows
    )


async def search_texts(conn: AsyncConnection, rows: Sequence[Any]) -> dict[int, str]:
    """n -> the search text of each row; made from the content of a row stored without one."""
    texts = {r.n: r.search_text for r in rows if r.search_text is not None}
    missing = [r.n for r in rows if r.search_text is None]
    if missing:
        query = sa.select(bulletins.c.n, bulletins.c.content).where(bulletins.c.n.in_(missing))
        texts |= {r.n: search_text_of(json.loads(r.content)) for r in await conn.execute(query)}
    return texts


def summary_line(row: Any, content: dict[str, Any]) -> BulletinSummary:
    return BulletinSummary(
        cursor=row.n,
        id=BulletinId(row.id),
        channel=ChannelId(row.channel),
        author=NodeId(row.author),
        seq=row.seq,
        tlp=row.tlp,
        created=row.created,
        kind=content["kind"],
        title=content["title"],
    )
