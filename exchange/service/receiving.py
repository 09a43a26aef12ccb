"""Receiving: every rule a node applies to what partners send, then persist and audit before
answering with signed receipts."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit import events as ev
from exchange.clock import timestamp
from exchange.crypto import NodeKeys, strict_loads
from exchange.errors import (
    EnvelopeRejected,
    Equivocation,
    ExchangeError,
    InvalidEnvelope,
    NotFound,
    PeerError,
    Unavailable,
    UnknownPeer,
)
from exchange.model import ChannelEvent, NodeId, Receipt, StateRef
from exchange.protocol.envelope import CitedHeader, check_cited_state, check_signer
from exchange.protocol.pages import gap_items
from exchange.protocol.receipt import make_receipts, parse_receipt
from exchange.protocol.roster import Federation
from exchange.service.channels import ChannelBook
from exchange.service.cryptopool import EnvelopeCrypto, Opening
from exchange.service.envelopes_v2 import OpeningV2, check_v2, is_v2, screen_mixed
from exchange.service.epochs import EpochBook
from exchange.service.outbox import Outbox, ReceiptRef, queued_row
from exchange.service.pushed_receipts import PushedReceipts
from exchange.service.records import receipt_row
from exchange.service.transport import PeerTransport
from exchange.store import AuditBuffer, Store, bulletins, cursors, insert_rows, outbox, receipts

# Failures that are not the pushed items' fault (a partner to ask is down, this node's database is
# busy): they go out as 5xx, which the sender retries with the batch as it was, never as a 422
# that would have it give the items up for good.
NOT_THE_ITEMS = (PeerError, Unavailable)
# Gap fills nested in one another at most (`Receiving._fill_gaps`).
GAP_DEPTH = 4


@dataclass(frozen=True)
class Screened:
    """A batch with every check that needs no channel state done, in worker processes or here
    (`Receiving.screen`): parsed, signatures checked, decrypted, and what is held already."""

    peer: NodeId
    relayed: bool
    items: Sequence[Opening]
    held: set[str]


@dataclass(frozen=True)
class Checked:
    """An envelope that passed every receiver rule: its header, id, and the row to store."""

    header: CitedHeader
    bid: str
    row: dict[str, Any] | None  # None: already held, nothing to store


# An envelope refused and left out of a catch-up page: its id (None if it did not parse), the
# error's class and detail (`Receiving.ingest_screened`).
Refused = tuple[str | None, str, str]


NO_LONGER_POSTS = "the author no longer holds the post right in the channel"


def _item_error(index: int, exc: ExchangeError) -> dict[str, Any]:
    return {"item": f"envelope {index}", "index": index, "type": type(exc).__name__, "detail": exc.detail}


class Receiving:
    """This node as a recipient of partners' transactions."""

    def __init__(
        self,
        me: NodeId,
        store: Store,
        fed: Federation,
        keys: NodeKeys,
        channels: ChannelBook,
        out: Outbox,
        transport: PeerTransport,
        crypto: EnvelopeCrypto | None = None,
        epochs: EpochBook | None = None,
    ) -> None:
        self.me = me
        self.store = store
        self.fed = fed
        self.keys = keys
        self.channels = channels
        self.outbox = out
        self.transport = transport
        self.crypto = crypto or EnvelopeCrypto(me, keys, fed, 0)
        self.epochs = epochs  # envelope v2 (docs/protocol.md, 15.8): None, v1 only
        self.pushed = PushedReceipts(me, fed, store, out)
        # Each partner's last transaction, done when it is: the next one is applied after it.
        self._turns: dict[str, asyncio.Future[None]] = {}

    async def check_stateful(self, o: Opening, peer: str = "") -> Checked:
        """Apply every receiver rule to one screened envelope, in the protocol's order; the ones
        that need no channel state were applied by `EnvelopeCrypto.open`, which kept their
        outcomes apart for this.

        Pushed envelopes must come from their author (`refused` says so); relayed ones (pulled in
        catch-up, or to fill a gap) may come from any member, since the author's signature
        vouches for them.
        """
        if isinstance(o, OpeningV2) and self.epochs is not None:  # v2: 15.8, with its epoch
            return Checked(*await check_v2(o, self.me, peer, self.fed, self.channels, self.epochs))
        if o.refused is not None:
            raise o.refused
        assert o.header is not None and o.bid is not None  # an Opening that was not refused parsed
        h = o.header
        # Signature first: nothing else is trusted, nor any owner asked for state, before it verifies.
        if o.bad_signature is not None:
            raise o.bad_signature
        try:
            state = await self.channels.ensure(
                h.channel, StateRef.model_construct(owner=h.state.owner, pos=h.state.pos, hash=h.state.hash)
            )
        except NotFound as exc:
            raise InvalidEnvelope(f"unknown channel state: {exc.detail}") from exc
        check_cited_state(h, self.fed, state)
        if o.bad_sealed is not None:
            raise o.bad_sealed
        if not self._still_posts(h):
            # Else a removed member could go on posting by citing a state from before its removal.
            raise InvalidEnvelope(NO_LONGER_POSTS)
        if self.me not in [r.node for r in h.recipients]:
            raise InvalidEnvelope("this node is not a recipient of the envelope")
        if o.undecryptable is not None:
            raise o.undecryptable
        return Checked(h, o.bid, o.row)

    def _still_posts(self, h: CitedHeader) -> bool:
        """Whether the author holds the post right in the channel as this node holds it now (9.8 rule 15)."""
        latest = self.channels.state(h.channel)
        return "post" in latest.rights(h.author) and not latest.closed

    async def receive(
        self, peer: NodeId, raw_events: Sequence[Any], raw_envelopes: Sequence[Any], raw_receipts: Sequence[Any] = ()
    ) -> list[Receipt]:
        """A transaction from a partner: channel events, then envelopes, then receipts. All or nothing
        for the envelopes and receipts; events that verify are the owners' signed logs and are kept
        even if an envelope is then refused (docs/protocol.md, section 9).

        A partner may have two transactions in flight (`Sender`): their envelopes are checked and
        opened at once, but each transaction is applied and stored only after the one from the
        same partner that came before it, so that a stream arrives in order.
        """
        self.outbox.peer_seen(peer)
        before = self._turns.get(peer)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._turns[peer] = mine
        try:
            screened = await self.screen(peer, raw_envelopes) if raw_envelopes else None
            if before is not None:
                # shield: a cancelled wait (the partner dropped this request) must not cancel the
                # transaction before ours, which is still being applied.
                await asyncio.shield(before)
            return await self._apply(peer, raw_events, screened, raw_receipts)
        finally:
            if before is not None and not before.done():
                # Cancelled while waiting: our turn ends when the one before ours ends, so the
                # transaction after ours still waits for it, and the stream stays in order.
                before.add_done_callback(lambda _done: self._end_turn(peer, mine))
            else:
                self._end_turn(peer, mine)

    def _end_turn(self, peer: NodeId, mine: asyncio.Future[None]) -> None:
        if not mine.done():
            mine.set_result(None)
        if self._turns.get(peer) is mine:
            del self._turns[peer]

    async def _apply(
        self, peer: NodeId, raw_events: Sequence[Any], screened: Screened | None, raw_receipts: Sequence[Any]
    ) -> list[Receipt]:
        # The receipts are checked before anything is stored: a bad one refuses the transaction,
        # and its events and envelopes with it. (They name bulletins this node wrote, which no
        # part of the transaction can add.)
        pushed = await self.pushed.check(peer, raw_receipts) if raw_receipts else []
        if raw_events:
            try:
                events = [ChannelEvent.model_validate(e) for e in raw_events]
            except ValueError as exc:
                raise EnvelopeRejected([{"item": "event", "type": "InvalidInput", "detail": str(exc)[:300]}]) from exc
            try:
                await self.channels.import_events(events, source=peer)
            except NOT_THE_ITEMS:
                raise
            except ExchangeError as exc:
                raise EnvelopeRejected([{"item": "event", "type": type(exc).__name__, "detail": exc.detail}]) from exc
        receipts_ = await self.ingest_screened(screened) if screened is not None else []
        if pushed:
            await self.pushed.store(peer, pushed)
        return receipts_

    async def ingest(
        self,
        peer: NodeId,
        raws: Sequence[Any],
        *,
        relayed: bool = False,
        gap_depth: int = 0,
        refused: list[Refused] | None = None,
        audit_as: str | None = None,
    ) -> list[Receipt]:
        """Verify a batch, fill any gap in its authors' streams, then persist and audit it before
        answering with receipts. `ingest_screened` says the rest."""
        screened = await self.screen(peer, raws, relayed=relayed)
        return await self.ingest_screened(screened, gap_depth=gap_depth, refused=refused, audit_as=audit_as)

    async def screen(
        self, peer: NodeId, raws: Sequence[Any], *, relayed: bool = False, unheld: bool = False
    ) -> Screened:
        """The first half of `ingest`: every check that needs no channel state, and decryption, in
        the crypto workers (or here), and a look-up of what is held already. Catch-up screens its
        next page while it stores the last one (`unheld`: see `EnvelopeCrypto.open`)."""
        self.outbox.peer_seen(peer)
        if self.epochs is not None and any(is_v2(raw) for raw in raws):  # v2 here, v1 in the workers
            items, held = await screen_mixed(self.crypto, self.fed, raws, peer, relayed, self.held, unheld)
            return Screened(peer, relayed, items, held)
        items, held = await self.crypto.open(raws, peer=peer, relayed=relayed, held=self.held, unheld=unheld)
        return Screened(peer, relayed, items, held)

    async def ingest_screened(
        self,
        screened: Screened,
        *,
        cursor: tuple[str, int] | None = None,
        gap_depth: int = 0,
        refused: list[Refused] | None = None,
        audit_as: str | None = None,
    ) -> list[Receipt]:
        """The second half of `ingest`: the rules that need state, gaps, then store and answer.

        With `refused` None (a transaction, docs/protocol.md 9 and 11.2) the batch is all or
        nothing: one bad envelope rejects it, and nothing is stored. With a list (a catch-up page,
        11.6) an envelope refused for good is left out and described in it, and the rest is kept:
        else one envelope this node can never take (a wrap it cannot open, an author since
        removed) would stop its catch-up of the channel at that page for good, from every member.
        A failure that is not the envelope's (a partner to ask is down, the database is busy)
        still fails the whole page, which the next sweep asks again. `cursor` (channel, position)
        is a catch-up cursor at the peer, saved in the same transaction, with a `catchup.refused`
        entry for what this page left out; or, without a cursor, `audit_as` names the channel of
        that entry (a pushed stream's gap, filled as a page of its own). An envelope that equivocates
        (another bulletin is stored, or in the page, as its author's seq) is refused as the others
        are: a page is not failed for good for it. `gap_depth`: how many gap fills this batch is
        nested in.
        """
        peer, relayed = screened.peer, screened.relayed
        errors: list[dict[str, Any]] = []
        checked: list[Checked] = []
        for o in screened.items:
            if o.refused is None and o.bid in screened.held and o.header is not None:
                # What is stored already was verified when it came: a retry or a second source.
                checked.append(Checked(o.header, o.bid, None))
                continue
            try:
                checked.append(await self.check_stateful(o, peer))
            except NOT_THE_ITEMS:
                raise
            except ExchangeError as exc:
                errors.append(_item_error(o.index, exc))
                if refused is not None:
                    refused.append((o.bid, type(exc).__name__, exc.detail))
        if errors and refused is None:
            raise EnvelopeRejected(sorted(errors, key=lambda e: e["index"]))
        await self._fill_gaps(peer, checked, gap_depth, refused)
        if relayed:
            checked = sorted(checked, key=lambda c: (c.header.author, c.header.channel, c.header.seq))

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> tuple[list[Receipt], list[Refused]]:
            page: list[Refused] | None = None if refused is None else []  # this attempt's (a job may run again)
            out = await self._store_checked(conn, audit, peer, checked, relayed=relayed, cursor=cursor, page=page)
            left = [*(refused or []), *(page or [])]
            channel = cursor[0] if cursor is not None else audit_as
            if left and channel is not None:
                audit.add(ev.catchup_refused(timestamp(), peer, channel, left))
            return out, page or []

        out, clashed = await self.store.write(job)
        if refused is not None:
            refused.extend(clashed)
        if relayed:
            self.outbox.wake(sorted({c.header.author for c in checked} - {self.me}))
        return out

    async def _store_checked(
        self,
        conn: AsyncConnection,
        audit: AuditBuffer,
        peer: str,
        checked: Sequence[Checked],
        *,
        relayed: bool,
        cursor: tuple[str, int] | None,
        page: list[Refused] | None,
    ) -> list[Receipt]:
        ids = [c.bid for c in checked]
        mine = sa.and_(
            receipts.c.bulletin_id == bulletins.c.id, receipts.c.node == self.me, receipts.c.status == "received"
        )
        known = {
            r.id: r.receipt
            for r in await conn.execute(
                sa.select(bulletins.c.id, receipts.c.receipt)
                .select_from(bulletins.outerjoin(receipts, mine))
                .where(bulletins.c.id.in_(ids))
            )
        }
        fresh = [c for c in checked if c.bid not in known]
        clashes: dict[str, str] = {}  # bulletin -> why it equivocates
        streams: dict[tuple[str, str, int], str] = {}
        for c in fresh:
            h = c.header
            key = (h.author, h.channel, h.seq)
            if key in streams and streams[key] != c.bid:
                clashes[c.bid] = f"{h.author} sent two bulletins as seq {h.seq} of {h.channel}"
            else:
                streams[key] = c.bid
        by_stream: dict[tuple[str, str], list[int]] = {}
        for author, channel, seq in streams:
            by_stream.setdefault((author, channel), []).append(seq)
        for (author, channel), numbers in by_stream.items():
            # One index seek per stream on (author, channel, seq): a tuple IN or an OR of streams
            # lets the planner fall back to a scan that grows with the store.
            for clash in await conn.execute(
                sa.select(bulletins.c.id, bulletins.c.seq).where(
                    bulletins.c.author == author, bulletins.c.channel == channel, bulletins.c.seq.in_(numbers)
                )
            ):
                bid = streams[author, channel, clash.seq]
                clashes[bid] = f"{author} already sent bulletin {clash.id} as seq {clash.seq} of {channel}"
        if clashes and page is None:  # a transaction: all or nothing
            raise Equivocation(next(iter(clashes.values())))
        if clashes and page is not None:  # a page: left out, and audited with it (evidence)
            page.extend((bid, Equivocation.__name__, why) for bid, why in clashes.items())
        # Rule 15 again, under the write lock: a removal taken in while this batch waited (for its
        # gap to be filled by a partner that may answer as slowly as it likes) refuses the batch,
        # as it would have had the removal come first.
        gone = list(dict.fromkeys(c.bid for c in fresh if c.bid not in clashes and not self._still_posts(c.header)))
        if gone and page is None:
            raise InvalidEnvelope(NO_LONGER_POSTS)
        if page is not None:
            page.extend((bid, InvalidEnvelope.__name__, NO_LONGER_POSTS) for bid in gone)
        clashes |= dict.fromkeys(gone, NO_LONGER_POSTS)
        # Rule 4's key, again under the roster held now (9.8 rule 18): a version installed since
        # the batch was screened that revokes the author or marks its key compromised refuses it.
        for c in fresh:
            if c.bid in clashes:
                continue
            try:
                check_signer(c.header, self.fed)
            except (InvalidEnvelope, UnknownPeer) as exc:
                if page is None:
                    raise
                page.append((c.bid, type(exc).__name__, exc.detail))
                clashes[c.bid] = exc.detail
        answer: dict[str, Receipt | None] = {}  # bulletin -> its receipt, in the order received
        by_author: dict[str, list[str]] = {}  # fresh bulletins, to receipt in one batch per author
        rows: list[dict[str, Any]] = []
        queued: list[dict[str, Any]] = []
        now = timestamp()
        done: set[str] = set()
        for c in checked:
            if c.bid in known:
                if known[c.bid] is not None:  # None: this node's own bulletin, which it does not receipt
                    # A retry gets the very receipt stored the first time, from whichever batch it was.
                    answer[c.bid] = parse_receipt(strict_loads(known[c.bid]))
                continue
            if c.bid in done or c.row is None or c.bid in clashes:
                continue
            done.add(c.bid)
            h = c.header
            answer[c.bid] = None
            by_author.setdefault(h.author, []).append(c.bid)
            rows.append({**c.row, "stored_at": now})
            if relayed and h.author != self.me and f" {self.me} " in c.row["recipients"]:
                # The author hears of it from us, since it did not hand it over itself; but not of
                # granted history (docs/protocol.md, 15.7): this node is no reader of its epoch, and
                # the author would refuse the receipt, and the rest of its transaction with it.
                queued.append(queued_row(h.author, "receipt", ReceiptRef(c.bid, "received")))
            entry = ev.BulletinReceived(
                {
                    "event": ev.BULLETIN_RECEIVED,
                    "at": now,
                    "bulletin": c.bid,
                    "channel": h.channel,
                    "author": h.author,
                    "seq": h.seq,
                    "from": peer,
                }
            )
            if relayed:
                entry["relayed"] = True
            audit.add(entry)
        signed: list[Receipt] = []
        for bids in by_author.values():
            # One signature per author's batch. Each proof shows its neighbours' leaf hashes, and
            # an author has no business learning what else this node received from others.
            batch = make_receipts(bids, self.me, "received", now, self.keys.signing)
            answer.update(zip(bids, batch, strict=True))
            signed.extend(batch)
        out = [r for r in answer.values() if r is not None]
        if rows:
            await insert_rows(conn, bulletins, rows)
            await insert_rows(conn, receipts, [receipt_row(r) for r in signed])
        if queued:
            await insert_rows(conn, outbox, queued)
        if cursor is not None:
            await save_cursor(conn, peer, *cursor)
        return out

    async def _fill_gaps(
        self, source: str, checked: Sequence[Checked], depth: int, refused: list[Refused] | None
    ) -> None:
        """Fetch from `source` what precedes a batch in each author's stream but is not here yet.

        Only streams this node already receives are checked: before its first bulletin of a
        stream, a node cannot tell what was meant for it, and catch-up covers that. What is
        fetched is a batch of its own, whose gaps are filled in turn, `GAP_DEPTH` deep at most: an
        honest source answers with the whole gap (less what is not meant for this node) and the
        next fill finds little or nothing, while a hostile one could answer one bulletin a time
        and nest fills a thousand deep. What stays missing, catch-up fetches. A fill for a
        catch-up page (`refused` a list) leaves out what it refuses, as the page does.
        """
        if depth >= GAP_DEPTH:
            return
        wanted: dict[tuple[str, str], tuple[int, set[int]]] = {}
        for c in checked:
            h = c.header
            top, seqs = wanted.get((h.author, h.channel), (0, set()))
            wanted[h.author, h.channel] = (max(top, h.seq), seqs | {h.seq})
        if not wanted:
            return
        stored: dict[tuple[str, str], int] = {}
        async with self.store.read() as conn:
            # One look-up per stream, each an index seek on (author, channel, seq): a tuple IN or a
            # GROUP BY over the table would cost in proportion to everything stored.
            for author, channel in wanted:
                top = await conn.scalar(
                    sa.select(sa.func.max(bulletins.c.seq)).where(
                        bulletins.c.author == author, bulletins.c.channel == channel
                    )
                )
                if top is not None:
                    stored[author, channel] = int(top)
        for (author, channel), (top, seqs) in wanted.items():
            have = stored.get((author, channel), 0)
            # Counted, not listed: a member may push one signed envelope at seq 2**31 - 1, and
            # a set of the numbers between would be gigabytes built on the event loop.
            if have == 0 or top - have - 1 <= sum(1 for s in seqs if have < s < top):
                continue
            limit = min(top - have - 1, 1000)
            path = f"/fed/v1/channels/{channel}/envelopes?author={author}&after_seq={have}&limit={limit}"
            items = gap_items(await self.transport.fetch(NodeId(source), path), source, limit)
            missing = [i["envelope"] for i in items if i["envelope"] is not None and i["seq"] not in seqs]
            if missing:
                # Stored as a catch-up page of its own (11.2): what it refuses is left out, not the
                # push refused for it; else the author, splitting its batch, would take every later
                # bulletin of the stream for refused for good. Audited here for a push.
                left: list[Refused] = [] if refused is None else refused
                await self.ingest(
                    NodeId(source),
                    missing,
                    relayed=True,
                    gap_depth=depth + 1,
                    refused=left,
                    audit_as=channel if refused is None else None,
                )

    async def held(self, ids: Sequence[str]) -> set[str]:
        """Which of these bulletins this node holds already."""
        async with self.store.read() as conn:
            return set(await conn.scalars(sa.select(bulletins.c.id).where(bulletins.c.id.in_(list(ids)))))


async def save_cursor(conn: AsyncConnection, peer: str, channel: str, position: int) -> None:
    """How far this node has pulled `channel` from `peer`, in the partner's storage order."""
    where = sa.and_(cursors.c.peer == peer, cursors.c.channel == channel)
    done = await conn.execute(sa.update(cursors).where(where).values(cursor=position))
    if done.rowcount == 0:
        await conn.execute(sa.insert(cursors).values(peer=peer, channel=channel, cursor=position))
