"""Channel epochs on a node (docs/protocol.md, 15): the epoch records it holds, makes as owner,
serves to members and fetches from them, the epoch keys it opened, and which partners take v2.

Distribution is by pull, from any member (records are owner-signed). The owner makes the next
epoch when first needed once the readers or their wrap keys changed, and only when every reader
announced v2 support (15.1, 15.12).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.clock import timestamp
from exchange.crypto import EpochKey, NodeKeys, b64d
from exchange.crypto.epoch import HybridDecryptionKey, HybridEncryptionKey, UnwrapKey, WrapKey
from exchange.errors import (
    EpochInvalid,
    ExchangeError,
    Forbidden,
    NotFound,
    PeerError,
    PeerRefused,
    StaleEpoch,
    StateUnavailable,
)
from exchange.model import NodeId
from exchange.protocol.channel import ChannelState
from exchange.protocol.envelope_v2 import check_epoch_of_state
from exchange.protocol.epoch import (
    WrapKeyId,
    epoch_hash,
    make_epoch,
    open_epoch,
    parse_epoch,
    parse_grant,
    verify_epoch,
)
from exchange.protocol.epoch_model import EpochRecord, HistoryGrant
from exchange.protocol.epoch_support import EpochSupport, make_support, parse_support, verify_support, wrap_key_id
from exchange.protocol.roster import Federation
from exchange.service.channels import ChannelBook
from exchange.service.epoch_grants import accept_grants, ensure_grant
from exchange.service.transport import PeerTransport
from exchange.store import AuditBuffer, Store
from exchange.store.tables import channel_epochs, epoch_grants, epoch_keys, epoch_support

log = logging.getLogger("exchange.epochs")

SUPPORT_PATH = "/fed/v1/epochs/support"
EPOCH_PAGE = 100  # epoch records served at a time
UNSUPPORTED_RECHECK = 300.0  # seconds before asking again a node that announced no v2 support
UNREACHABLE_RECHECK = 30.0  # seconds before an author asks again a node whose ask timed out
SLOW_ASK = 1.0  # seconds: a failed ask that took longer is a timeout, not a refused connection
SUPPORT_REFRESH = 3600.0  # seconds after which the owner asks a node for its announcement again


def epochs_path(channel: str, after: int) -> str:
    return f"/fed/v1/channels/{channel}/epochs?after={after}"


class EpochBook:
    """One node's epochs: held records and keys, the owner's making of them, and v2 support."""

    def __init__(
        self,
        me: NodeId,
        store: Store,
        fed: Federation,
        keys: NodeKeys,
        channels: ChannelBook,
        transport: PeerTransport,
        hybrid: HybridDecryptionKey | None = None,
        *,
        announce: bool = True,
    ) -> None:
        self.me = me
        self.store = store
        self.fed = fed
        self.keys = keys
        self.channels = channels
        self.transport = transport
        self.hybrid = hybrid
        self.announce = announce  # False: this node says it takes no v2 (config `envelope_v2`)
        self._announcement = make_support(me, keys.signing, hybrid)
        self._records: dict[str, list[EpochRecord]] = {}  # by channel; index = n
        self._keys: dict[tuple[str, int], EpochKey] = {}
        self.grants: dict[str, list[HistoryGrant]] = {}  # by channel: made (owner) or taken (grantee)
        self._support: dict[str, EpochSupport] = {}
        self._fetched: dict[str, float] = {}  # node -> when its announcement was fetched (0: loaded)
        self._unsupported: dict[str, float] = {}  # node -> until when it counts as taking no v2
        self._unreachable: dict[str, float] = {}  # node -> until when an author does not ask it again
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """The records, keys and announcements stored (checked when they came)."""
        async with self.store.read() as conn:
            for row in await conn.execute(
                sa.select(channel_epochs.c.record).order_by(channel_epochs.c.channel, channel_epochs.c.n)
            ):
                record = parse_epoch(bytes(row.record))
                self._records.setdefault(record.channel, []).append(record)
            for row in await conn.execute(sa.select(epoch_keys)):
                self._keys[row.channel, int(row.n)] = EpochKey(bytes(row.key))
            for row in await conn.execute(sa.select(epoch_grants.c.grant).order_by(epoch_grants.c.id)):
                grant = parse_grant(bytes(row.grant))
                self.grants.setdefault(grant.channel, []).append(grant)
            for row in await conn.execute(sa.select(epoch_support)):
                try:
                    support = parse_support(bytes(row.announcement))
                    verify_support(support, self.fed, row.node)
                except ExchangeError:  # the node's roster key changed since: fetched again when needed
                    continue
                self._support[row.node] = support
                self._fetched[row.node] = 0.0

    # -- v2 support and wrap keys: the one place that says which key a reader's wrap is for ---

    @property
    def announcement(self) -> EpochSupport:
        """This node's own announcement (15.12), signed again after its signing key changed."""
        if self._announcement.signer != self.keys.signing.kid:
            self._announcement = make_support(self.me, self.keys.signing, self.hybrid)
        return self._announcement

    async def support_of(self, node: str, *, strict: bool = False, refresh: bool = False) -> EpochSupport | None:
        """`node`'s v2 announcement (None: it takes no v2, or, unless `strict`, it cannot be asked
        now). `strict` (a receiver checking wraps): an unreachable node is StateUnavailable, which
        the sender retries. Fetched once and kept; fetched again when signed with a key the roster
        no longer lists, with `refresh`, and by an owner (not `strict`) after SUPPORT_REFRESH."""
        if node == self.me:
            return self.announcement if self.announce else None
        now = time.monotonic()
        held = self._support.get(node)
        if (
            held is not None
            and not refresh
            and held.signer == self.fed.node(node).signing_kid
            and (
                strict or now - self._fetched.get(node, 0.0) < SUPPORT_REFRESH or self._unreachable.get(node, 0.0) > now
            )
        ):
            return held
        if self._unsupported.get(node, 0.0) > now:
            return None
        if not strict and self._unreachable.get(node, 0.0) > now:
            return held
        try:
            raw = await self.transport.fetch(NodeId(node), SUPPORT_PATH)
        except PeerRefused as exc:
            if exc.status == 404:  # a release before v2, or v2 switched off
                self._unsupported[node] = now + UNSUPPORTED_RECHECK
                self._support.pop(node, None)
                return None
            if strict:
                raise StateUnavailable(f"{node} did not give its v2 support announcement: {exc.detail}") from exc
            self._slow(node, now)
            return held
        except PeerError as exc:
            if strict:
                raise StateUnavailable(f"{node} is unreachable for its v2 support announcement") from exc
            self._slow(node, now)
            return held
        self._unreachable.pop(node, None)
        support = parse_support(raw)
        verify_support(support, self.fed, node)
        wire = support.model_dump_json().encode()

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            await conn.execute(sa.delete(epoch_support).where(epoch_support.c.node == node))
            await conn.execute(sa.insert(epoch_support).values(node=node, announcement=wire, fetched_at=timestamp()))

        await self.store.write(job)
        self._support[node] = support
        self._fetched[node] = time.monotonic()
        return support

    def _slow(self, node: str, asked: float) -> None:
        """A failed ask that took long (a timeout): authors do not wait for it again for a while."""
        if time.monotonic() - asked > SLOW_ASK:
            self._unreachable[node] = time.monotonic() + UNREACHABLE_RECHECK

    async def take_relayed_support(self, raws: Sequence[Any]) -> None:
        """Announcements relayed by a member with epoch records: each is checked against its own
        node's roster key, and kept if none is held for that node (a held one is asked for again
        directly when an epoch's wrap disagrees with it: `record_key_ids`)."""
        fresh: dict[str, EpochSupport] = {}
        for raw in raws[: len(self.fed.roster.nodes)]:
            support = parse_support(raw)
            if support.node == self.me or support.node in fresh:
                continue
            held = self._support.get(support.node)
            if held is not None and held.signer == self.fed.node(support.node).signing_kid:
                continue
            verify_support(support, self.fed, support.node)
            fresh[support.node] = support
        if not fresh:
            return
        now = timestamp()

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            await conn.execute(sa.delete(epoch_support).where(epoch_support.c.node.in_(list(fresh))))
            await conn.execute(
                sa.insert(epoch_support),
                [
                    {"node": n, "announcement": s.model_dump_json().encode(), "fetched_at": now}
                    for n, s in fresh.items()
                ],
            )

        await self.store.write(job)
        for node, support in fresh.items():
            self._support[node] = support
            self._fetched[node] = time.monotonic()
            self._unsupported.pop(node, None)

    async def wrap_key_ids(self, nodes: Iterable[str], *, strict: bool) -> dict[str, WrapKeyId] | None:
        """The key each node's wrap must be for (15.4, 15.12); None if one of them takes no v2."""
        out: dict[str, WrapKeyId] = {}
        for node in nodes:
            support = await self.support_of(node, strict=strict)
            if support is None:
                return None
            out[node] = wrap_key_id(self.fed, node, support)
        return out

    async def record_key_ids(self, record: EpochRecord) -> dict[str, WrapKeyId]:
        """The wrap keys a received epoch's readers announce; a reader whose wrap names another key
        is asked again first (it may have announced a new one since this node asked)."""
        ids = await self.wrap_key_ids(record.readers, strict=True)
        if ids is None:
            raise EpochInvalid("the epoch wraps for a node that announced no v2 support")
        for w in record.wraps:
            if (w.suite, w.kid) != (ids[w.node].suite, ids[w.node].kid):
                support = await self.support_of(w.node, strict=True, refresh=True)
                if support is None:
                    raise EpochInvalid(f"the epoch wraps for {w.node}, which announces no v2 support")
                ids[w.node] = wrap_key_id(self.fed, w.node, support)
        return ids

    def wrap_key(self, node: str) -> WrapKey:
        """The public key the owner wraps for `node` (call after `wrap_key_ids` found its support)."""
        support = self._support.get(node)
        if support is not None and support.hybrid_key is not None:
            return HybridEncryptionKey(b64d(support.hybrid_key))
        return self.fed.encryption_key(node)

    def unwrap_key(self, kid: str) -> UnwrapKey:
        """This node's private key with `kid` (its hybrid key, or its X25519 roster key)."""
        if self.hybrid is not None and self.hybrid.kid == kid:
            return self.hybrid
        return next((k for k in (*self.keys.former, self.keys.decryption) if k.kid == kid), self.keys.decryption)

    # -- held epochs ------------------------------------------------------------------------

    def latest(self, channel: str) -> EpochRecord | None:
        held = self._records.get(channel)
        return held[-1] if held else None

    def record(self, channel: str, n: int) -> EpochRecord | None:
        held = self._records.get(channel, [])
        return held[n] if n < len(held) else None

    def records(self, channel: str) -> list[EpochRecord]:
        return list(self._records.get(channel, []))

    def key(self, channel: str, n: int) -> EpochKey | None:
        return self._keys.get((channel, n))

    def remember_key(self, channel: str, n: int, key: EpochKey) -> None:
        """An epoch key this node stored (from a grant)."""
        self._keys[channel, n] = key

    async def current(self, channel: str, state: ChannelState, *, strict: bool) -> EpochRecord | None:
        """The latest epoch held if it is the one for `state` (15.8 rule 10), else None."""
        latest = self.latest(channel)
        if latest is None or latest.state.pos > state.pos:
            return None
        try:
            ids = await self.wrap_key_ids(latest.readers, strict=strict)
        except Forbidden:  # UnknownPeer: a reader no longer in the roster (revoked): not this state's epoch
            return None
        if ids is None:
            return None
        try:
            check_epoch_of_state(latest, state, ids, None)
        except StaleEpoch:
            return None
        return latest

    async def for_post(self, state: ChannelState) -> tuple[EpochRecord, EpochKey] | None:
        """The epoch this node posts under in `state`, and its key; None: post a v1 envelope.

        v2 needs `read` (15.1), an epoch for the state's readers, which the owner makes here or
        is asked for, and so every reader's v2 support. Any failure to get one falls back to v1.
        """
        if not self.announce or "read" not in state.rights(self.me):
            return None
        if await self.current(state.channel, state, strict=False) is None:
            try:
                if state.owner == self.me:
                    await self.make_current(state)
                else:
                    await self.pull(state.owner, state.channel)
            except ExchangeError as exc:
                log.info("%s: no v2 epoch for %s now (%s); posting v1", self.me, state.channel, exc.detail)
                return None
        record = await self.current(state.channel, state, strict=False)
        if record is None:
            return None
        key = self.key(state.channel, record.n)
        return (record, key) if key is not None else None

    # -- as owner ---------------------------------------------------------------------------

    async def make_current(self, state: ChannelState) -> EpochRecord | None:
        """As owner: make the epoch for `state` unless the latest is it already; None if a reader
        takes no v2 (then the channel stays on v1)."""
        if not self.announce:  # v2 switched off here: no epochs, and no partner is asked
            return None
        async with self._lock:
            held = await self.current(state.channel, state, strict=False)
            if held is not None or state.closed:
                return held
            if await self.wrap_key_ids(state.readers, strict=False) is None:
                return None
            prev = self.latest(state.channel)
            record, key = make_epoch(
                state,
                n=prev.n + 1 if prev is not None else 0,
                prev=prev,
                keys={r: self.wrap_key(r) for r in state.readers},
                owner_key=self.keys.signing,
                created=timestamp(),
            )
            await self._store(record, key)
            return record

    async def _store(self, record: EpochRecord, key: EpochKey | None) -> None:
        now = timestamp()

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            await conn.execute(
                sa.insert(channel_epochs).values(
                    channel=record.channel,
                    n=record.n,
                    hash=epoch_hash(record),
                    state_pos=record.state.pos,
                    record=record.canonical,
                    stored_at=now,
                )
            )
            if key is not None:
                await conn.execute(
                    sa.insert(epoch_keys).values(channel=record.channel, n=record.n, key=key.secret_bytes(), via="wrap")
                )

        await self.store.write(job)
        self._records.setdefault(record.channel, []).append(record)
        if key is not None:
            self._keys[record.channel, record.n] = key

    # -- serving and fetching ---------------------------------------------------------------

    async def serve(self, peer: str, channel: str, after: int) -> dict[str, Any]:
        """Epoch records after `after`, for a current member; the owner first makes the current one."""
        state = self.channels.state(channel)
        if NodeId(peer) not in state.members:
            raise Forbidden(f"{peer!r} is not a member of channel {channel!r}")
        if state.owner == self.me and not state.closed:
            await self.make_current(state)
            await ensure_grant(self, state, peer)
        held = self._records.get(channel, [])
        page = held[max(after + 1, 0) : max(after + 1, 0) + EPOCH_PAGE]
        more = after + 1 + len(page) < len(held)
        grants = [g.model_dump(mode="json") for g in self.grants.get(channel, []) if g.node == peer]
        # The readers' announcements, which verify themselves (15.12): one fetch, not one per reader.
        readers = sorted({n for r in page for n in r.readers} - {peer})
        support = [self._support[n].model_dump(mode="json") for n in readers if n in self._support]
        if self.me in readers and self.announce:
            support.append(self.announcement.model_dump(mode="json"))
        return {
            "epochs": [r.model_dump(mode="json") for r in page],
            "more": more,
            "grants": [] if more else grants,
            "support": support,
        }

    async def pull(self, peer: str, channel: str) -> int:
        """Fetch the epoch records this node lacks from `peer` (any member); return how many were new."""
        fresh = 0
        while True:
            latest = self.latest(channel)
            page = await self.transport.fetch(NodeId(peer), epochs_path(channel, latest.n if latest else -1))
            try:
                raws = list(page["epochs"])
                more = bool(page.get("more"))
                relayed = list(page.get("support") or [])
            except (KeyError, TypeError) as exc:
                raise EpochInvalid(f"{peer} sent a malformed page of epoch records") from exc
            if raws and relayed:
                await self.take_relayed_support(relayed)
            fresh += await self.accept(channel, raws)
            if not more or not raws:
                grants = page.get("grants") or []
                if not isinstance(grants, list):
                    raise EpochInvalid(f"{peer} sent a malformed list of history grants")
                return fresh + await accept_grants(self, channel, grants)

    async def pull_quietly(self, peer: str, channel: str) -> int:
        """`pull` at catch-up: a member of a release before v2 (404) has none; other failures
        are logged, and its envelopes are pulled all the same (a v2 one may name another source)."""
        if not self.announce:
            return 0
        try:
            return await self.pull(peer, channel)
        except PeerRefused as exc:
            if exc.status != 404:
                log.info("%s: epochs of %s from %s refused: %s", self.me, channel, peer, exc.detail)
        except (ExchangeError, OSError, ValueError, KeyError) as exc:
            log.info("%s: epochs of %s from %s: %s", self.me, channel, peer, exc)
        return 0

    async def accept(self, channel: str, raws: Sequence[Any]) -> int:
        """Check epoch records (15.6) in order and keep the new ones; a bad one stops the rest."""
        fresh = 0
        for raw in raws:
            record = parse_epoch(raw)
            if record.channel != channel:
                raise EpochInvalid("an epoch record of another channel")
            held = self.record(channel, record.n)
            if held is not None:
                if epoch_hash(held) != epoch_hash(record):
                    await self._verified(record, self.record(channel, record.n - 1) if record.n else None)
                    log.error("%s: owner %s signed two epochs %d of %s", self.me, record.owner, record.n, channel)
                    raise EpochInvalid(f"a different epoch {record.n} of {channel} is held: the owner equivocates")
                continue
            await self._accept_one(record)
            fresh += 1
        return fresh

    async def _accept_one(self, record: EpochRecord) -> None:
        async with self._lock:
            held = self.record(record.channel, record.n)
            if held is not None and epoch_hash(held) == epoch_hash(record):
                return  # taken meanwhile, from another envelope of the same epoch
            prev = self.latest(record.channel)
            if record.n != (prev.n + 1 if prev is not None else 0):
                raise EpochInvalid(f"epoch {record.n} of {record.channel} comes after a gap")
            await self._verified(record, prev)
            key = None
            wrap = record.wrap_for(self.me)
            if wrap is not None:
                key = open_epoch(record, self.me, self.unwrap_key(wrap.kid))  # DecryptionFailed: not stored
            await self._store(record, key)

    async def _verified(self, record: EpochRecord, prev: EpochRecord | None) -> None:
        """15.6 rules 2 to 8 against the state the record cites (fetched if need be)."""
        try:
            state = await self.channels.ensure(record.channel, record.state)
        except NotFound as exc:
            raise EpochInvalid(f"the epoch cites an unknown channel state: {exc.detail}") from exc
        verify_epoch(record, self.fed, state, await self.record_key_ids(record), prev)

    async def find(self, channel: str, n: int, sources: Sequence[str]) -> EpochRecord:
        """Epoch `n` of a channel: held, or fetched from the first of `sources` that has it."""
        for source in sources:
            if self.record(channel, n) is not None:
                break
            if source == self.me:
                continue
            try:
                await self.pull(source, channel)
            except PeerError as exc:
                log.info("%s: epochs of %s from %s: %s", self.me, channel, source, exc.detail)
        record = self.record(channel, n)
        if record is None:
            raise StateUnavailable(f"epoch {n} of channel {channel!r} is not held and could not be fetched")
        return record
