"""Receiving: every rule a node applies to what partners send, then persist and audit before
answering with signed receipts."""

from __future__ import annotations

import asyncio
import os
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
)
from exchange.model import Bulletin, ChannelEvent, Envelope, NodeId, Receipt
from exchange.protocol.envelope import (
    bulletin_id,
    check_rules,
    check_signature,
    open_envelope,
    parse_envelope,
)
from exchange.protocol.receipt import make_receipts, parse_receipt, signatures_needed, verify_receipts
from exchange.protocol.roster import Federation
from exchange.service.channels import ChannelBook
from exchange.service.outbox import Outbox, ReceiptRef, queued_row
from exchange.service.records import bulletin_row, receipt_row, save_cursor
from exchange.service.transport import PeerTransport
from exchange.store import AuditBuffer, Store, bulletins, outbox, receipts

# Signatures a worker thread checks at a time, at least: fewer are checked on the event loop, where
# they cost less than the hand-off to a thread and back.
THREAD_MIN = 16


def _signature_errors(envs: Sequence[Envelope], fed: Federation) -> list[ExchangeError | None]:
    out: list[ExchangeError | None] = []
    for env in envs:
        try:
            check_signature(env, fed)
            out.append(None)
        except ExchangeError as exc:
            out.append(exc)
    return out


def _item_error(index: int, exc: ExchangeError) -> dict[str, Any]:
    return {"item": f"envelope {index}", "index": index, "type": type(exc).__name__, "detail": exc.detail}


@dataclass(frozen=True)
class Screened:
    """A batch parsed, with what is held already and each other envelope's signature checked
    (`Receiving.screen`); nothing else about it is trusted yet."""

    peer: NodeId
    relayed: bool
    items: Sequence[tuple[int, Envelope, str, ExchangeError | None]]  # index, envelope, id, why its signature fails
    held: set[str]
    errors: Sequence[dict[str, Any]]  # envelopes that did not parse


