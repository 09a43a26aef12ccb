"""Catch-up: pull what this node missed, page by page, from any member that holds it, and serve
the same pages to partners.

Cursors are positions in the partner's own storage order, kept per (partner, channel), so
nothing depends on clocks. Envelopes verify themselves, so it does not matter who relays them.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.clock import cancel_and_wait, stop_requested, wait_event
from exchange.errors import ExchangeError, Forbidden, InvalidInput
from exchange.model import NodeId
from exchange.protocol.pages import checked_page
from exchange.service.channels import ChannelBook
from exchange.service.epoch_grants import granted_to, served_to
from exchange.service.outbox import Outbox
from exchange.service.receiving import Receiving, Refused, Screened, save_cursor
from exchange.service.transport import PeerTransport
from exchange.store import AuditBuffer, Store, among, bulletins, cursors
from exchange.store.workers import Role

log = logging.getLogger("exchange.catchup")

# Envelopes asked for per page: the most a node serves (CATCHUP_LIMIT). A large page is one round
# trip, one look-up of what is held, one batch for the crypto workers (or the signature threads)
# and one group-commit job per thousand bulletins.
PAGE = 1000
# Pages with envelopes this node refused (and left out) in one pull of a channel from a member:
# past these, the pull stops until the next sweep, so a member serving refused envelopes page
# after page costs at most this many `catchup.refused` entries per sweep.
MAX_REFUSING_PAGES = 4
# The cursors this node serves are POSITIONS + a bulletin's position in its channel (revision 0012),
# so that they count one channel; a cursor below it (one served before, a `bulletins.n`) is served
# as the channel's start (11.6: `after` is at most 2**31 - 1, so a channel's positions go to 2**30 - 1).
POSITIONS = 1 << 30
# Bulletins past its cursor among which a node that is no member of the channel is looked for
# (`served_envelopes`): what is addressed to it further on, it is not served.
NON_MEMBER_SCAN = 10_000
# Pages fetched and being screened while one is stored (`CatchUp.pull`); the one fetched after them
# waits for room. Each page is at most 32 MiB.
AHEAD = 1


async def _next_page(
    pages: asyncio.Queue[tuple[dict[str, Any], asyncio.Task[Screened | None]]], fetching: asyncio.Task[None]
) -> tuple[dict[str, Any], asyncio.Task[Screened | None]]:
    """The next page the fetching task put, or its failure: a fetch that failed or ended early ends the pull."""
    if pages.empty():
        getting = asyncio.ensure_future(pages.get())
        try:
            await asyncio.wait([getting, fetching], return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the pull stopped just as a page came: its screening goes nowhere now
            if getting.done() and not getting.cancelled():
                getting.result()[1].cancel()
            raise
        finally:
            if not getting.done():
                await cancel_and_wait(getting, quiet=True)
        if not getting.done() or getting.cancelled():
            fetching.result()  # raises what the fetch raised
            raise InvalidInput("the pages ended before the last one said so")
        return getting.result()
    return pages.get_nowait()


def _any_source(peer: str) -> None:
    """Every member's pages taken as they come (a node without a roster chain: no versions)."""


def _drain(
    pages: asyncio.Queue[tuple[dict[str, Any], asyncio.Task[Screened | None]]],
) -> list[tuple[dict[str, Any], asyncio.Task[Screened | None]]]:
    out = []
    while not pages.empty():
        out.append(pages.get_nowait())
    return out


