"""The client API's and the CLI's inbox: bulletins of the user's channels, newest or oldest first,
optionally only those the user has not opened, or created since a time.

Each channel is two index seeks on ix_bulletins_channel (channel, n): where the SCAN bulletins
past the cursor end, then those bulletins, filtered: a page costs channels x
SCAN rows at most, whatever the store holds. A filter that leaves fewer than a page among them
answers a shorter page with a `next` cursor, so a client pages on (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from exchange.service.access import Access
from exchange.service.summaries import summarised, summary_line
from exchange.service.users import User
from exchange.service.views import InboxLine, View
from exchange.store import Store, bulletins, user_reads

SCAN = 5000  # bulletins of one channel that one page looks at, past its cursor
MAX_LIMIT = 500


@dataclass(frozen=True)
class Filters:
    """What a listing asks for. `after` pages oldest first; `newest` pages down from `before`."""

    channel: str | None = None
    newest: bool = False
    after: int = 0
    before: int | None = None
    unread: bool = False
    since: str | None = None  # a date or UTC time, compared with `created` as text (as the audit filters do)
    limit: int = 50


@dataclass(frozen=True)
class LinePage(View):
    """A page of inbox lines; `next` is the cursor for the following page (`after`, or `before` when
    newest first), None when the scan found nothing more."""

    items: list[InboxLine]
    next: int | None


def _past_cursor(channel: str, f: Filters) -> list[Any]:
    """The conditions that pick one channel's bulletins past the cursor."""
    where = [bulletins.c.channel == channel]
    if f.newest:
        return where + ([bulletins.c.n < f.before] if f.before is not None else [])
    return [*where, bulletins.c.n > f.after]


def _scan_end(channel: str, f: Filters, scan: int) -> sa.Select[Any]:
    """The position of the `scan`-th bulletin of the channel past the cursor (none: fewer are left)."""
    order = bulletins.c.n.desc() if f.newest else bulletins.c.n
    return sa.select(bulletins.c.n).where(*_past_cursor(channel, f)).order_by(order).offset(scan - 1).limit(1)


LINE = (
    bulletins.c.n,
    bulletins.c.id,
    bulletins.c.channel,
    bulletins.c.author,
    bulletins.c.seq,
    bulletins.c.tlp,
    bulletins.c.created,
    bulletins.c.summary,
)


def _next(page: Sequence[Any], ends: Sequence[int], limit: int, newest: bool) -> int | None:
    """The cursor of the next page: past a full page's last line, but not past where a channel's
    scan stopped short (what lies beyond it was not looked at); None when every scan was complete."""
    bounds: list[int] = [*ends, *([int(page[-1].n)] if len(page) == limit else [])]
    if not bounds:
        return None
    return max(bounds) if newest else min(bounds)


class Listing:
    """Inbox lines of a user's readable channels, filtered, within the user's rights."""

    def __init__(self, store: Store, access: Access, scan: int = SCAN) -> None:
        self.store = store
        self.access = access
        self.scan = scan

    async def lines(self, user: User, f: Filters) -> LinePage:
        """One page of `f`: each line says whether this user has opened it."""
        user.require("contact-point")
        if f.channel is not None:
            self.access.require_readable(user, f.channel)
            wanted = [f.channel]
        else:
            wanted = self.access.readable_channels(user)
        if not wanted:
            return LinePage(items=[], next=None)
        limit = max(1, min(f.limit, MAX_LIMIT))
        order = bulletins.c.n.desc() if f.newest else bulletins.c.n
        opened = sa.exists().where(user_reads.c.user == user.name, user_reads.c.bulletin_id == bulletins.c.id)
        async with self.store.read() as conn:
            found: list[Any] = []
            ends: list[int] = []  # where the scan of a channel that has more stopped
            for channel in wanted:
                query = sa.select(*LINE, opened.label("opened")).where(*_past_cursor(channel, f))
                end = await conn.scalar(_scan_end(channel, f, self.scan))
                if end is not None:
                    ends.append(end)
                    query = query.where(bulletins.c.n >= end if f.newest else bulletins.c.n <= end)
                if f.since is not None:
                    query = query.where(bulletins.c.created >= f.since)
                if f.unread:
                    query = query.where(~opened)
                found += (await conn.execute(query.order_by(order).limit(limit))).all()
            found.sort(key=lambda r: -r.n if f.newest else r.n)
            page = found[:limit]
            cursor = _next(page, ends, limit, f.newest)
            if cursor is not None:  # nothing past the cursor: the next page starts there
                page = [r for r in page if (r.n >= cursor if f.newest else r.n <= cursor)]
            items = await self._lines(conn, page)
        if cursor is None and page and not f.newest:
            cursor = page[-1].n  # oldest first, at the end for now: where to poll from
        return LinePage(items=items, next=cursor)

    async def head(self, user: User, channel: str | None = None) -> int:
        """The cursor of the newest bulletin of the user's readable channels, or of `channel` (0: none):
        where "from now on" starts for this user. Not the store's newest: that would tell a user
        how many bulletins came in channels it cannot read, and when."""
        user.require("contact-point")
        if channel is not None:
            self.access.require_readable(user, channel)
        wanted = [channel] if channel is not None else self.access.readable_channels(user)
        newest = 0
        async with self.store.read() as conn:
            for c in wanted:  # a seek on ix_bulletins_channel each
                newest = max(
                    newest,
                    int(await conn.scalar(sa.select(sa.func.max(bulletins.c.n)).where(bulletins.c.channel == c)) or 0),
                )
        return newest

    async def _lines(self, conn: Any, rows: Sequence[Any]) -> list[InboxLine]:
        return [
            InboxLine(**summary_line(r, content).as_json(), unread=not r.opened)
            for r, content in await summarised(conn, rows)
        ]
