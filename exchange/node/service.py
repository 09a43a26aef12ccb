"""What a node does, independent of HTTP: post, ingest, list and read bulletins, keep receipts.

Rights are enforced here for both sides: local users (role and channel assignment) and
partner nodes (the channel state each envelope cites).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.clock import timestamp, utc_now
from exchange.config import NodeConfig
from exchange.crypto import NodeKeys, canonical_json, strict_loads
from exchange.errors import (
    Equivocation,
    ExchangeError,
    Forbidden,
    InvalidEnvelope,
    NotFound,
    PeerError,
)
from exchange.model import Bulletin, ChannelEvent, Envelope, NodeId, Receipt
from exchange.node.channels import ChannelBook
from exchange.node.users import User
from exchange.protocol.channel import ChannelState
from exchange.protocol.envelope import (
    build_envelope,
    bulletin_id,
    check_rules,
    check_signature,
    envelope_bytes,
    open_envelope,
    parse_envelope,
)
from exchange.protocol.receipt import make_receipt, verify_receipt
from exchange.protocol.roster import Federation
from exchange.store import AuditBuffer, Store, audit_log, bulletins, channel_events, outbox, receipts

NO_ONWARD_TLP = ("RED", "AMBER+STRICT")


class EnvelopeRejected(InvalidEnvelope):
    """A batch from a peer in which at least one item broke a rule; nothing was stored."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        first = errors[0]
        super().__init__(f"{first['item']} rejected: {first['detail']}")
        self.errors = errors


@dataclass(frozen=True)
class OutItem:
    """One queued item for a destination: an envelope or a channel event, as wire bytes."""

    n: int
    kind: str
    ref: str
    data: bytes