class CatchUp:
    """Sweeps every readable channel against other members: at start, then on a timer.

    A sweep asks at most `peers` members of each channel, the next ones in turn (sorted by id), so
    that a node's catch-up costs the same in a channel of 200 members as in one of 5, and every
    member is still asked within ceil((members - 1) / peers) sweeps. Any member serves any
    author's envelopes, so a few members are enough to find what this node missed; the authors'
    outboxes keep pushing what was not acknowledged, except to a partner that is being served full
    pages (it is behind, and pulls it: exchange.service.sender.PULL_HOLD_SECONDS).
    """

    def __init__(
        self,
        me: NodeId,
        store: Store,
        channels: ChannelBook,
        receiving: Receiving,
        transport: PeerTransport,
        outbox: Outbox,
        interval: float,
        peers: int = 4,
    ) -> None:
        self.me = me
        self.outbox = outbox
        self.store = store
        self.channels = channels
        self.receiving = receiving
        self.transport = transport
        self.interval = interval
        self.peers = peers
        self._turn: dict[str, int] = {}  # channel -> where its next sweep starts in the member list
        self._wake = asyncio.Event()
        self.sweeps = 0
        # RosterBehind if a member runs on a newer roster version than this node: what it serves
        # waits for this node to hold that version (exchange.service.gossip.RosterGossip.check_source).
        self.check_source: Callable[[str], None] = _any_source

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """The catch-up loop: a sweep that fails is logged, and the next one comes on time."""
        role = Role(self.store.engine, "catch-up")  # one worker sweeps (exchange.store.workers)
        try:
            while True:
                try:
                    if await role.held():
                        await self.sweep()
                except Exception:
                    if not stop_requested():  # else no failure: the node stops (below)
                        log.exception("catch-up sweep failed; next sweep in %s s", self.interval)
                if stop_requested():  # cancelled in a wait that ended otherwise (exchange.clock)
                    raise asyncio.CancelledError
                self.sweeps += 1
                self._wake.clear()
                await wait_event(self._wake, self.interval)
        finally:
            await role.release()

    async def sweep(self) -> int:
        """Pull every channel this node reads from the next `peers` other members in turn; return
        how many bulletins were new."""
        fresh = 0
        for state in self.channels.all():
            if "read" not in state.rights(self.me):
                continue
            for peer in self.turn(state.channel, sorted(m for m in state.members if m != self.me)):
                try:
                    fresh += await self.pull(peer, state.channel)
                except (ExchangeError, OSError, ValueError, KeyError) as exc:
                    log.info("catch-up of %s from %s stopped: %s", state.channel, peer, exc)
        return fresh

    def turn(self, channel: str, others: list[str]) -> list[str]:
        """The members this sweep asks for `channel`: all if they are `peers` or fewer, else the
        next `peers` after those the last sweep asked, wrapping around. The first sweep starts
        after this node's own place in the list, so that members' sweeps spread over the channel."""
        if len(others) <= self.peers:
            return others
        start = self._turn.get(channel, bisect.bisect(others, self.me)) % len(others)
        self._turn[channel] = start + self.peers
        return [others[(start + i) % len(others)] for i in range(self.peers)]

    async def pull(self, peer: str, channel: str) -> int:
        """Pull one channel from one member from our cursor to its end.

        Pipelined in three stages: while one page is stored, the next is screened (parsed, checked
        and decrypted in the crypto workers, or here) and the one after it is fetched, as soon as
        the page before it has come (its `next` is where it starts). Beside the one stored, at
        most AHEAD pages wait in the queue and one more, fetched, for room in it. Pages are still
        stored in order, each with its cursor, so a failure anywhere resumes after the last stored
        page.
        """
        if self.receiving.epochs is not None:  # epoch records and grants first: its v2 envelopes open
            await self.receiving.epochs.pull_quietly(peer, channel)
        after = await self.cursor(peer, channel)
        fresh = refusing = 0
        pages: asyncio.Queue[tuple[dict[str, Any], asyncio.Task[Screened | None]]] = asyncio.Queue(AHEAD)
        fetching = asyncio.create_task(self._fetch_pages(peer, channel, after, pages))
        screening: asyncio.Task[Screened | None] | None = None
        try:
            while True:
                page, screening = await _next_page(pages, fetching)
                screened = await screening
                screening = None  # its result is `screened`, dropped once stored
                position = int(page["next"])
                if screened is not None:
                    refused: list[Refused] = []  # left out of the page, audited with it
                    await self.receiving.ingest_screened(screened, cursor=(channel, position), refused=refused)
                    fresh += max(0, len(screened.items) - len(refused))  # a gap fill may refuse more
                    screened = None  # stored: not held while the next is awaited
                    refusing += bool(refused)
                    if refusing >= MAX_REFUSING_PAGES and page["more"]:
                        raise InvalidInput(
                            f"{peer} served {refusing} pages of {channel} with envelopes this node refused: "
                            "the rest at the next sweep"
                        )
                elif position != after:
                    await self.save_cursor(peer, channel, position)
                after = position
                if not page["more"]:
                    return fresh
        finally:
            # Every task told to stop before any is waited for: a second cancellation that cuts the
            # waiting short still leaves none of them running.
            fetching.cancel()
            waiting = [s for _, s in _drain(pages)] + ([screening] if screening is not None else [])
            for task in waiting:
                task.cancel()
            for task in [fetching, *waiting]:  # a page given up on: its failure retrieved
                await cancel_and_wait(task, quiet=True)

    async def _fetch_pages(
        self,
        peer: str,
        channel: str,
        after: int,
        pages: asyncio.Queue[tuple[dict[str, Any], asyncio.Task[Screened | None]]],
    ) -> None:
        """Fetch pages from `after` to the channel's end, each put in `pages` with its screening, which
        begins once the screening of the page two before it has ended: two pages are screened at
        once at most, beside the one being stored. One at a time left the crypto workers idle while
        a page's results came back (about 9% slower, bench/README.md); three at once held a third
        page decrypted."""
        screenings: list[asyncio.Task[Screened | None]] = []
        while True:
            page = checked_page(
                await self.transport.fetch(
                    NodeId(peer), f"/fed/v1/channels/{channel}/envelopes?after={after}&limit={PAGE}"
                ),
                peer,
                after,
                PAGE,
            )
            before = screenings[-2] if len(screenings) >= 2 and not screenings[-2].done() else None
            screening = asyncio.create_task(self._screen_after(before, peer, page))
            screenings = [*screenings[-1:], screening]
            try:
                await pages.put((page, screening))
            except BaseException:  # the pull ended while this page waited for room: its screening too
                await cancel_and_wait(screening, quiet=True)
                raise
            if not page["more"]:
                return
            after = int(page["next"])

    async def _screen_after(
        self, before: asyncio.Task[Screened | None] | None, peer: str, page: dict[str, Any]
    ) -> Screened | None:
        """`_screen`, once `before` (an earlier page's screening) has ended, however it ended (its
        result and failure are the pull's, which awaits it first)."""
        if before is not None and not before.done():
            await asyncio.wait([before])
        del before  # its result (a page decrypted) is not held while this one is screened
        return await self._screen(peer, page)

    async def _screen(self, peer: str, page: dict[str, Any]) -> Screened | None:
        """A page's envelopes this node lacks, screened (None if none). Not before this node runs
        on the roster version the member named (`check_source`): the page fails, and is asked
        again at the next sweep, its cursor where it was."""
        self.check_source(peer)
        offered = [i for i in page["items"] if i["envelope"] is not None]
        held = await self.receiving.held([i["id"] for i in offered]) if offered else set()
        new = [i["envelope"] for i in offered if i["id"] not in held]
        return await self.receiving.screen(NodeId(peer), new, relayed=True, unheld=True) if new else None

    # -- serving partners --------------------------------------------------------------------

    async def served_envelopes(
        self,
        peer: str,
        channel: str,
        *,
        after: int = 0,
        limit: int = 200,
        author: str | None = None,
        after_seq: int = 0,
    ) -> bytes:
        """A page of a channel's envelopes for catch-up, for a node the channel's log names.

        Envelopes not addressed to `peer` appear as markers with a null envelope, so the peer
        can tell a gap that is not meant for it from one that is; only to a member of the
        channel's current state. A node the log names but that is not one (removed, or invited
        and not yet accepted) is served only what is addressed to it, and the page's `next` and
        `more` count only that: markers, or a cursor past what it was not served, would tell it
        how many bulletins each author posted after it left (11.6).
        """
        state = self.channels.state(channel)
        if NodeId(peer) not in state.involved:
            raise Forbidden(f"{peer!r} takes no part in channel {channel!r}")
        limit = max(1, min(limit, 1000))
        where: list[sa.ColumnElement[bool]] = [bulletins.c.channel == channel]
        if author is not None:
            where += [bulletins.c.author == author, bulletins.c.seq > after_seq]
            order = bulletins.c.seq
        else:
            # A cursor below POSITIONS (one served before revision 0012, a `bulletins.n`) is served
            # as the channel's start: honoured, it would let a member find each bulletin's `n` by
            # trying cursors, and so what this node stored between them in other channels (11.6).
            after = max(after, POSITIONS)
            where.append(bulletins.c.channel_pos > after - POSITIONS)
            order = bulletins.c.channel_pos
        member = NodeId(peer) in state.members
        query = (
            sa.select(
                bulletins.c.channel_pos,
                bulletins.c.id,
                bulletins.c.author,
                bulletins.c.seq,
                bulletins.c.recipients,
                bulletins.c.envelope,
            )
            .where(*where)
            .order_by(order)
        )
        async with self.store.read() as conn:
            if member:
                rows = (await conn.execute(query.limit(limit))).all()
            else:
                # Only what was addressed to it, chosen before the limit, so that `next` and `more`
                # count nothing else either (a node that is no member holds no grant, 7.2); looked
                # for among the next NON_MEMBER_SCAN bulletins only, by their numbers and
                # recipients (an index range, then what it names), so that each such request costs
                # a bounded read however much the channel or the store holds.
                window = sa.select(bulletins.c.n, bulletins.c.recipients).where(*where).order_by(order)
                mine = [n for n, to in await conn.execute(window.limit(NON_MEMBER_SCAN)) if f" {peer} " in to]
                chosen = mine[:limit]
                rows = (
                    (await conn.execute(query.where(among(conn.dialect, bulletins.c.n, chosen)))).all()
                    if chosen
                    else []
                )
        size, cut = 0, len(rows)
        for i, r in enumerate(rows):  # big attachments: keep a page under 32 MiB
            size += len(r.envelope)
            if size > 32 * 1024 * 1024 and i:
                cut = i
                break
        more = len(rows) == limit or cut < len(rows)
        rows = rows[:cut]
        epochs = self.receiving.epochs  # v2: a grantee gets the envelopes of the epochs granted to it
        granted = granted_to(epochs, peer, channel) if epochs is not None and member else frozenset()
        items = [
            b'{"n":%d,"id":"%s","author":"%s","seq":%d,"envelope":%s}'
            % (
                POSITIONS + r.channel_pos,
                r.id.encode(),
                r.author.encode(),
                r.seq,
                bytes(r.envelope) if served else b"null",
            )
            for r in rows
            if (served := served_to(peer, r.recipients, bytes(r.envelope), granted)) or member
        ]
        next_ = POSITIONS + rows[-1].channel_pos if rows else after
        self.outbox.peer_pulled(peer, more)  # a full page: it pulls what this node would push it
        return b'{"items":[' + b",".join(items) + b'],"next":%d,"more":%s}' % (next_, b"true" if more else b"false")

    async def cursor(self, peer: str, channel: str) -> int:
        async with self.store.read() as conn:
            value = await conn.scalar(
                sa.select(cursors.c.cursor).where(cursors.c.peer == peer, cursors.c.channel == channel)
            )
        return int(value or 0)

    async def save_cursor(self, peer: str, channel: str, position: int) -> None:
        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            await save_cursor(conn, peer, channel, position)

        await self.store.write(job)
