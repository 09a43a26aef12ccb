"""Reading bulletins at a cost that does not grow with the store, for exchange.service.inbox: windows
of storage positions that are index seeks per channel, and summaries read from `bulletins.summary`
(never the content with its attachments).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.model import BULLETIN_KINDS, BulletinId, ChannelId, NodeId
from exchange.service.records import search_text_of, summary_of
from exchange.service.views import BulletinSummary
from exchange.store import bulletins

log = logging.getLogger("exchange.summaries")

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


# What a listing shows of a row whose stored summary cannot be read (the database edited by hand, or
# damaged): its kind says so, and TAXII, webhooks and exports withhold it. Opening the bulletin
# checks it against its signed envelope and names what is wrong (exchange.service.inbox).
UNREADABLE = "unreadable"
_warned: set[str] = set()  # bulletins whose unreadable summary was logged, once each (bounded below)


def unreadable(content: dict[str, Any]) -> bool:
    """Whether `content` is the stand-in for a summary that could not be read."""
    return content.get("kind") == UNREADABLE


def _texts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def well_formed(summary: Any) -> bool:
    """Whether `summary` has the shape every reader of summaries relies on: a known kind, a title,
    indicators as lists of text by name, references as text, dates as text, attachments as name,
    media type and size. What it says is not checked (opening the bulletin does that)."""
    if not isinstance(summary, dict) or summary.get("kind") not in BULLETIN_KINDS:
        return False
    indicators = summary.get("indicators", {})
    attachments = summary.get("attachments", [])
    return (
        isinstance(summary.get("title"), str)
        and isinstance(indicators, dict)
        and all(isinstance(k, str) and _texts(v) for k, v in indicators.items())
        and _texts(summary.get("references", []))
        and all(isinstance(summary.get(k), str | None) for k in ("language", "expires", "due"))
        and isinstance(attachments, list)
        and all(
            isinstance(a, dict)
            and isinstance(a.get("name"), str)
            and isinstance(a.get("media_type"), str)
            and type(a.get("size")) is int
            for a in attachments
        )
    )


def read_summary(row: Any, text: str | None) -> dict[str, Any]:
    """`text` (a stored summary, or the content it is made from where the row has none) parsed,
    if it is an object with a known kind and a title; else the stand-in, logged once per bulletin.
    One damaged row then costs its own line, not the whole list (it was an internal error)."""
    try:
        parsed = json.loads(text) if text is not None else None
        if row.summary is None and isinstance(parsed, dict):
            parsed = summary_of(parsed)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        parsed = None
    if well_formed(parsed):
        return cast(dict[str, Any], parsed)
    if row.id not in _warned and len(_warned) < 1000:
        _warned.add(row.id)
        log.warning("bulletin %s: its stored summary cannot be read; it is listed as unreadable", row.id)
    return {"kind": UNREADABLE, "title": f"{str(row.id)[:8]}…"}


async def summarised(conn: AsyncConnection, rows: Sequence[Any]) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Each row with its summary, parsed as it is reached (a search stops at a page of matches); a
    row stored before summaries were kept (summary NULL) gets one made from its content, read for
    those rows only."""
    missing = [r.n for r in rows if r.summary is None]
    contents: dict[int, str] = {}
    if missing:
        query = sa.select(bulletins.c.n, bulletins.c.content).where(bulletins.c.n.in_(missing))
        contents = {r.n: r.content for r in await conn.execute(query)}
    return ((r, read_summary(r, r.summary if r.summary is not None else contents.get(r.n))) for r in rows)


async def search_texts(conn: AsyncConnection, rows: Sequence[Any]) -> dict[int, str]:
    """n -> the search text of each row; made from the content of a row stored without one."""
    texts = {r.n: r.search_text for r in rows if r.search_text is not None}
    missing = [r.n for r in rows if r.search_text is None]
    if missing:
        query = sa.select(bulletins.c.n, bulletins.c.content).where(bulletins.c.n.in_(missing))
        texts |= {r.n: _search_text(r.content) for r in await conn.execute(query)}
    return texts


def _search_text(content: str | None) -> str:
    """The search text made from a row's content; none (it matches nothing) where the content
    cannot be read: the row is listed as unreadable (`read_summary`), and a search goes on."""
    try:
        parsed = json.loads(content) if content is not None else None
        return search_text_of(parsed) if isinstance(parsed, dict) else ""
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return ""


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
