"""Push delivery: a durable outbox, drained in batches by one sender loop per destination
(exchange.service.sender).

Partners are reached through the `PeerTransport` given at construction, so a slow or dead peer
delays nobody else and a test can stand in for a peer without a TLS server.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit import events as ev
from exchange.clock import timestamp
from exchange.config import NodeConfig
from exchange.errors import InvalidEnvelope
from exchange.model import NodeId, Receipt
from exchange.protocol.receipt import parse_receipt, signatures_needed, verify_receipts
from exchange.protocol.roster import Federation
from exchange.service.leases import Leases
from exchange.service.records import receipt_row
from exchange.service.transport import PeerTransport
from exchange.store import AuditBuffer, Store, bulletins, channel_events, outbox, receipts

if TYPE_CHECKING:
    from exchange.service.sender import Sender

log = logging.getLogger("exchange.outbox")

FED_ENVELOPES = "/fed/v1/envelopes"
MAX_TRANSACTION_BYTES = 32 * 1024 * 1024  # half the receiver's request limit
# 4xx answers that say "not now" rather than "never": the batch is retried as it is.
RETRYABLE_REFUSALS = (401, 403, 408, 429)

OutKind = Literal["envelope", "receipt", "event"]


@dataclass(frozen=True)
class EnvelopeRef:
    """A bulletin's envelope, queued for a reader."""

    bulletin: str

    def encode(self) -> str:
        return self.bulletin


@dataclass(frozen=True)
class ReceiptRef:
    """This node's receipt of a bulletin ('received' or 'opened'), queued for its author."""

    bulletin: str
    status: str

    def encode(self) -> str:
        return f"{self.bulletin}:{self.status}"


@dataclass(frozen=True)
class EventRef:
    """One channel event, queued for a node the channel's log concerns."""

    channel: str
    pos: int

    def encode(self) -> str:
        return f"{self.channel}:{self.pos}"


OutRef = EnvelopeRef | ReceiptRef | EventRef


def parse_ref(kind: str, ref: str) -> OutRef:
    """The typed reference of an outbox row (the table keeps it as one string column)."""
    if kind == "envelope":
        return EnvelopeRef(ref)
    if kind == "receipt":
        bid, status = ref.split(":", 1)
        return ReceiptRef(bid, status)
    if kind == "event":
        channel, pos = ref.rsplit(":", 1)
        return EventRef(channel, int(pos))
    raise ValueError(f"unknown outbox kind {kind!r}")


def queued_row(dest: str, kind: OutKind, ref: OutRef) -> dict[str, Any]:
    """A new outbox row."""
    return {"dest": dest, "kind": kind, "ref": ref.encode(), "state": "queued"}


@dataclass(frozen=True)
class OutItem:
    """One queued item for a destination, with its wire bytes."""

    n: int
    kind: OutKind
    ref: OutRef
    data: bytes

    @property
    def key(self) -> str:
        """`kind:ref`, as transaction ids are computed from."""
        return f"{self.kind}:{self.ref.encode()}"


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

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def within_bytes(batch: list[OutItem], limit: int = MAX_TRANSACTION_BYTES) -> list[OutItem]:
    """The longest head of `batch` that fits in one request (always at least one item)."""
    total = 0
    for i, item in enumerate(batch):
        total += len(item.data) + 1
        if total > limit and i:
            return batch[:i]
    return batch


def transaction_id(item_keys: list[str]) -> str:
    """The same batch always gets the same id, so a retried transaction is recognisable."""
    return hashlib.sha256("\n".join(item_keys).encode()).hexdigest()[:32]


