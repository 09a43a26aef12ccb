"""What a node does, independent of HTTP: post, ingest, list and read bulletins, keep receipts."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.clock import timestamp
from exchange.config import NodeConfig
from exchange.crypto import NodeKeys, canonical_json, strict_loads
from exchange.errors import (
    Equivocation,
    ExchangeError,
    InvalidEnvelope,
    InvalidInput,
    NotAMember,
    NotFound,
)
from exchange.model import Bulletin, ChannelEvent, Envelope, NodeId, Receipt
from exchange.node.users import User
from exchange.protocol.channel import ChannelState, apply_event, event_hash
from exchange.protocol.envelope import (
    build_envelope,
    bulletin_id,
    envelope_bytes,
    open_envelope,
    parse_envelope,
    verify_envelope,
)
from exchange.protocol.receipt import make_receipt, verify_receipt
from exchange.protocol.roster import Federation
from exchange.store import AuditBuffer, Store, bulletins, channel_events, outbox, receipts


class EnvelopeRejected(InvalidEnvelope):
    """A batch from a peer in which at least one envelope broke a rule; nothing was stored."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        first = errors[0]
        super().__init__(f"envelope {first['index']} rejected: {first['detail']}")
        self.errors = errors


class NodeService:
    """One node's behaviour over its store, keys and verified roster."""

    def __init__(self, config: NodeConfig, store: Store, fed: Federation, keys: NodeKeys) -> None:
        self.config = config
        self.me = NodeId(config.id)
        self.store = store
        self.fed = fed
        self.keys = keys
        self._channels: dict[str, list[ChannelState]] = {}
        self.on_queued: Callable[[Sequence[str]], None] = lambda dests: None
        self.on_peer_seen: Callable[[str], None] = lambda peer: None

    # -- channels ---------------------------------------------------------------------------

    async def load_channels(self) -> None:
        """Rebuild channel states from the database, then import provisioned channel files."""
        async with self.store.read() as conn:
            rows = await conn.execute(
                sa.select(channel_events.c.event).order_by(channel_events.c.channel, channel_events.c.pos)
            )
            for (raw,) in rows:
                self._apply(ChannelEvent.model_validate(strict_loads(raw)))
        folder = self.config.channels_dir
        if folder.is_dir():
            for path in sorted(folder.glob("*.json")):
                await self.import_channel_events([ChannelEvent.model_validate(strict_loads(path.read_bytes()))])

    def _apply(self, event: ChannelEvent) -> ChannelState:
        history = self._channels.get(event.channel, [])
        state = apply_event(history[-1] if history else None, event, self.fed)
        self._channels[event.channel] = [*history, state]
        return state

    async def import_channel_events(self, events: Sequence[ChannelEvent]) -> None:
        """Verify and keep channel events this node does not have yet."""
        fresh = []
        for event in events:
            known = self._channels.get(event.channel, [])
            if event.pos < len(known):
                if known[event.pos].hash != event_hash(event):
                    raise InvalidInput(f"channel {event.channel}: a different event at position {event.pos}")
                continue
            fresh.append((event, self._apply(event)))
        if not fresh:
            return

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            for event, state in fresh:
                await conn.execute(
                    sa.insert(channel_events).values(
                        channel=event.channel,
                        pos=event.pos,
                        hash=state.hash,
                        event=canonical_json(event.model_dump(mode="json")).decode(),
                    )
                )
                audit.add(
                    {
                        "event": "channel.event",
                        "at": timestamp(),
                        "channel": event.channel,
                        "pos": event.pos,
                        "hash": state.hash,
                        "type": event.type,
                        "owner": event.owner,
                        "members": {n: sorted(r) for n, r in sorted(event.members.items())},
                    }
                )

        await self.store.write(job)

    def channel(self, channel: str, pos: int | None = None) -> ChannelState:
        """The latest state of a channel, or its state at log position `pos`."""
        history = self._channels.get(channel)
        if not history:
            raise NotFound(f"unknown channel {channel!r}")
        if pos is None:
            return history[-1]
        if pos >= len(history):
            raise NotFound(f"channel {channel!r} has no state at position {pos}")
        return history[pos]

    def channels(self) -> list[ChannelState]:
        return [h[-1] for _, h in sorted(self._channels.items())]

    def _my_channel(self, channel: str) -> ChannelState:
        state = self.channel(channel)
        if self.me not in state.members:
            raise NotAMember(f"this node is not a member of channel {channel!r}")
        return state

    # -- posting ----------------------------------------------------------------------------

    async def post(self, user: User, channel: str, bulletin: Bulletin) -> dict[str, Any]:
        """Encrypt, sign, store and queue a bulletin for every other reader of the channel."""
        user.require("contact-point")
        state = self._my_channel(channel)
        state.require(self.me, "post")
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
                    sa.insert(outbox), [{"dest": d, "bulletin_id": bid, "state": "queued"} for d in dests]
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

    # -- receiving --------------------------------------------------------------------------

    def check_envelope(self, peer: NodeId, raw: Any) -> tuple[Envelope, str, Bulletin]:
        """Apply every receiver rule to one envelope pushed by `peer`; return it decrypted."""
        env = parse_envelope(raw)
        h = env.header
        if h.author != peer:
            raise InvalidEnvelope("a peer may push only envelopes it authored")
        try:
            state = self.channel(h.channel, h.state.pos)
        except NotFound as exc:
            raise InvalidEnvelope(f"unknown channel state: {exc.detail}") from exc
        bid = verify_envelope(env, self.fed, state)
        if self.me not in [r.node for r in h.recipients]:
            raise InvalidEnvelope("this node is not a recipient of the envelope")
        bulletin = open_envelope(env, bid, self.me, self.keys.decryption)
        return env, bid, bulletin

    async def ingest(self, peer: NodeId, raws: Sequence[Any]) -> list[Receipt]:
        """Verify a batch, then persist and audit it before answering with receipts.

        The batch is all or nothing: one bad envelope rejects it, and nothing is stored.
        """
        self.on_peer_seen(peer)
        checked: list[tuple[Envelope, str, Bulletin]] = []
        errors: list[dict[str, Any]] = []
        for index, raw in enumerate(raws):
            try:
                checked.append(self.check_envelope(peer, raw))
            except ExchangeError as exc:
                errors.append({"index": index, "type": type(exc).__name__, "detail": exc.detail})
        if errors:
            raise EnvelopeRejected(errors)

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> list[Receipt]:
            ids = [bid for _, bid, _ in checked]
            known = {
                r.id: r.receipt
                for r in await conn.execute(
                    sa.select(bulletins.c.id, receipts.c.receipt)
                    .select_from(
                        bulletins.outerjoin(
                            receipts,
                            sa.and_(
                                receipts.c.bulletin_id == bulletins.c.id,
                                receipts.c.node == self.me,
                                receipts.c.status == "received",
                            ),
                        )
                    )
                    .where(bulletins.c.id.in_(ids))
                )
            }
            out: list[Receipt] = []
            rows: list[dict[str, Any]] = []
            receipt_rows: list[dict[str, Any]] = []
            now = timestamp()
            for env, bid, bulletin in checked:
                if bid in known and known[bid] is not None:
                    out.append(Receipt.model_validate(strict_loads(known[bid])))
                    continue
                if bid in {r["id"] for r in rows}:
                    continue
                h = env.header
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

    # -- receipts from peers ----------------------------------------------------------------

    async def accept_receipts(self, dest: str, sent: Sequence[str], raw_receipts: Sequence[Any]) -> int:
        """Check the receipts `dest` returned for `sent`, store them and mark those delivered."""
        got: dict[str, Receipt] = {}
        for raw in raw_receipts:
            receipt = Receipt.model_validate(raw)
            verify_receipt(receipt, self.fed)
            if receipt.node != dest or receipt.status != "received" or receipt.bulletin not in sent:
                raise InvalidEnvelope("a receipt does not match what was sent")
            got[receipt.bulletin] = receipt
        if set(got) != set(sent):
            raise InvalidEnvelope("the peer did not return a receipt for every envelope")

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> int:
            existing = set(
                await conn.scalars(
                    sa.select(receipts.c.bulletin_id).where(
                        receipts.c.node == dest, receipts.c.status == "received", receipts.c.bulletin_id.in_(list(got))
                    )
                )
            )
            fresh = [r for b, r in got.items() if b not in existing]
            if fresh:
                await conn.execute(sa.insert(receipts), [_receipt_row(r) for r in fresh])
            await conn.execute(
                sa.update(outbox)
                .where(outbox.c.dest == dest, outbox.c.bulletin_id.in_(list(got)))
                .values(state="delivered")
            )
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

    async def pending(self, dest: str, limit: int) -> list[tuple[str, bytes]]:
        """Queued envelopes for one destination, oldest first."""
        async with self.store.read() as conn:
            rows = await conn.execute(
                sa.select(outbox.c.bulletin_id, bulletins.c.envelope)
                .join(bulletins, bulletins.c.id == outbox.c.bulletin_id)
                .where(outbox.c.dest == dest, outbox.c.state == "queued")
                .order_by(outbox.c.n)
                .limit(limit)
            )
            return [(r.bulletin_id, r.envelope) for r in rows]

    async def reject_queued(self, dest: str, bid: str, detail: str) -> None:
        """The destination refused this envelope for good: stop sending it, and audit why."""

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            await conn.execute(
                sa.update(outbox)
                .where(outbox.c.dest == dest, outbox.c.bulletin_id == bid)
                .values(state="rejected", detail=detail)
            )
            audit.add({"event": "bulletin.refused", "at": timestamp(), "bulletin": bid, "to": dest, "reason": detail})

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
        """Bulletins visible to a contact point, in the order this node stored them."""
        user.require("contact-point")
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
            .where(bulletins.c.n > after)
            .order_by(bulletins.c.n)
            .limit(max(1, min(limit, 500)))
        )
        if channel is not None:
            self.channel(channel)
            query = query.where(bulletins.c.channel == channel)
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

    async def read(self, user: User, bid: str) -> dict[str, Any]:
        """One bulletin in full, with its receipts; the open is audited and signed as a receipt."""
        user.require("contact-point")
        async with self.store.read() as conn:
            row = (await conn.execute(sa.select(bulletins).where(bulletins.c.id == bid))).first()
            if row is None:
                raise NotFound(f"no bulletin {bid}")
            got = (await conn.execute(sa.select(receipts.c.receipt).where(receipts.c.bulletin_id == bid))).all()
        env = parse_envelope(bytes(row.envelope))
        bulletin = Bulletin.model_validate({**json.loads(row.content), "handling": env.header.handling.model_dump()})
        now = timestamp()
        opened = make_receipt(bid, self.me, "opened", now, self.keys.signing)

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            audit.add(
                {"event": "bulletin.opened", "at": now, "bulletin": bid, "channel": row.channel, "user": user.name}
            )
            exists = await conn.scalar(
                sa.select(receipts.c.node).where(
                    receipts.c.bulletin_id == bid, receipts.c.node == self.me, receipts.c.status == "opened"
                )
            )
            if exists is None:
                await conn.execute(sa.insert(receipts).values(**_receipt_row(opened)))

        await self.store.write(job)
        return {
            "id": bid,
            "channel": row.channel,
            "author": row.author,
            "author_name": self.fed.node(row.author).name,
            "seq": row.seq,
            "created": row.created,
            "signature_verified": True,
            "bulletin": bulletin.model_dump(mode="json"),
            "receipts": [json.loads(r.receipt) for r in got],
        }

    async def envelope(self, bid: str) -> bytes:
        async with self.store.read() as conn:
            raw = await conn.scalar(sa.select(bulletins.c.envelope).where(bulletins.c.id == bid))
        if raw is None:
            raise NotFound(f"no bulletin {bid}")
        return bytes(raw)


def _receipt_row(receipt: Receipt) -> dict[str, Any]:
    return {
        "bulletin_id": receipt.bulletin,
        "node": receipt.node,
        "status": receipt.status,
        "at": receipt.at,
        "receipt": canonical_json(receipt.model_dump(mode="json")).decode(),
    }
