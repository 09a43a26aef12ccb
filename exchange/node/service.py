"""What a node does, independent of HTTP: post, ingest, list and read bulletins, keep receipts.

Rights are enforced here for both sides: local users (role and channel assignment) and
partner nodes (the channel state each envelope cites).
"""

from __future__ import annotations

import asyncio
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
from exchange.store import (
    AuditBuffer,
    Store,
    audit_log,
    bulletins,
    channel_events,
    cursors,
    outbox,
    receipts,
    user_reads,
)

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
        self._seqs: dict[str, int] = {}
        self._seq_lock = asyncio.Lock()
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

    async def _next_seq(self, channel: str) -> int:
        """This node's next sequence number in a channel: kept in memory, loaded once.

        Allocating outside the writer lets the crypto run outside it too. A post whose commit
        fails leaves a hole in the stream; receivers ask the author, who has no such bulletin,
        and go on.
        """
        if channel not in self._seqs:
            async with self._seq_lock:
                if channel not in self._seqs:
                    async with self.store.read() as conn:
                        last = await conn.scalar(
                            sa.select(sa.func.max(bulletins.c.seq)).where(
                                bulletins.c.author == self.me, bulletins.c.channel == channel
                            )
                        )
                    self._seqs[channel] = int(last or 0)
        self._seqs[channel] += 1
        return self._seqs[channel]

    async def post(self, user: User, channel: str, bulletin: Bulletin) -> dict[str, Any]:
        """Encrypt for exactly the readers of the current state, sign, store, queue for the others."""
        state = self._postable(user, channel)
        readers = [(n, self.fed.encryption_key(n)) for n in state.readers]
        seq = await self._next_seq(channel)
        now = timestamp()
        env = build_envelope(
            bulletin, state=state, author=self.me, key=self.keys.signing, seq=seq, readers=readers, created=now
        )
        bid = bulletin_id(env.header)
        dests = [n for n in state.readers if n != self.me]
        row = _bulletin_row(env, bid, bulletin, now)

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            await conn.execute(sa.insert(bulletins).values(**row))
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

        await self.store.write(job)
        self.on_queued(dests)
        return {"id": bid, "channel": channel, "seq": seq, "recipients": dests, "created": now}

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

    async def check_envelope(self, peer: NodeId, raw: Any, *, relayed: bool = False) -> Checked:
        """Apply every receiver rule to one envelope; return it decrypted.

        Pushed envelopes must come from their author; relayed ones (pulled in catch-up, or to fill
        a gap) may come from any member, since the author's signature vouches for them.
        """
        env = raw if isinstance(raw, Envelope) else parse_envelope(raw)
        h = env.header
        if not relayed and h.author != peer:
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
        return Checked(env, bid, bulletin)

    async def receive(
        self, peer: NodeId, raw_events: Sequence[Any], raw_envelopes: Sequence[Any], raw_receipts: Sequence[Any] = ()
    ) -> list[Receipt]:
        """A transaction from a partner: channel events, then envelopes, then receipts; all or nothing."""
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
        receipts_ = await self.ingest(peer, raw_envelopes) if raw_envelopes else []
        if raw_receipts:
            await self.accept_pushed_receipts(peer, raw_receipts)
        return receipts_

    async def ingest(
        self, peer: NodeId, raws: Sequence[Any], *, relayed: bool = False, cursor: tuple[str, int] | None = None
    ) -> list[Receipt]:
        """Verify a batch, fill any gap in its authors' streams, then persist and audit it before
        answering with receipts.

        The batch is all or nothing: one bad envelope rejects it, and nothing is stored. `cursor`
        (channel, position) is a catch-up cursor at `peer`, saved in the same transaction.
        """
        self.on_peer_seen(peer)
        errors: list[dict[str, Any]] = []
        parsed: list[tuple[int, Envelope]] = []
        for index, raw in enumerate(raws):
            try:
                env = parse_envelope(raw)
                if not relayed and env.header.author != peer:
                    raise InvalidEnvelope("a peer may push only envelopes it authored")
                parsed.append((index, env))
            except ExchangeError as exc:
                errors.append(
                    {"item": f"envelope {index}", "index": index, "type": type(exc).__name__, "detail": exc.detail}
                )
        # What is stored already was verified when it came: a retry or a second source costs a look-up.
        held = await self.held([bulletin_id(env.header) for _, env in parsed]) if parsed else set()
        checked: list[Checked] = []
        for index, env in parsed:
            if bulletin_id(env.header) in held:
                checked.append(Checked(env, bulletin_id(env.header), None))
                continue
            try:
                checked.append(await self.check_envelope(peer, env, relayed=relayed))
            except PeerError:
                raise  # retryable (503): the sender keeps the batch and tries again
            except ExchangeError as exc:
                errors.append(
                    {"item": f"envelope {index}", "index": index, "type": type(exc).__name__, "detail": exc.detail}
                )
        if errors:
            raise EnvelopeRejected(sorted(errors, key=lambda e: e["index"]))
        await self._fill_gaps(peer, checked)
        if relayed:
            checked = sorted(checked, key=lambda c: (c.env.header.author, c.env.header.channel, c.env.header.seq))

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> list[Receipt]:
            return await self._store_checked(conn, audit, peer, checked, relayed=relayed, cursor=cursor)

        out = await self.store.write(job)
        if relayed:
            self.on_queued(sorted({c.env.header.author for c in checked} - {self.me}))
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
        streams: dict[tuple[str, str, int], str] = {}
        for c in fresh:
            h = c.env.header
            key = (h.author, h.channel, h.seq)
            if key in streams and streams[key] != c.bid:
                raise Equivocation(f"{h.author} sent two bulletins as seq {h.seq} of {h.channel}")
            streams[key] = c.bid
        if streams:
            clash = (
                await conn.execute(
                    sa.select(bulletins.c.id, bulletins.c.author, bulletins.c.channel, bulletins.c.seq).where(
                        sa.tuple_(bulletins.c.author, bulletins.c.channel, bulletins.c.seq).in_(list(streams))
                    )
                )
            ).first()
            if clash is not None:
                raise Equivocation(
                    f"{clash.author} already sent bulletin {clash.id} as seq {clash.seq} of {clash.channel}"
                )
        out: list[Receipt] = []
        rows: list[dict[str, Any]] = []
        receipt_rows: list[dict[str, Any]] = []
        queued: list[dict[str, Any]] = []
        now = timestamp()
        done: set[str] = set()
        for c in checked:
            if c.bid in known:
                if known[c.bid] is not None:  # None: this node's own bulletin, which it does not receipt
                    out.append(Receipt.model_validate(strict_loads(known[c.bid])))
                continue
            if c.bid in done or c.bulletin is None:
                continue
            done.add(c.bid)
            h = c.env.header
            receipt = make_receipt(c.bid, self.me, "received", now, self.keys.signing)
            rows.append(_bulletin_row(c.env, c.bid, c.bulletin, now))
            receipt_rows.append(_receipt_row(receipt))
            if relayed and h.author != self.me:
                # The author hears of it from us, since it did not hand it over itself.
                queued.append({"dest": h.author, "kind": "receipt", "ref": f"{c.bid}:received", "state": "queued"})
            entry = {
                "event": "bulletin.received",
                "at": now,
                "bulletin": c.bid,
                "channel": h.channel,
                "author": h.author,
                "seq": h.seq,
                "from": peer,
            }
            audit.add(entry | ({"relayed": True} if relayed else {}))
            out.append(receipt)
        if rows:
            await conn.execute(sa.insert(bulletins), rows)
            await conn.execute(sa.insert(receipts), receipt_rows)
        if queued:
            await conn.execute(sa.insert(outbox), queued)
        if cursor is not None:
            await _save_cursor(conn, peer, *cursor)
        return out

    async def _fill_gaps(self, source: str, checked: Sequence[Checked]) -> None:
        """Fetch from `source` what precedes a batch in each author's stream but is not here yet.

        Only streams this node already receives are checked: before its first bulletin of a
        stream, a node cannot tell what was meant for it, and catch-up covers that.
        """
        wanted: dict[tuple[str, str], tuple[int, set[int]]] = {}
        for c in checked:
            h = c.env.header
            top, seqs = wanted.get((h.author, h.channel), (0, set()))
            wanted[h.author, h.channel] = (max(top, h.seq), seqs | {h.seq})
        if not wanted:
            return
        async with self.store.read() as conn:
            rows = await conn.execute(
                sa.select(bulletins.c.author, bulletins.c.channel, sa.func.max(bulletins.c.seq))
                .where(sa.tuple_(bulletins.c.author, bulletins.c.channel).in_(list(wanted)))
                .group_by(bulletins.c.author, bulletins.c.channel)
            )
            stored = {(r[0], r[1]): int(r[2]) for r in rows}
        for (author, channel), (top, seqs) in wanted.items():
            have = stored.get((author, channel), 0)
            if have == 0 or not set(range(have + 1, top)) - seqs:
                continue
            limit = min(top - have - 1, 1000)
            path = f"/fed/v1/channels/{channel}/envelopes?author={author}&after_seq={have}&limit={limit}"
            page = await self.channels.fetch(source, path)
            missing = [i["envelope"] for i in page["items"] if i["envelope"] is not None and i["seq"] not in seqs]
            if missing:
                await self.ingest(NodeId(source), missing, relayed=True)

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
        can tell a gap that is not meant for it from one that is.
        """
        state = self.channels.state(channel)
        if NodeId(peer) not in state.involved:
            raise Forbidden(f"{peer!r} takes no part in channel {channel!r}")
        limit = max(1, min(limit, 1000))
        query = sa.select(
            bulletins.c.n,
            bulletins.c.id,
            bulletins.c.author,
            bulletins.c.seq,
            bulletins.c.recipients,
            bulletins.c.envelope,
        ).where(bulletins.c.channel == channel)
        if author is not None:
            query = query.where(bulletins.c.author == author, bulletins.c.seq > after_seq).order_by(bulletins.c.seq)
        else:
            query = query.where(bulletins.c.n > after).order_by(bulletins.c.n)
        async with self.store.read() as conn:
            rows = (await conn.execute(query.limit(limit))).all()
        size, cut = 0, len(rows)
        for i, r in enumerate(rows):  # big attachments: keep a page under 32 MiB
            size += len(r.envelope)
            if size > 32 * 1024 * 1024 and i:
                cut = i
                break
        more = len(rows) == limit or cut < len(rows)
        rows = rows[:cut]
        items = [
            b'{"n":%d,"id":"%s","author":"%s","seq":%d,"envelope":%s}'
            % (
                r.n,
                r.id.encode(),
                r.author.encode(),
                r.seq,
                bytes(r.envelope) if f" {peer} " in r.recipients else b"null",
            )
            for r in rows
        ]
        next_ = rows[-1].n if rows else after
        return b'{"items":[' + b",".join(items) + b'],"next":%d,"more":%s}' % (next_, b"true" if more else b"false")

    async def held(self, ids: Sequence[str]) -> set[str]:
        async with self.store.read() as conn:
            return set(await conn.scalars(sa.select(bulletins.c.id).where(bulletins.c.id.in_(list(ids)))))

    async def cursor(self, peer: str, channel: str) -> int:
        async with self.store.read() as conn:
            value = await conn.scalar(
                sa.select(cursors.c.cursor).where(cursors.c.peer == peer, cursors.c.channel == channel)
            )
        return int(value or 0)

    async def save_cursor(self, peer: str, channel: str, position: int) -> None:
        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            await _save_cursor(conn, peer, channel, position)

        await self.store.write(job)

    async def accept_pushed_receipts(self, peer: str, raws: Sequence[Any]) -> None:
        """Receipts a partner sends on its own: 'opened', or 'received' for what it pulled."""
        got: list[Receipt] = []
        try:
            for raw in raws:
                receipt = Receipt.model_validate(raw)
                verify_receipt(receipt, self.fed)
                if receipt.node != peer:
                    raise InvalidEnvelope("a node may only send its own receipts")
                got.append(receipt)
        except (ValueError, ExchangeError) as exc:
            detail = exc.detail if isinstance(exc, ExchangeError) else str(exc)[:300]
            raise EnvelopeRejected([{"item": "receipt", "type": type(exc).__name__, "detail": detail}]) from exc

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            ids = [r.bulletin for r in got]
            mine = set(
                await conn.scalars(
                    sa.select(bulletins.c.id).where(bulletins.c.id.in_(ids), bulletins.c.author == self.me)
                )
            )
            if set(ids) - mine:
                raise InvalidEnvelope("a receipt names a bulletin this node did not author")
            have = {
                (r.bulletin_id, r.status)
                for r in await conn.execute(
                    sa.select(receipts.c.bulletin_id, receipts.c.status).where(
                        receipts.c.node == peer, receipts.c.bulletin_id.in_(ids)
                    )
                )
            }
            fresh = [r for r in got if (r.bulletin, r.status) not in have]
            if fresh:
                await conn.execute(sa.insert(receipts), [_receipt_row(r) for r in fresh])
            received = [r.bulletin for r in got if r.status == "received"]
            if received:
                await conn.execute(
                    sa.update(outbox)
                    .where(
                        outbox.c.dest == peer,
                        outbox.c.kind == "envelope",
                        outbox.c.ref.in_(received),
                        outbox.c.state == "queued",
                    )
                    .values(state="delivered")
                )
            for r in fresh:
                event = "bulletin.delivered" if r.status == "received" else "bulletin.opened_by"
                audit.add({"event": event, "at": timestamp(), "bulletin": r.bulletin, "to": peer, "receipt_at": r.at})

        await self.store.write(job)

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
                if r.kind == "receipt":
                    bid, status = r.ref.split(":", 1)
                    raw = await conn.scalar(
                        sa.select(receipts.c.receipt).where(
                            receipts.c.bulletin_id == bid, receipts.c.node == self.me, receipts.c.status == status
                        )
                    )
                    data["receipt", r.ref] = str(raw).encode()
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

    async def mark_sent(self, dest: str, items: Sequence[OutItem], txn: str) -> None:
        """Audit the first attempt to send each envelope to `dest` (retries are not audited)."""
        envelopes = [i for i in items if i.kind == "envelope"]
        if not envelopes:
            return

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            ns = [i.n for i in envelopes]
            fresh = set(await conn.scalars(sa.select(outbox.c.n).where(outbox.c.n.in_(ns), outbox.c.sent_at.is_(None))))
            if not fresh:
                return
            now = timestamp()
            await conn.execute(sa.update(outbox).where(outbox.c.n.in_(fresh)).values(sent_at=now))
            for item in envelopes:
                if item.n in fresh:
                    audit.add({"event": "bulletin.sent", "at": now, "bulletin": item.ref, "to": dest, "txn": txn})

        await self.store.write(job)

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
            # Read by this user, wherever they opened it (console, API or CLI): no longer unread.
            seen = sa.and_(user_reads.c.user == user.name, user_reads.c.bulletin_id == bid)
            if await conn.scalar(sa.select(user_reads.c.user).where(seen)) is None:
                await conn.execute(sa.insert(user_reads).values(user=user.name, bulletin_id=bid, at=now))
            exists = await conn.scalar(
                sa.select(receipts.c.node).where(
                    receipts.c.bulletin_id == bid, receipts.c.node == self.me, receipts.c.status == "opened"
                )
            )
            if exists is None:
                await conn.execute(sa.insert(receipts).values(**_receipt_row(opened)))
                if shown["author"] != self.me:
                    await conn.execute(
                        sa.insert(outbox).values(
                            dest=shown["author"], kind="receipt", ref=f"{bid}:opened", state="queued"
                        )
                    )

        await self.store.write(job)
        if shown["author"] != self.me:
            self.on_queued([shown["author"]])
        return shown

    async def audit_entries(self, user: User, after: int = -1, limit: int = 100) -> list[dict[str, Any]]:
        """Audit entries for auditors: metadata only, never bulletin content."""
        user.require("auditor")
        async with self.store.read() as conn:
            rows = await conn.execute(
                sa.select(audit_log.c.entry).where(audit_log.c.idx > after).order_by(audit_log.c.idx).limit(limit)
            )
            return [json.loads(r.entry) for r in rows]


@dataclass(frozen=True)
class Checked:
    """An envelope that passed every receiver rule, with its id and decrypted bulletin."""

    env: Envelope
    bid: str
    bulletin: Bulletin | None  # None: already held, nothing to store


def _bulletin_row(env: Envelope, bid: str, bulletin: Bulletin, now: str) -> dict[str, Any]:
    h = env.header
    return {
        "id": bid,
        "channel": h.channel,
        "author": h.author,
        "seq": h.seq,
        "state_pos": h.state.pos,
        "tlp": h.handling.tlp,
        "created": h.created,
        "stored_at": now,
        "envelope": envelope_bytes(env),
        "recipients": " " + " ".join(r.node for r in h.recipients) + " ",
        "content": bulletin.payload_bytes.decode(),
    }


async def _save_cursor(conn: AsyncConnection, peer: str, channel: str, position: int) -> None:
    where = sa.and_(cursors.c.peer == peer, cursors.c.channel == channel)
    done = await conn.execute(sa.update(cursors).where(where).values(cursor=position))
    if done.rowcount == 0:
        await conn.execute(sa.insert(cursors).values(peer=peer, channel=channel, cursor=position))


def _receipt_row(receipt: Receipt) -> dict[str, Any]:
    return {
        "bulletin_id": receipt.bulletin,
        "node": receipt.node,
        "status": receipt.status,
        "at": receipt.at,
        "receipt": canonical_json(receipt.model_dump(mode="json")).decode(),
    }


__all__ = ["EnvelopeRejected", "NodeService", "OutItem"]