class NodeService:
    """One node's behaviour over its store, keys and verified roster."""

    def __init__(self, config: NodeConfig, store: Store, fed: Federation, keys: NodeKeys) -> None:
        self.config = config
        self.me = NodeId(config.id)
        self.store = store
        self.fed = fed
        self.keys = keys
        self.channels = ChannelBook(self.me, fed, keys.signing, store)
        self.on_peer_seen: Callable[[str], None] = lambda peer: None

    @property
    def on_queued(self) -> Callable[[Sequence[str]], None]:
        return self.channels.on_queued

    @on_queued.setter
    def on_queued(self, fn: Callable[[Sequence[str]], None]) -> None:
        self.channels.on_queued = fn

    # -- posting ----------------------------------------------------------------------------

    def _postable(self, user: User, channel: str) -> ChannelState:
        """Sender-side rules: the user's assignment, this node's post right, an open channel."""
        user.require_channel(channel)
        state = self.channels.state(channel)
        state.require(self.me, "post")
        if state.closed:
            raise Forbidden(f"channel {channel!r} is closed")
        if state.ends is not None and utc_now().date() > dt.date.fromisoformat(state.ends):
            raise Forbidden(f"channel {channel!r} ended on {state.ends}")
        return state

    async def post(self, user: User, channel: str, bulletin: Bulletin) -> dict[str, Any]:
        """Encrypt for exactly the readers of the current state, sign, store, queue for the others."""
        state = self._postable(user, channel)
        readers = [(n, self.fed.encryption_key(n)) for n in state.readers]
        payload = canonical_json(bulletin.payload()).decode()

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> dict[str, Any]:
            # Inside the writer, so sequence numbers are gap-free and race-free in this process.
            last = await conn.scalar(
                sa.select(sa.func.max(bulletins.c.seq)).where(
                    bulletins.c.author == self.me, bulletins.c.channel == channel
                )
            )
            seq = int(last or 0) + 1
            now = timestamp()
            env = build_envelope(
                bulletin, state=state, author=self.me, key=self.keys.signing, seq=seq, readers=readers, created=now
            )
            bid = bulletin_id(env.header)
            await conn.execute(
                sa.insert(bulletins).values(
                    id=bid,
                    channel=channel,
                    author=self.me,
                    seq=seq,
                    state_pos=state.pos,
                    tlp=bulletin.handling.tlp,
                    created=now,
                    stored_at=now,
                    envelope=envelope_bytes(env),
                    content=payload,
                )
            )
            dests = [n for n in state.readers if n != self.me]
            if dests:
                await conn.execute(
                    sa.insert(outbox), [{"dest": d, "kind": "envelope", "ref": bid, "state": "queued"} for d in dests]
                )
            audit.add(
                {
                    "event": "bulletin.posted",
                    "at": now,
                    "bulletin": bid,
                    "channel": channel,
                    "author": self.me,
                    "seq": seq,
                    "state": state.pos,
                    "user": user.name,
                    "recipients": state.readers,
                    "tlp": bulletin.handling.tlp,
                }
            )
            return {"id": bid, "channel": channel, "seq": seq, "recipients": dests, "created": now}

        result = await self.store.write(job)
        self.on_queued(result["recipients"])
        return result

    async def forward(self, user: User, bid: str, channel: str) -> dict[str, Any]:
        """Re-post a bulletin to another channel, as this node, referring to the original."""
        original = await self._load(user, bid)
        handling = original["bulletin"]["handling"]
        if handling["no_onward_sharing"] or handling["tlp"] in NO_ONWARD_TLP:
            marks = f"TLP:{handling['tlp']}" + (" no-onward-sharing" if handling["no_onward_sharing"] else "")
            raise Forbidden(f"handling {marks} forbids forwarding")
        copy = dict(original["bulletin"])
        copy["references"] = sorted({*copy["references"], bid})
        return await self.post(user, channel, Bulletin.model_validate(copy))

    # -- receiving --------------------------------------------------------------------------

    async def check_envelope(self, peer: NodeId, raw: Any) -> tuple[Envelope, str, Bulletin]:
        """Apply every receiver rule to one envelope pushed by `peer`; return it decrypted."""
        env = parse_envelope(raw)
        h = env.header
        if h.author != peer:
            raise InvalidEnvelope("a peer may push only envelopes it authored")
        # Signature first: nothing else is trusted, nor any owner asked for state, before it verifies.
        check_signature(env, self.fed)
        try:
            state = await self.channels.ensure(h.channel, h.state)
        except NotFound as exc:
            raise InvalidEnvelope(f"unknown channel state: {exc.detail}") from exc
        bid = check_rules(env, self.fed, state)
        latest = self.channels.state(h.channel)
        if "post" not in latest.rights(h.author) or latest.closed:
            # Else a removed member could go on posting by citing a state from before its removal.
            raise InvalidEnvelope("the author no longer holds the post right in the channel")
        if self.me not in [r.node for r in h.recipients]:
            raise InvalidEnvelope("this node is not a recipient of the envelope")
        bulletin = open_envelope(env, bid, self.me, self.keys.decryption)
        return env, bid, bulletin

    async def receive(self, peer: NodeId, raw_events: Sequence[Any], raw_envelopes: Sequence[Any]) -> list[Receipt]:
        """A transaction from a partner: channel events first, then envelopes; all or nothing."""
        self.on_peer_seen(peer)
        if raw_events:
            try:
                events = [ChannelEvent.model_validate(e) for e in raw_events]
            except ValueError as exc:
                raise EnvelopeRejected([{"item": "event", "type": "InvalidInput", "detail": str(exc)[:300]}]) from exc
            try:
                await self.channels.import_events(events)
            except PeerError:
                raise
            except ExchangeError as exc:
                raise EnvelopeRejected([{"item": "event", "type": type(exc).__name__, "detail": exc.detail}]) from exc
        return await self.ingest(peer, raw_envelopes) if raw_envelopes else []

    async def ingest(self, peer: NodeId, raws: Sequence[Any]) -> list[Receipt]:
        """Verify a batch, then persist and audit it before answering with receipts.

        The batch is all or nothing: one bad envelope rejects it, and nothing is stored.
        """
        self.on_peer_seen(peer)
        checked: list[tuple[Envelope, str, Bulletin]] = []
        errors: list[dict[str, Any]] = []
        for index, raw in enumerate(raws):
            try:
                checked.append(await self.check_envelope(peer, raw))
            except PeerError:
                raise  # retryable (503): the sender keeps the batch and tries again
            except ExchangeError as exc:
                errors.append(
                    {"item": f"envelope {index}", "index": index, "type": type(exc).__name__, "detail": exc.detail}
                )
        if errors:
            raise EnvelopeRejected(errors)

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> list[Receipt]:
            ids = [bid for _, bid, _ in checked]
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
            out: list[Receipt] = []
            rows: list[dict[str, Any]] = []
            receipt_rows: list[dict[str, Any]] = []
            now = timestamp()
            for env, bid, bulletin in checked:
                if known.get(bid) is not None:
                    out.append(Receipt.model_validate(strict_loads(known[bid])))
                    continue
                h = env.header
                if bid in {r["id"] for r in rows}:
                    continue
                twin = next(
                    (r["id"] for r in rows if (r["author"], r["channel"], r["seq"]) == (h.author, h.channel, h.seq)),
                    None,
                )
                if twin is not None:
                    raise Equivocation(
                        f"{h.author} sent two bulletins as seq {h.seq} of {h.channel} in one transaction"
                    )
                clash = await conn.scalar(
                    sa.select(bulletins.c.id).where(
                        bulletins.c.author == h.author, bulletins.c.channel == h.channel, bulletins.c.seq == h.seq
                    )
                )
                if clash is not None:
                    raise Equivocation(f"{h.author} already sent bulletin {clash} as seq {h.seq} of {h.channel}")
                receipt = make_receipt(bid, self.me, "received", now, self.keys.signing)
                rows.append(
                    {
                        "id": bid,
                        "channel": h.channel,
                        "author": h.author,
                        "seq": h.seq,
                        "state_pos": h.state.pos,
                        "tlp": h.handling.tlp,
                        "created": h.created,
                        "stored_at": now,
                        "envelope": envelope_bytes(env),
                        "content": canonical_json(bulletin.payload()).decode(),
                    }
                )
                receipt_rows.append(_receipt_row(receipt))
                audit.add(
                    {
                        "event": "bulletin.received",
                        "at": now,
                        "bulletin": bid,
                        "channel": h.channel,
                        "author": h.author,
                        "seq": h.seq,
                        "from": peer,
                    }
                )
                out.append(receipt)
            if rows:
                await conn.execute(sa.insert(bulletins), rows)
                await conn.execute(sa.insert(receipts), receipt_rows)
            return out

        return await self.store.write(job)

    async def audit_rejection(self, entry: dict[str, Any]) -> None:
        await self.store.audit({"event": "request.rejected", "at": timestamp(), **entry})

    # -- the outbox -------------------------------------------------------------------------

    async def pending(self, dest: str, limit: int) -> list[OutItem]:
        """Queued items for one destination, oldest first."""
        async with self.store.read() as conn:
            rows = (
                await conn.execute(
                    sa.select(outbox.c.n, outbox.c.kind, outbox.c.ref)
                    .where(outbox.c.dest == dest, outbox.c.state == "queued")
                    .order_by(outbox.c.n)
                    .limit(limit)
                )
            ).all()
            envs = [r.ref for r in rows if r.kind == "envelope"]
            data: dict[tuple[str, str], bytes] = {}
            if envs:
                for bid, raw in await conn.execute(
                    sa.select(bulletins.c.id, bulletins.c.envelope).where(bulletins.c.id.in_(envs))
                ):
                    data["envelope", bid] = bytes(raw)
            for r in rows:
                if r.kind == "event":
                    channel, pos = r.ref.rsplit(":", 1)
                    raw = await conn.scalar(
                        sa.select(channel_events.c.event).where(
                            channel_events.c.channel == channel, channel_events.c.pos == int(pos)
                        )
                    )
                    data["event", r.ref] = str(raw).encode()
        return [OutItem(r.n, r.kind, r.ref, data[r.kind, r.ref]) for r in rows]

    async def accept_receipts(self, dest: str, sent: Sequence[OutItem], raw_receipts: Sequence[Any]) -> int:
        """Check the receipts `dest` returned, store them, and mark what was sent delivered."""
        envelope_ids = {i.ref for i in sent if i.kind == "envelope"}
        got: dict[str, Receipt] = {}
        for raw in raw_receipts:
            receipt = Receipt.model_validate(raw)
            verify_receipt(receipt, self.fed)
            if receipt.node != dest or receipt.status != "received" or receipt.bulletin not in envelope_ids:
                raise InvalidEnvelope("a receipt does not match what was sent")
            got[receipt.bulletin] = receipt
        if set(got) != envelope_ids:
            raise InvalidEnvelope("the peer did not return a receipt for every envelope")

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> int:
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
                await conn.execute(sa.insert(receipts), [_receipt_row(r) for r in fresh])
            await conn.execute(sa.update(outbox).where(outbox.c.n.in_([i.n for i in sent])).values(state="delivered"))
            for r in fresh:
                audit.add(
                    {
                        "event": "bulletin.delivered",
                        "at": timestamp(),
                        "bulletin": r.bulletin,
                        "to": dest,
                        "receipt_at": r.at,
                    }
                )
            return len(fresh)

        return await self.store.write(job)

    async def reject_queued(self, dest: str, item: OutItem, detail: str) -> None:
        """The destination refused this item for good: stop sending it, and audit why."""

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            await conn.execute(sa.update(outbox).where(outbox.c.n == item.n).values(state="rejected", detail=detail))
            audit.add(
                {
                    "event": "send.refused",
                    "at": timestamp(),
                    "kind": item.kind,
                    "ref": item.ref,
                    "to": dest,
                    "reason": detail,
                }
            )

        await self.store.write(job)

    async def queued_counts(self) -> dict[str, int]:
        async with self.store.read() as conn:
            rows = await conn.execute(
                sa.select(outbox.c.dest, sa.func.count()).where(outbox.c.state == "queued").group_by(outbox.c.dest)
            )
            return {r[0]: int(r[1]) for r in rows}

    # -- reading ----------------------------------------------------------------------------

    async def list_bulletins(
        self, user: User, channel: str | None = None, after: int = 0, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Bulletins of the user's channels, in the order this node stored them."""
        user.require("contact-point")
        if channel is not None:
            self._readable(user, channel)
            wanted = [channel]
        else:
            wanted = [c for c in sorted(user.channels) if self._can_read(c)]
        query = (
            sa.select(
                bulletins.c.n,
                bulletins.c.id,
                bulletins.c.channel,
                bulletins.c.author,
                bulletins.c.seq,
                bulletins.c.tlp,
                bulletins.c.created,
                bulletins.c.content,
            )
            .where(bulletins.c.n > after, bulletins.c.channel.in_(wanted))
            .order_by(bulletins.c.n)
            .limit(max(1, min(limit, 500)))
        )
        async with self.store.read() as conn:
            rows = (await conn.execute(query)).all()
        out = []
        for r in rows:
            content = json.loads(r.content)
            out.append(
                {
                    "cursor": r.n,
                    "id": r.id,
                    "channel": r.channel,
                    "author": r.author,
                    "seq": r.seq,
                    "tlp": r.tlp,
                    "created": r.created,
                    "kind": content["kind"],
                    "title": content["title"],
                }
            )
        return out

    def _can_read(self, channel: str) -> bool:
        try:
            return "read" in self.channels.state(channel).rights(self.me)
        except NotFound:
            return False

    def _readable(self, user: User, channel: str) -> None:
        """A contact point reads a channel if assigned to it and this node still reads it."""
        user.require_channel(channel)
        if not self._can_read(channel):
            raise Forbidden(f"this node does not (or no longer) read channel {channel!r}")

    async def _load(self, user: User, bid: str) -> dict[str, Any]:
        user.require("contact-point")
        async with self.store.read() as conn:
            row = (await conn.execute(sa.select(bulletins).where(bulletins.c.id == bid))).first()
            if row is None or row.channel not in user.channels or not self._can_read(row.channel):
                # Same answer whether it does not exist or is not the user's: no probing.
                raise NotFound(f"no bulletin {bid} in your channels")
            got = (await conn.execute(sa.select(receipts.c.receipt).where(receipts.c.bulletin_id == bid))).all()
        env = parse_envelope(bytes(row.envelope))
        bulletin = Bulletin.model_validate({**json.loads(row.content), "handling": env.header.handling.model_dump()})
        return {
            "id": bid,
            "channel": row.channel,
            "author": row.author,
            "author_name": self.fed.node(row.author).name,
            "seq": row.seq,
            "created": row.created,
            "signature_verified": True,
            "recipients": [r.node for r in env.header.recipients],
            "bulletin": bulletin.model_dump(mode="json"),
            "receipts": [json.loads(r.receipt) for r in got],
        }

    async def read(self, user: User, bid: str) -> dict[str, Any]:
        """One bulletin in full, with its receipts; the open is audited and signed as a receipt."""
        shown = await self._load(user, bid)
        now = timestamp()
        opened = make_receipt(bid, self.me, "opened", now, self.keys.signing)

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            audit.add(
                {"event": "bulletin.opened", "at": now, "bulletin": bid, "channel": shown["channel"], "user": user.name}
            )
            exists = await conn.scalar(
                sa.select(receipts.c.node).where(
                    receipts.c.bulletin_id == bid, receipts.c.node == self.me, receipts.c.status == "opened"
                )
            )
            if exists is None:
                await conn.execute(sa.insert(receipts).values(**_receipt_row(opened)))

        await self.store.write(job)
        return shown

    async def audit_entries(self, user: User, after: int = -1, limit: int = 100) -> list[dict[str, Any]]:
        """Audit entries for auditors: metadata only, never bulletin content."""
        user.require("auditor")
        async with self.store.read() as conn:
            rows = await conn.execute(
                sa.select(audit_log.c.entry).where(audit_log.c.idx > after).order_by(audit_log.c.idx).limit(limit)
            )
            return [json.loads(r.entry) for r in rows]


def _receipt_row(receipt: Receipt) -> dict[str, Any]:
    return {
        "bulletin_id": receipt.bulletin,
        "node": receipt.node,
        "status": receipt.status,
        "at": receipt.at,
        "receipt": canonical_json(receipt.model_dump(mode="json")).decode(),
    }


__all__ = ["EnvelopeRejected", "NodeService", "OutItem"]