def transaction_body(txn: str, batch: Sequence[OutItem]) -> bytes:
    """The federation transaction: events, then envelopes, then pushed receipts."""

    def joined(kind: str) -> bytes:
        return b",".join(i.data for i in batch if i.kind == kind)

    return b'{"txn":"%s","events":[%s],"envelopes":[%s],"receipts":[%s]}' % (
        txn.encode(),
        joined("event"),
        joined("envelope"),
        joined("receipt"),
    )


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

    # -- waking the loops -------------------------------------------------------------------

    def wake(self, dests: Sequence[str]) -> None:
        """New work is queued for `dests`."""
        for dest in dests:
            if dest in self.senders:
                self.senders[dest].wake()

    def peer_seen(self, peer: str) -> None:
        """`peer` just talked to us, so it is up: retry now rather than after the backoff."""
        if peer in self.senders:
            self.senders[peer].peer_seen()

    def statuses(self, queued: dict[str, int]) -> list[PeerStatus]:
        """Each partner's delivery status, with the queue lengths given."""
        out = []
        for peer, sender in sorted(self.senders.items()):
            sender.status.queued = queued.get(peer, 0)
            out.append(sender.status)
        return out

    # -- the queue --------------------------------------------------------------------------

    async def pending(self, dest: str, limit: int, *, after: int = 0) -> list[OutItem]:
        """Queued items for one destination, oldest first; `after`: only those queued after item `after`."""
        async with self.store.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(outbox.c.n, outbox.c.kind, outbox.c.ref)
                    .where(outbox.c.dest == dest, outbox.c.state == "queued", outbox.c.n > after)
                    .order_by(outbox.c.n)
                    .limit(limit)
                )
            ).all()
            refs = [(r.n, r.kind, parse_ref(r.kind, r.ref)) for r in rows]
            data = await self._wire_bytes(conn, [ref for _, _, ref in refs])
        return [OutItem(n, kind, ref, data[ref]) for n, kind, ref in refs]

    async def _wire_bytes(self, conn: AsyncConnection, refs: Sequence[OutRef]) -> dict[OutRef, bytes]:
        data: dict[OutRef, bytes] = {}
        envs = [r.bulletin for r in refs if isinstance(r, EnvelopeRef)]
        if envs:
            for bid, raw in await conn.execute(
                sa.select(bulletins.c.id, bulletins.c.envelope).where(bulletins.c.id.in_(envs))
            ):
                data[EnvelopeRef(bid)] = bytes(raw)
        owed = [r for r in refs if isinstance(r, ReceiptRef)]
        if owed:
            # One look-up for the batch's receipts (catch-up queues thousands for their authors).
            stored = {
                ReceiptRef(bid, status): raw
                for bid, status, raw in await conn.execute(
                    sa.select(receipts.c.bulletin_id, receipts.c.status, receipts.c.receipt).where(
                        receipts.c.node == self.me, receipts.c.bulletin_id.in_(sorted({r.bulletin for r in owed}))
                    )
                )
            }
            for receipt in owed:
                data[receipt] = str(stored.get(receipt)).encode()
        for ref in refs:
            if isinstance(ref, EventRef):
                raw = await conn.scalar(
                    sa.select(channel_events.c.event).where(
                        channel_events.c.channel == ref.channel, channel_events.c.pos == ref.pos
                    )
                )
                data[ref] = str(raw).encode()
        return data

    async def accept_receipts(self, dest: str, sent: Sequence[OutItem], raw_receipts: Sequence[Any]) -> int:
        """Check the receipts `dest` returned, store them, and mark what was sent delivered."""
        envelope_ids = {i.ref.bulletin for i in sent if isinstance(i.ref, EnvelopeRef)}
        got: dict[str, Receipt] = {}
        for raw in raw_receipts:
            receipt = parse_receipt(raw)
            if receipt.node != dest or receipt.status != "received" or receipt.bulletin not in envelope_ids:
                raise InvalidEnvelope("a receipt does not match what was sent")
            got[receipt.bulletin] = receipt
        if set(got) != envelope_ids:
            raise InvalidEnvelope("the peer did not return a receipt for every envelope")
        # One signature per batch statement and one inclusion proof per receipt. A retried batch
        # can mix statements: several verifications go to a thread (Ed25519 releases the GIL).
        checked = list(got.values())
        if signatures_needed(checked) > 1:
            await asyncio.to_thread(verify_receipts, checked, self.fed)
        else:
            verify_receipts(checked, self.fed)

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> int:
            await self.leases.check(conn, dest)
            existing = set(
                await conn.scalars(
                    sa.select(receipts.c.bulletin_id).where(
                        receipts.c.node == dest,
                        receipts.c.status == "received",
                        receipts.c.bulletin_id.in_(list(got)),
                    )
                )
            )
            fresh = [r for b, r in got.items() if b not in existing]
            if fresh:
                await conn.execute(sa.insert(receipts), [receipt_row(r) for r in fresh])
            await conn.execute(sa.update(outbox).where(outbox.c.n.in_([i.n for i in sent])).values(state="delivered"))
            for r in fresh:
                audit.add(
                    ev.BulletinDelivered(
                        event=ev.BULLETIN_DELIVERED, at=timestamp(), bulletin=r.bulletin, to=dest, receipt_at=r.at
                    )
                )
            return len(fresh)

        return await self.store.write(job)

    async def mark_sent(self, dest: str, items: Sequence[OutItem], txn: str) -> None:
        """Audit the first attempt to send each envelope to `dest` (retries are not audited)."""
        envelopes = [i for i in items if isinstance(i.ref, EnvelopeRef)]
        if not envelopes:
            return

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            await self.leases.check(conn, dest)
            ns = [i.n for i in envelopes]
            fresh = set(await conn.scalars(sa.select(outbox.c.n).where(outbox.c.n.in_(ns), outbox.c.sent_at.is_(None))))
            if not fresh:
                return
            now = timestamp()
            await conn.execute(sa.update(outbox).where(outbox.c.n.in_(fresh)).values(sent_at=now))
            for item in envelopes:
                if item.n in fresh:
                    audit.add(
                        ev.BulletinSent(event=ev.BULLETIN_SENT, at=now, bulletin=item.ref.encode(), to=dest, txn=txn)
                    )

        await self.store.write(job)

    async def reject_queued(self, dest: str, item: OutItem, detail: str) -> None:
        """The destination refused this item for good: stop sending it, and audit why."""

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            await self.leases.check(conn, dest)
            await conn.execute(sa.update(outbox).where(outbox.c.n == item.n).values(state="rejected", detail=detail))
            audit.add(
                ev.SendRefused(
                    event=ev.SEND_REFUSED,
                    at=timestamp(),
                    kind=item.kind,
                    ref=item.ref.encode(),
                    to=dest,
                    reason=detail,
                )
            )

        await self.store.write(job)

    async def queued_counts(self) -> dict[str, int]:
        """How many items wait for each destination."""
        async with self.store.read() as conn:
            rows = await conn.execute(
                sa.select(outbox.c.dest, sa.func.count()).where(outbox.c.state == "queued").group_by(outbox.c.dest)
            )
            return {r[0]: int(r[1]) for r in rows}


__all__ = [
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