@dataclass(frozen=True)
class Checked:
    """An envelope that passed every receiver rule, with its id and decrypted bulletin."""

    env: Envelope
    bid: str
    bulletin: Bulletin | None  # None: already held, nothing to store


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
    ) -> None:
        self.me = me
        self.store = store
        self.fed = fed
        self.keys = keys
        self.channels = channels
        self.outbox = out
        self.transport = transport

    async def check_envelope(
        self, peer: NodeId, raw: Any, *, relayed: bool = False, signature_checked: bool = False
    ) -> Checked:
        """Apply every receiver rule to one envelope; return it decrypted.

        Pushed envelopes must come from their author; relayed ones (pulled in catch-up, or to fill
        a gap) may come from any member, since the author's signature vouches for them.
        `signature_checked`: the caller has checked the author's signature already (`ingest`
        checks a batch's in worker threads).
        """
        env = raw if isinstance(raw, Envelope) else parse_envelope(raw)
        h = env.header
        if not relayed and h.author != peer:
            raise InvalidEnvelope("a peer may push only envelopes it authored")
        # Signature first: nothing else is trusted, nor any owner asked for state, before it verifies.
        if not signature_checked:
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
        self.outbox.peer_seen(peer)
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
        return await self.ingest_screened(await self.screen(peer, raws, relayed=relayed), cursor=cursor)

    async def screen(self, peer: NodeId, raws: Sequence[Any], *, relayed: bool = False) -> Screened:
        """The first half of `ingest`: parse a batch, look up what is held already, and check the
        authors' signatures of the rest (in worker threads). Catch-up screens its next page while
        it opens and stores the last one."""
        self.outbox.peer_seen(peer)
        errors: list[dict[str, Any]] = []
        parsed: list[tuple[int, Envelope]] = []
        for index, raw in enumerate(raws):
            try:
                env = parse_envelope(raw)
                if not relayed and env.header.author != peer:
                    raise InvalidEnvelope("a peer may push only envelopes it authored")
                parsed.append((index, env))
            except ExchangeError as exc:
                errors.append(_item_error(index, exc))
        ids = [bulletin_id(env.header) for _, env in parsed]
        # What is stored already was verified when it came: a retry or a second source costs a look-up.
        held = await self.held(ids) if parsed else set()
        fresh = [env for (_, env), bid in zip(parsed, ids, strict=True) if bid not in held]
        bad = iter(await self.signature_errors(fresh))
        items = [
            (index, env, bid, None if bid in held else next(bad)) for (index, env), bid in zip(parsed, ids, strict=True)
        ]
        return Screened(peer, relayed, items, held, errors)

    async def ingest_screened(self, screened: Screened, *, cursor: tuple[str, int] | None = None) -> list[Receipt]:
        """The second half of `ingest`: every other rule, decryption, gaps, then store and answer."""
        peer, relayed, errors = screened.peer, screened.relayed, list(screened.errors)
        checked: list[Checked] = []
        for index, env, bid, wrong in screened.items:
            if bid in screened.held:
                checked.append(Checked(env, bid, None))
                continue
            try:
                if wrong is not None:
                    raise wrong
                checked.append(await self.check_envelope(peer, env, relayed=relayed, signature_checked=True))
            except PeerError:
                raise  # retryable (503): the sender keeps the batch and tries again
            except ExchangeError as exc:
                errors.append(_item_error(index, exc))
        if errors:
            raise EnvelopeRejected(sorted(errors, key=lambda e: e["index"]))
        await self._fill_gaps(peer, checked)
        if relayed:
            checked = sorted(checked, key=lambda c: (c.env.header.author, c.env.header.channel, c.env.header.seq))

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> list[Receipt]:
            return await self._store_checked(conn, audit, peer, checked, relayed=relayed, cursor=cursor)

        out = await self.store.write(job)
        if relayed:
            self.outbox.wake(sorted({c.env.header.author for c in checked} - {self.me}))
        return out

    async def signature_errors(self, envs: Sequence[Envelope]) -> list[ExchangeError | None]:
        """Check the author's signature of each envelope: None for one that verifies, else why not.

        Ed25519 releases the GIL, so a batch is verified in worker threads while the event loop
        serves other requests: one thread per core but the loop's, so that the loop keeps a core.
        """
        if len(envs) < THREAD_MIN:
            return _signature_errors(envs, self.fed)
        parts = min(max(1, (os.cpu_count() or 1) - 1), -(-len(envs) // THREAD_MIN))
        step = -(-len(envs) // parts)
        chunks = await asyncio.gather(
            *(asyncio.to_thread(_signature_errors, envs[i : i + step], self.fed) for i in range(0, len(envs), step))
        )
        return [e for chunk in chunks for e in chunk]

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
        by_stream: dict[tuple[str, str], list[int]] = {}
        for author, channel, seq in streams:
            by_stream.setdefault((author, channel), []).append(seq)
        for (author, channel), numbers in by_stream.items():
            # One index seek per stream on (author, channel, seq): a tuple IN or an OR of streams
            # lets the planner fall back to a scan that grows with the store.
            clash = (
                await conn.execute(
                    sa.select(bulletins.c.id, bulletins.c.seq).where(
                        bulletins.c.author == author, bulletins.c.channel == channel, bulletins.c.seq.in_(numbers)
                    )
                )
            ).first()
            if clash is not None:
                raise Equivocation(f"{author} already sent bulletin {clash.id} as seq {clash.seq} of {channel}")
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
            if c.bid in done or c.bulletin is None:
                continue
            done.add(c.bid)
            h = c.env.header
            answer[c.bid] = None
            by_author.setdefault(h.author, []).append(c.bid)
            rows.append(bulletin_row(c.env, c.bid, c.bulletin, now))
            if relayed and h.author != self.me:
                # The author hears of it from us, since it did not hand it over itself.
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
            await conn.execute(sa.insert(bulletins), rows)
            await conn.execute(sa.insert(receipts), [receipt_row(r) for r in signed])
        if queued:
            await conn.execute(sa.insert(outbox), queued)
        if cursor is not None:
            await save_cursor(conn, peer, *cursor)
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
            if have == 0 or not set(range(have + 1, top)) - seqs:
                continue
            limit = min(top - have - 1, 1000)
            path = f"/fed/v1/channels/{channel}/envelopes?author={author}&after_seq={have}&limit={limit}"
            page = await self.transport.fetch(NodeId(source), path)
            missing = [i["envelope"] for i in page["items"] if i["envelope"] is not None and i["seq"] not in seqs]
            if missing:
                await self.ingest(NodeId(source), missing, relayed=True)

    async def held(self, ids: Sequence[str]) -> set[str]:
        """Which of these bulletins this node holds already."""
        async with self.store.read() as conn:
            return set(await conn.scalars(sa.select(bulletins.c.id).where(bulletins.c.id.in_(list(ids)))))

    async def accept_pushed_receipts(self, peer: str, raws: Sequence[Any]) -> None:
        """Receipts a partner sends on its own: 'opened', or 'received' for what it pulled."""
        try:
            got = [parse_receipt(raw) for raw in raws]
            if any(r.node != peer for r in got):
                raise InvalidEnvelope("a node may only send its own receipts")
            if signatures_needed(got) > 1:  # Ed25519 releases the GIL: the loop serves others meanwhile
                await asyncio.to_thread(verify_receipts, got, self.fed)
            else:
                verify_receipts(got, self.fed)
        except (ValueError, ExchangeError) as exc:
            detail = exc.detail if isinstance(exc, ExchangeError) else str(exc)[:300]
            raise EnvelopeRejected([{"item": "receipt", "type": type(exc).__name__, "detail": detail}]) from exc

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            ids = [r.bulletin for r in got]
            # By id alone, author compared here: with `author = me` in SQL, SQLite (no statistics)
            # prefers the stream index and reads every bulletin this node wrote (bench/growth.py).
            rows = await conn.execute(sa.select(bulletins.c.id, bulletins.c.author).where(bulletins.c.id.in_(ids)))
            mine = {r.id for r in rows if r.author == self.me}
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
                await conn.execute(sa.insert(receipts), [receipt_row(r) for r in fresh])
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
                if r.status == "received":
                    audit.add(
                        ev.BulletinDelivered(
                            event=ev.BULLETIN_DELIVERED, at=timestamp(), bulletin=r.bulletin, to=peer, receipt_at=r.at
                        )
                    )
                else:
                    audit.add(
                        ev.BulletinOpenedBy(
                            event=ev.BULLETIN_OPENED_BY, at=timestamp(), bulletin=r.bulletin, to=peer, receipt_at=r.at
                        )
                    )

        await self.store.write(job)
