"""Push delivery: a durable outbox, drained in batches by one sender loop per destination
(exchange.service.sender). The senders' reads of their queues, and their records of what they
sent and what was delivered, are gathered into one statement for all of them
(exchange.service.coalesce): one post wakes a sender per reader, and the author's cost per reader
is then its audit entries and receipt rows, not statements.

Partners are reached through the `PeerTransport` given at construction, so a slow or dead peer
delays nobody else and a test can stand in for a peer without a TLS server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit import events as ev
from exchange.clock import timestamp
from exchange.config import NodeConfig
from exchange.errors import LeaseLost, Unavailable
from exchange.model import NodeId
from exchange.protocol.receipt import (
    StoredReceipt,
    answered,
    signatures_needed,
    stored,
    verify_receipts,
    whole_batches,
)
from exchange.protocol.receipt_batches import checked_batches
from exchange.protocol.roster import Federation
from exchange.service.coalesce import Coalesced
from exchange.service.leases import Leases
from exchange.service.outbox_refs import (
    EnvelopeRef,
    EventRef,
    OutItem,
    OutRef,
    ReceiptRef,
    parse_ref,
    queued_row,
)
from exchange.service.outbox_sql import READS_PER_STATEMENT, Queued, kept_batches, queue_heads, rejected
from exchange.service.outbox_txn import (
    MAX_TRANSACTION_BYTES,
    Bodies,
    head_within,
    transaction_id,
    within_bytes,
)
from exchange.service.records import receipt_row
from exchange.service.transport import PeerTransport
from exchange.store import (
    OUTBOX_QUEUED,
    AuditBuffer,
    Store,
    among,
    bulletins,
    channel_events,
    insert_rows,
    outbox,
    receipts,
)

if TYPE_CHECKING:
    from exchange.service.sender import Sender

log = logging.getLogger("exchange.outbox")

FED_ENVELOPES = "/fed/v1/envelopes"
# Row numbers or ids in one IN list: SQLite and asyncpg take at most 32,766 parameters a statement.
IDS_PER_STATEMENT = 10_000
SMALL_ENVELOPE = 256 * 1024  # envelopes up to this size are read with their sizes, in one statement
SMALL_ITEM = 4096  # what a queued receipt or channel event is counted as before it is read (`within_bytes` checks)
# 4xx answers that say "not now" rather than "never": the batch is retried as it is.
RETRYABLE_REFUSALS = (401, 403, 408, 429)
# While more than MANY_PUSHES pushes are under way (a post to a large channel: `Outbox.many_pushes`),
# a partner gets no read-ahead (exchange.service.sender) and the partners' answers are stored
# together, waiting up to GATHER_WINDOW seconds for one another (`Outbox._more_answers`). A post's
# rows lie together in the outbox's and the receipts' pages, a partner's are spread over every post:
# at 200 readers, stored a few answers at a time, each transaction rewrote the same bulletins' pages,
# with an audit entry per bulletin each (bench/README.md, "2026-12-05: partners' answers stored together").
MANY_PUSHES = 4
GATHER_WINDOW = 0.25

T = TypeVar("T")


@dataclass(frozen=True)
class Ask:
    """A sender's read of its queue: at most `limit` items for `dest` queued after item `after`."""

    dest: str
    limit: int
    after: int = 0


# A batch about to be sent: to whom, its items.
Sent = tuple[str, Sequence[OutItem]]
# A batch delivered: to whom, its items, the receipts returned (checked), by bulletin id.
Delivered = tuple[str, Sequence[OutItem], dict[str, StoredReceipt]]


