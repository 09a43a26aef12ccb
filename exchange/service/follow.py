"""Following channels: new bulletins as they are stored, from a cursor, exactly once across
reconnects. The client API's long poll (`GET /api/v1/follow`), `exchange inbox --follow` and the
console's live inbox (server-sent events) all read through here.

The cursor is a bulletin's storage position (`bulletins.n`, the `cursor` of every inbox line):
a follower that reconnects with the last cursor it saw gets what came after it and nothing twice.
The node looks for new bulletins every `POLL` seconds (two index seeks per channel, as a listing
page: `Listing`), so a follower costs the same whatever the store holds, and a bulletin shows at
most `POLL` seconds after it is stored. Followers are bounded per user and per node (429).

A follower's user is read again (`current`: the session and rights as they are now) before any
bulletin is handed out, and every `RECHECK` seconds while it waits: a user taken off a channel
gets nothing more, and a user signed out or disabled is told within `RECHECK` seconds (401 to a
long poll; an event stream ends), not only when a bulletin comes or the wait ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator

from exchange.clock import wait_event
from exchange.errors import Forbidden, NotFound, RateLimited, Unauthorized, Unavailable
from exchange.service.listing import Filters, LinePage, Listing
from exchange.service.users import User
from exchange.store import Store

Current = Callable[[], Awaitable[User]]  # the follower's user as it is now; Unauthorized if gone

POLL = 0.5  # seconds between looks for new bulletins
MAX_WAIT = 25  # seconds a long poll may wait (under proxies' usual 30 s idle limits)
PAGE = 100  # lines in one answer at most: a follower behind pages on at once
PER_USER = 4  # followers (long polls or event streams) of one user at a time
PER_NODE = 256
RECHECK = 5.0  # seconds between reads of a waiting follower's user (one indexed look-up each)
KEEPALIVE = 15.0  # seconds of quiet before an event stream gets an empty page (its keep-alive)


class Follow:
    """New bulletins of a user's readable channels past a cursor, waited for."""

    def __init__(self, store: Store, listing: Listing, poll: float = POLL) -> None:
        self.store = store
        self.listing = listing
        self.poll = poll
        self._open: dict[str, int] = {}
        self._closed = asyncio.Event()

    def close(self) -> None:
        """The node is stopping: every wait and stream ends now (503 to a long poll: ask again)."""
        self._closed.set()

    async def _pause(self, seconds: float) -> None:
        """Sleep up to `seconds`; Unavailable at once if the node stops meanwhile."""
        if self._closed.is_set():
            raise Unavailable("the node is stopping")
        await wait_event(self._closed, seconds)
        if self._closed.is_set():
            raise Unavailable("the node is stopping")

    async def head(self, user: User, channel: str | None = None) -> int:
        """The cursor of the newest bulletin of the user's readable channels (or of `channel`; 0:
        none): where "from now on" starts (`Listing.head`)."""
        return await self.listing.head(user, channel)

    @contextlib.contextmanager
    def _slot(self, user: User) -> Iterator[None]:
        if self._open.get(user.name, 0) >= PER_USER or sum(self._open.values()) >= PER_NODE:
            raise RateLimited(f"at most {PER_USER} followers per user and {PER_NODE} per node at a time", retry_after=5)
        self._open[user.name] = self._open.get(user.name, 0) + 1
        try:
            yield
        finally:
            self._open[user.name] -= 1
            if not self._open[user.name]:
                del self._open[user.name]

    async def _page(self, user: User, channel: str | None, after: int) -> LinePage:
        """What came after `after` (rights checked again each time: an unassigned user stops)."""
        page = await self.listing.lines(user, Filters(channel=channel, after=after, limit=PAGE))
        return LinePage(items=page.items, next=page.next if page.next is not None else after)

    async def wait(
        self, user: User, channel: str | None, after: int | None, wait: float, current: Current | None = None
    ) -> LinePage:
        """The bulletins after `after` (None: from now), waiting up to `wait` seconds for the first."""
        with self._slot(user):
            cursor = await self.head(user, channel) if after is None else after
            checked = time.monotonic()
            deadline = checked + max(0.0, min(wait, MAX_WAIT))
            while True:
                page = await self._page(user, channel, cursor)
                now = time.monotonic()
                # The rights as they are now before anything is sent, every RECHECK seconds and at
                # the end of a wait that waited (the caller read the user as it began): a user
                # disabled meanwhile gets 401, not an empty page.
                due = page.items or now - checked >= RECHECK or (now >= deadline and now - checked >= self.poll)
                if current is not None and due:
                    user, checked = await current(), now
                    if page.items:
                        page = await self._page(user, channel, cursor)
                if page.items or now >= deadline:
                    return page
                cursor = page.next or cursor
                await self._pause(min(self.poll, max(0.0, deadline - time.monotonic())))

    async def stream(
        self, user: User, channel: str | None, after: int | None, current: Current | None = None
    ) -> AsyncGenerator[LinePage, None]:
        """Pages of new bulletins for as long as the caller reads them (server-sent events): the
        first at once (rights checked), then one whenever bulletins come, and an empty one every
        KEEPALIVE seconds, so the caller can send a keep-alive and notice a closed peer. With
        `current`, the stream ends within RECHECK seconds of the user's session ending
        (Unauthorized) or the user being disabled."""
        with self._slot(user):
            cursor = await self.head(user, channel) if after is None else after
            quiet = unchecked = KEEPALIVE
            while True:
                page = await self._page(user, channel, cursor)
                if current is not None and (page.items or unchecked >= RECHECK):
                    try:  # before anything is sent, and every RECHECK seconds
                        user = await current()
                    except (Unauthorized, Forbidden, NotFound):
                        return
                    unchecked = 0.0
                    page = await self._page(user, channel, cursor)
                cursor = page.next or cursor
                if page.items or quiet >= KEEPALIVE:
                    quiet = 0.0
                    yield page
                if len(page.items) < PAGE:
                    try:
                        await self._pause(self.poll)
                    except Unavailable:
                        return  # the stream ends; the browser reconnects to the node's next run
                    quiet += self.poll
                    unchecked += self.poll