@dataclass
class PeerStatus:
    """What `exchange peers`, the API and the console show about one destination."""

    peer: str
    queued: int = 0
    in_flight: int = 0
    delivered: int = 0
    last_success: str | None = None
    last_error: str | None = None
    failures: int = 0
    backoff_until: str | None = None
    # set while the partner is served full catch-up pages (it is behind and pulls what is queued
    # here): no new batch is pushed to it until then, or until it is served a page that is not full
    pull_hold_until: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Outbox:
    """The durable queue of what this node owes its partners, and the loops that deliver it."""

    def __init__(self, config: NodeConfig, store: Store, fed: Federation, transport: PeerTransport) -> None:
        self.config = config
        self.me = NodeId(config.id)
        self.store = store
        self.fed = fed
        self.transport = transport
        self.senders: dict[str, Sender] = {}  # one per partner, kept by SenderLoops (exchange.service.senders)
        self.leases = Leases(store)  # several workers: one sends to a partner at a time
        # Every sender's reads and writes, gathered (exchange.service.coalesce)
        self._reads = Coalesced(self._pending_many, "outbox-reads", _everyones)
        self._sent = Coalesced(self._mark_sent_many, "outbox-sent", _everyones)
        self._delivered = Coalesced(
            self._delivered_many, "outbox-delivered", _everyones, more=self._more_answers, window=GATHER_WINDOW
        )
        self.bodies = Bodies()
        self.pushes_under_way = 0  # batches sent and not yet landed, to every partner (exchange.service.sender)

    def push_started(self) -> None:
        self.pushes_under_way += 1

    def push_ended(self) -> None:
        """A push landed or failed: answers gathered waiting for it no longer wait (`_more_answers`)."""
        self.pushes_under_way -= 1
        self._delivered.nudge()

    def many_pushes(self) -> bool:
        """Whether more than MANY_PUSHES pushes are under way, to as many partners (a post to a large channel)."""
        return self.pushes_under_way > MANY_PUSHES

    def _more_answers(self, gathered: int) -> bool:
        """Whether other partners' answers are on their way while `gathered` wait to be stored: while
        `many_pushes`, the answers that land within GATHER_WINDOW of each other go in one transaction."""
        return self.many_pushes() and gathered < self.pushes_under_way

    def tasks(self) -> list[asyncio.Task[None]]:
        """The gathered reads and writes under way, for the node to cancel when it stops."""
        return [t for c in (self._reads, self._sent, self._delivered) if (t := c.task()) is not None]

    # -- waking the loops -------------------------------------------------------------------

    def wake(self, dests: Sequence[str]) -> None:
        """New work is queued for `dests`."""
        for dest in dests:
            if dest in self.senders:
                self.senders[dest].wake()

    def peer_seen(self, peer: str, *, tell: bool = True) -> None:
        """`peer` just talked to us, so it is up: retry now rather than after the backoff; with
        `tell`, another worker that holds its lease is told too (`Leases.seen`)."""
        if peer in self.senders:
            self.senders[peer].peer_seen()
            if tell:
                self.leases.seen(peer)

    def peer_pulled(self, peer: str, more: bool) -> None:
        """`peer` was served a catch-up page, full (`more`) or not (exchange.service.sender)."""
        if peer in self.senders:
            self.senders[peer].peer_pulled(more)

    def statuses(self, queued: dict[str, int]) -> list[PeerStatus]:
        """Each partner's delivery status, with the queue lengths given."""
        out = []
        for peer, sender in sorted(self.senders.items()):
            sender.status.queued = queued.get(peer, 0)
            sender.status.pull_hold_until = sender.pull_hold_until()
            out.append(sender.status)
        return out

    # -- the queue --------------------------------------------------------------------------

    async def pending(self, dest: str, limit: int, *, after: int = 0) -> list[OutItem]:
        """Queued items for one destination, oldest first; `after`: only those queued after item `after`."""
        return (await self._pending_many([Ask(dest, limit, after)]))[0]

    async def queued(self, dest: str, limit: int, *, after: int = 0) -> list[OutItem]:
        """`pending`, read together with the other senders' reads of the moment (one post wakes
        every reader's sender): one statement for all their queues, one look-up of the envelopes."""
        return await self._reads(Ask(dest, limit, after))

    async def _pending_many(self, asks: Sequence[Ask]) -> list[list[OutItem]]:
        while True:
            got, data = await self._read_queues(asks)
            missing: dict[int, Queued] = {
                n: (ask.dest, n, kind, ref)
                for ask, refs in zip(asks, got, strict=True)
                for n, kind, ref in refs
                if ref not in data
            }
            if not missing:
                return [[OutItem(n, kind, ref, data[ref]) for n, kind, ref in refs] for refs in got]
            # Its stored row gone (edited by hand, or lost), an item can never be sent: it is
            # rejected, audited, and the queues are read again, so that the items behind it go.
            await self._reject_missing(list(missing.values()))

    async def _read_queues(
        self, asks: Sequence[Ask]
    ) -> tuple[list[list[tuple[int, Any, OutRef]]], dict[OutRef, bytes]]:
        """Each ask's head, in order, and the wire bytes of what of it is stored."""
        got: list[list[tuple[int, Any, OutRef]]] = [[] for _ in asks]
        refs: dict[tuple[str, str], OutRef] = {}
        async with self.store.read() as conn:
            for first in range(0, len(asks), READS_PER_STATEMENT):
                part = asks[first : first + READS_PER_STATEMENT]
                params: dict[str, Any] = {}
                for i, a in enumerate(part):
                    params |= {f"d{i}": a.dest, f"a{i}": a.after, f"l{i}": a.limit}
                # One ref per item for every queue that holds it (at 200 readers a post is in 199):
                # the look-ups of its bytes below then find it by identity.
                for ask, n, kind, ref in (await conn.execute(queue_heads(len(part)), params)).all():
                    if (parsed := refs.get((kind, ref))) is None:
                        parsed = refs[kind, ref] = parse_ref(kind, ref)
                    got[first + ask].append((n, kind, parsed))
            got, data = await self._within_bytes(conn, got)
            data |= await self._wire_bytes(
                conn, [r for r in {ref for refs in got for _, _, ref in refs} if r not in data]
            )
        return [sorted(refs, key=_first) for refs in got], data

    async def _within_bytes(
        self, conn: AsyncConnection, got: list[list[tuple[int, Any, OutRef]]]
    ) -> tuple[list[list[tuple[int, Any, OutRef]]], dict[OutRef, bytes]]:
        """Each queue's head cut to one request (`within_bytes`) by the envelopes' stored sizes, the
        small ones read with them: a backlog of large envelopes (up to 8 MiB) costs a read of one
        request's worth per partner, not of `batch_size` of them; larger ones are read after."""
        held = {ref.bulletin: ref for refs in got for _, _, ref in refs if isinstance(ref, EnvelopeRef)}
        envs = sorted(held)
        sizes: dict[str, int] = {}
        data: dict[OutRef, bytes] = {}
        size = sa.func.length(bulletins.c.envelope)
        small = sa.case((size <= SMALL_ENVELOPE, bulletins.c.envelope), else_=sa.null())
        for part in _chunks(envs, 500):
            for bid, length, raw in await conn.execute(
                sa.select(bulletins.c.id, size, small).where(among(conn.dialect, bulletins.c.id, part))
            ):
                sizes[bid] = int(length)
                if raw is not None:
                    data[held[bid]] = bytes(raw)  # the queues' own ref: found by identity

        def size_of(ref: OutRef) -> int:
            return sizes.get(ref.bulletin, 0) if isinstance(ref, EnvelopeRef) else SMALL_ITEM

        heads = [sorted(head, key=_first) for head in got]
        return [head[: head_within((size_of(r) for *_, r in head), MAX_TRANSACTION_BYTES)] for head in heads], data

    async def _wire_bytes(self, conn: AsyncConnection, refs: Sequence[OutRef]) -> dict[OutRef, bytes]:
        data: dict[OutRef, bytes] = {}
        envs = [r.bulletin for r in refs if isinstance(r, EnvelopeRef)]
        if envs:
            for bid, raw in await conn.execute(
                sa.select(bulletins.c.id, bulletins.c.envelope).where(among(conn.dialect, bulletins.c.id, envs))
            ):
                data[EnvelopeRef(bid)] = bytes(raw)
        owed = [r for r in refs if isinstance(r, ReceiptRef)]
        if owed:
            # One look-up for the batch's receipts (catch-up queues thousands for their authors).
            stored = {
                ReceiptRef(bid, status): raw
                for bid, status, raw in await conn.execute(
                    sa.select(receipts.c.bulletin_id, receipts.c.status, receipts.c.receipt).where(
                        receipts.c.node == self.me,
                        among(conn.dialect, receipts.c.bulletin_id, sorted({r.bulletin for r in owed})),
                    )
                )
            }
            data |= {receipt: str(stored[receipt]).encode() for receipt in owed if stored.get(receipt) is not None}
        for ref in refs:
            if isinstance(ref, EventRef):
                raw = await conn.scalar(
                    sa.select(channel_events.c.event).where(
                        channel_events.c.channel == ref.channel, channel_events.c.pos == ref.pos
                    )
                )
                if raw is not None:
                    data[ref] = str(raw).encode()
        return data  # without what is not stored: `_pending_many` rejects it

    async def accept_receipts(
        self, dest: str, sent: Sequence[OutItem], raw_receipts: Sequence[Any], raw_batches: Any = ()
    ) -> int:
        """Check the receipts `dest` returned, in full or in whole batches (the batch form,
        docs/protocol.md 10.4), store them, and mark what was sent delivered."""
        envelope_ids = {i.ref.bulletin for i in sent if isinstance(i.ref, EnvelopeRef)}
        batched = checked_batches(raw_batches, dest, envelope_ids, self.fed) if raw_batches else {}
        if batched:
            envelope_ids -= batched.keys()
        got = whole_batches(raw_receipts, dest, envelope_ids, self.fed)  # the usual answer, checked
        if got is None:
            parsed = answered(raw_receipts, dest, envelope_ids)
            # One signature per batch statement and one inclusion proof per receipt. A retried
            # batch can mix statements: several verifications go to a thread (Ed25519 releases the GIL).
            checked = list(parsed.values())
            if signatures_needed(checked) > 1:
                await asyncio.to_thread(verify_receipts, checked, self.fed)
            else:
                verify_receipts(checked, self.fed)
            got = {b: stored(r) for b, r in parsed.items()}
        return await self._delivered((dest, sent, got | batched))

    async def _delivered_many(self, asks: Sequence[Delivered]) -> list[int | Exception]:
        """Store the receipts of several partners' batches and mark the batches delivered, in one
        job: one statement each for the receipts held, the new ones and the outbox."""

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> list[int | Exception]:
            lost = await self.leases.check_many(conn, {dest for dest, _, _ in asks})
            kept = [(dest, sent, got) for dest, sent, got in asks if dest not in lost]
            dests = sorted({dest for dest, _, _ in kept})
            held: set[tuple[str, str]] = set()
            for bids in _chunks(sorted({b for _, _, got in kept for b in got}), IDS_PER_STATEMENT):
                held |= {
                    (r.node, r.bulletin_id)
                    for r in await conn.execute(
                        sa.select(receipts.c.node, receipts.c.bulletin_id).where(
                            among(conn.dialect, receipts.c.bulletin_id, bids),
                            receipts.c.node.in_(dests),
                            receipts.c.status == "received",
                        )
                    )
                }
            fresh: list[list[StoredReceipt]] = []  # each ask's new receipts (a receipt is new once)
            for dest, _, got in asks:
                fresh.append([] if dest in lost else [r for b, r in got.items() if (dest, b) not in held])
                held |= {(dest, r.bulletin) for r in fresh[-1]}
            # A batch taken in the batch form is kept once, its receipts as its leaves (10.4).
            batches = await kept_batches(
                conn, list({r.batch: None for new in fresh for r in new if r.batch is not None})
            )
            rows = [receipt_row(r, batches.get(r.batch) if r.batch else None) for new in fresh for r in new]
            if rows:
                await insert_rows(conn, receipts, rows)
            # A row cancelled (its destination removed or revoked) or rejected meanwhile keeps its state.
            still = sa.case((outbox.c.state == "queued", "delivered"), else_=outbox.c.state)
            for ns in _chunks([i.n for _, sent, _ in kept for i in sent], IDS_PER_STATEMENT):
                await conn.execute(sa.update(outbox).where(among(conn.dialect, outbox.c.n, ns)).values(state=still))
            delivered: dict[str, dict[str, str]] = {}  # one entry per bulletin, for every recipient
            for (dest, _, _), new in zip(asks, fresh, strict=True):
                for r in new:
                    delivered.setdefault(r.bulletin, {})[dest] = r.at
            now = timestamp()
            for bulletin, to in delivered.items():
                audit.add(ev.BulletinDeliveredTo(event=ev.BULLETIN_DELIVERED_TO, at=now, bulletin=bulletin, to=to))
            return [
                _lease_lost(dest) if dest in lost else len(new) for (dest, _, _), new in zip(asks, fresh, strict=True)
            ]

        return await self.store.write(job)

    async def mark_sent(self, dest: str, items: Sequence[OutItem]) -> list[OutItem]:
        """Mark a batch for `dest` sent, just before it goes: what of it is still queued, in order.
        An item cancelled since it was read (its destination removed from the channel, or revoked)
        or rejected is dropped, and goes nowhere. The first attempt to send each envelope is
        audited, with the transaction id of what is sent (retries are not)."""
        return await self._sent((dest, items))

    async def _mark_sent_many(self, asks: Sequence[Sent]) -> list[list[OutItem] | Exception]:
        """`mark_sent` for several partners' batches in one job: one statement marks them all; a
        second reads the state of what was marked before (retries), if any was."""

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> list[list[OutItem] | Exception]:
            lost = await self.leases.check_many(conn, {dest for dest, _ in asks})
            now = timestamp()
            ns = sorted({i.n for dest, items in asks if dest not in lost for i in items})
            # Marked only if still queued, the state compared in the SET: with the state in the
            # WHERE, SQLite (no statistics) may seek a state index rather than the numbers' key for
            # a long list of numbers, and read every item queued for every partner.
            mark = sa.case((outbox.c.state == "queued", now), else_=outbox.c.sent_at)
            states: dict[int, str] = {}
            for part in _chunks(ns, IDS_PER_STATEMENT):
                unsent = sa.and_(among(conn.dialect, outbox.c.n, part), outbox.c.sent_at.is_(None))
                marked = sa.update(outbox).where(unsent).values(sent_at=mark).returning(outbox.c.n, outbox.c.state)
                states.update((n, state) for n, state in (await conn.execute(marked)).all())
            fresh = {n for n, state in states.items() if state == "queued"}  # a first attempt
            for part in _chunks([n for n in ns if n not in states], IDS_PER_STATEMENT):  # retries
                held = sa.select(outbox.c.n, outbox.c.state).where(among(conn.dialect, outbox.c.n, part))
                states.update((n, state) for n, state in await conn.execute(held))
            queued = {n for n, state in states.items() if state == "queued"}
            # One entry per bulletin for every recipient it went to in this job, not one per recipient.
            sent: dict[str, dict[str, str]] = {}
            answers: list[list[OutItem] | Exception] = []
            for dest, items in asks:
                if dest in lost:
                    answers.append(_lease_lost(dest))
                    continue
                going = [i for i in items if i.n in queued]
                answers.append(going)
                txn = transaction_id([i.key for i in going])  # of what is sent, as the sender's is
                for item in going:
                    if item.n in fresh and isinstance(item.ref, EnvelopeRef):
                        fresh.discard(item.n)  # audited once, should two asks name it
                        sent.setdefault(item.ref.encode(), {})[dest] = txn
            for bulletin, to in sent.items():
                audit.add(ev.BulletinSentTo(event=ev.BULLETIN_SENT_TO, at=now, bulletin=bulletin, to=to))
            return answers

        return await self.store.write(job)

    async def reject_queued(self, dest: str, item: OutItem, detail: str) -> None:
        """The destination refused this item for good: stop sending it, and audit why. An item
        delivered meanwhile (its receipt came another way) or cancelled keeps its state, unaudited."""

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            await self.leases.check(conn, dest)
            await rejected(conn, audit, (dest, item.n, item.kind, item.ref), detail)

        await self.store.write(job)

    async def _reject_missing(self, items: Sequence[Queued]) -> None:
        """Reject queued items whose envelope, receipt or channel event this node no longer holds,
        each audited as refused with that reason. Not under the destination's lease: the reason
        is the same for every worker, and a row rejected already is left as it is."""

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            for item in items:
                await rejected(conn, audit, item, f"its stored {item[2]} is missing from this node's database")

        await self.store.write(job)

    async def queued_counts(self) -> dict[str, int]:
        """How many items wait for each destination."""
        async with self.store.read() as conn:
            rows = await conn.execute(
                sa.select(outbox.c.dest, sa.func.count()).where(OUTBOX_QUEUED).group_by(outbox.c.dest)
            )
            return {r[0]: int(r[1]) for r in rows}


def _chunks(values: Sequence[T], size: int) -> list[Sequence[T]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


def _first(row: tuple[int, Any, OutRef]) -> int:
    return row[0]


def _everyones(exc: Exception) -> bool:
    """A failure of the store itself (busy, locked, unreachable), not of one sender's request."""
    return isinstance(exc, (Unavailable, OSError, sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError))


def _lease_lost(dest: str) -> LeaseLost:
    return LeaseLost(f"another worker now sends to {dest}")


__all__ = [
    "Ask",
    "EnvelopeRef",
    "EventRef",
    "OutItem",
    "Outbox",
    "PeerStatus",
    "ReceiptRef",
    "parse_ref",
    "queued_row",
    "transaction_id",
    "within_bytes",
]
