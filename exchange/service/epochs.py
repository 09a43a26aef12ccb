"""Channel epochs on a node (docs/protocol.md, 15): the epoch records it holds, makes as owner, serves to members and
fetches from them, and the epoch keys it opened (which partners take v2: `exchange.service.epoch_announcements`).

Distribution is by pull, from any member (records are owner-signed). The owner makes the next
epoch when first needed once the readers or their wrap keys changed, and only when every reader
announced v2 support (15.1, 15.12). The worker processes of one node share what each stores
(`exchange.service.epoch_store`): one record per epoch number, whichever worker makes or takes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from exchange.audit.epoch_events import EPOCH_KEY_TAKEN, equivocation
from exchange.audit.events import AuditEntry
from exchange.clock import timestamp
from exchange.crypto import EpochKey, NodeKeys
from exchange.crypto.epoch import HybridDecryptionKey
from exchange.errors import EpochInvalid, ExchangeError, Forbidden, NotFound, PeerRefused, StaleEpoch
from exchange.model import NodeId
from exchange.protocol.channel import ChannelState
from exchange.protocol.envelope_v2 import check_epoch_of_state, readers_steady
from exchange.protocol.epoch import (
    check_carried,
    check_signed_by_owner,
    epoch_hash,
    make_epoch,
    open_epoch,
    parse_epoch,
    pinned_end,
    verify_epoch,
)
from exchange.protocol.epoch_model import EpochRecord, HistoryGrant
from exchange.protocol.epoch_support import EpochSupport
from exchange.protocol.roster import Federation
from exchange.service.channels import ChannelBook
from exchange.service.epoch_announcements import Announcements
from exchange.service.epoch_demand import Misses
from exchange.service.epoch_grants import accept_grants, ensure_grant, grants_served
from exchange.service.epoch_store import Held, checked_key, checked_record, made_entry, read_held, store_epoch
from exchange.service.outbox_txn import head_within
from exchange.service.transport import PeerTransport
from exchange.store import Store

log = logging.getLogger("exchange.epochs")

EPOCH_PAGE = 100  # epoch records served at a time
EPOCH_PAGE_BYTES = 32 * 1024 * 1024  # and their bytes at most, past the first (a record is up to 4 MiB)
MAX_CARRIED = 10 * EPOCH_PAGE  # history records held across pages until one signed with a current key pins them
MAX_CARRIED_BYTES = 4 * EPOCH_PAGE_BYTES  # and their JSON's bytes at most
MAKE_TRIES = 3  # an owner's worker that lost the making of epoch n to another tries n + 1 (if due)


def epochs_path(channel: str, after: int) -> str:
    return f"/fed/v1/channels/{channel}/epochs?after={after}"


class EpochBook(Announcements):
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
        super().__init__(me, store, fed, keys, transport, hybrid, announce=announce)
        self.channels = channels
        self._records: dict[str, list[EpochRecord]] = {}  # by channel; index = n
        self._keys: dict[tuple[str, int], EpochKey] = {}
        self._unusable: set[tuple[str, int]] = set()  # stored keys that are not their record's
        self.grants: dict[str, list[HistoryGrant]] = {}  # by channel: made (owner) or taken (grantee)
        self._grant_hashes: set[str] = set()
        self._equivocations: set[str] = set()  # the hashes of the owners' second records audited
        self._lock = asyncio.Lock()
        self.misses = Misses()  # epochs an envelope cited that no member held (`find_epoch`)
        # The JSON of each channel's latest record and of each announcement as served, made once
        # per object held: a page of a channel of 200 readers holds a record with 199 wraps and
        # 198 announcements, asked for by every reader when the epoch is new (bench/simulate.py,
        # the first alert). Older records are rarely served: made when asked.
        self._wire_json: dict[tuple[str, ...], tuple[BaseModel, bytes]] = {}

    async def load(self) -> None:
        """The records, keys, grants and announcements stored (checked when they came)."""
        async with self.store.read() as conn:
            self._hold_rows(await read_held(conn))
            await self._load_support(conn)

    # -- what other workers stored --------------------------------------------------------------

    async def refresh(self, channel: str | None = None) -> int:
        """Take in what another worker process stored of `channel`'s epochs (None: of every
        channel): records, keys, grants (exchange.service.worker_sync); how many. SQLite: none."""
        async with self._lock:
            return await self._reread(channel)

    async def _reread(self, channel: str | None) -> int:
        if not self.store.shared:  # one process: everything stored is held
            return 0
        after = len(self._records.get(channel, [])) - 1 if channel is not None else -1
        async with self.store.read() as conn:
            return self._hold_rows(await read_held(conn, channel, after))

    def _hold_rows(self, held: Held) -> int:
        fresh = sum(self._hold(record, None) for record in held.records)
        for (channel, n), key in held.keys.items():  # a key with no record held is of no use: left
            record = self.record(channel, n)
            fresh += self._hold(record, key) if record is not None else 0
        return fresh + self.hold_grants(held.grants)

    def _hold(self, record: EpochRecord, key: EpochKey | None) -> int:
        """Hold a stored record and this node's key of it; 1 if either was not held."""
        fresh = 0
        have = self._records.setdefault(record.channel, [])
        if record.n == len(have):
            if not checked_record(record, have[-1] if have else None, self.me, self.fed):
                return 0
            have.append(record)
            fresh = 1
        at = (record.channel, record.n)
        if key is not None and at not in self._keys and at not in self._unusable:
            if (key := checked_key(record, key, self.me, self.unwrap_key)) is None:
                self._unusable.add(at)  # checked and logged once, not at each re-read
            else:
                self._keys[at] = key
                fresh = 1
        return fresh

    def hold_grants(self, stored: Sequence[tuple[str, HistoryGrant]]) -> int:
        """Hold stored grants (with their hashes) not held yet; how many."""
        fresh = 0
        for ghash, grant in stored:
            if ghash not in self._grant_hashes:
                self._grant_hashes.add(ghash)
                self.grants.setdefault(grant.channel, []).append(grant)
                fresh += 1
        return fresh

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

    def remember_key(self, channel: str, n: int, key: EpochKey, given: EpochKey | None = None) -> None:
        """An epoch key this node stored (from a grant; `given`: the grant's): held if none is, and
        only if it is the key the record commits to (`checked_key`)."""
        record = self.record(channel, n)
        usable = checked_key(record, key, self.me, self.unwrap_key, given) if record is not None else key
        if (channel, n) not in self._keys and usable is not None:
            self._keys[channel, n] = usable

    async def current(self, channel: str, state: ChannelState, *, strict: bool) -> EpochRecord | None:
        """The latest epoch held if it is the one for `state` (15.8 rule 10), else None."""
        latest = self.latest(channel)
        if latest is None or latest.state.pos > state.pos:
            return None
        try:
            if (ids := await self.wrap_key_ids(latest.readers, strict=strict)) is None:
                return None
            check_epoch_of_state(latest, state, ids, None)
        except (Forbidden, StaleEpoch):  # Forbidden: a reader no longer in the roster (revoked)
            return None
        between = (self.channels.state(channel, pos) for pos in range(latest.state.pos + 1, state.pos))
        return latest if readers_steady(latest, between) else None  # else: the next epoch, pulled or made

    async def for_post(self, state: ChannelState) -> tuple[EpochRecord, EpochKey] | None:
        """The epoch this node posts under in `state`, and its key; None: post a v1 envelope.

        v2 needs `read` (15.1), an epoch for the state's readers, which the owner makes here or
        is asked for, and so every reader's v2 support. Any failure to get one falls back to v1.
        """
        if not self.announce or "read" not in state.rights(self.me):
            return None
        held = await self.current(state.channel, state, strict=False)
        if held is None and await self.refresh(state.channel):  # another worker made or took it
            held = await self.current(state.channel, state, strict=False)
        if held is None:
            try:
                if state.owner == self.me:
                    await self.make_current(state)
                else:
                    await self.pull(state.owner, state.channel)
            except ExchangeError as exc:
                log.info("%s: no v2 epoch for %s now (%s); posting v1", self.me, state.channel, exc.detail)
                return None
            held = await self.current(state.channel, state, strict=False)
        if held is None:
            return None
        key = self.key(state.channel, held.n)
        return (held, key) if key is not None else None

    # -- as owner ---------------------------------------------------------------------------

    async def make_current(self, state: ChannelState) -> EpochRecord | None:
        """As owner: make the epoch for `state` unless the latest is it already; None if a reader
        takes no v2 (then the channel stays on v1)."""
        if not self.announce:  # v2 switched off here: no epochs, and no partner is asked
            return None
        async with self._lock:
            await self._reread(state.channel)  # what the node's other workers made
            for _ in range(MAKE_TRIES):
                held = await self.current(state.channel, state, strict=False)
                if held is not None or state.closed:
                    return held
                prev = self.latest(state.channel)
                if prev is not None and prev.state.pos > state.pos:
                    return None  # another worker made one for a later state than this one holds yet
                try:
                    if (ids := await self.wrap_key_ids(state.readers, strict=False, owner=True)) is None:
                        return None
                except Forbidden:  # UnknownPeer: a reader the roster suspended or revoked, until removed
                    return None
                record, key = make_epoch(
                    state,
                    n=prev.n + 1 if prev is not None else 0,
                    prev=prev,
                    keys={r: self.wrap_key(r) for r in state.readers},
                    owner_key=self.keys.signing,
                    created=timestamp(),
                )
                # Stored only if this node takes it as the state's own, else made anew at every fetch.
                try:
                    check_epoch_of_state(record, state, ids, None)
                except StaleEpoch as exc:
                    raise EpochInvalid(f"the epoch this node made for {state.channel} does not check: {exc}") from exc
                if epoch_hash(await self._store(record, key, made_entry(record))) == epoch_hash(record):
                    return record
                log.info("%s: epoch %d of %s was made by another worker", self.me, record.n, record.channel)
            return await self.current(state.channel, state, strict=False)

    async def _store(self, record: EpochRecord, key: EpochKey | None, entry: AuditEntry | None) -> EpochRecord:
        """Store a record made or taken here, and this node's key of it, unless another worker
        stored epoch n first (exchange.service.epoch_store); hold and return what is stored."""
        stored, stored_key = await store_epoch(self.store, record, key, entry)
        self._hold(stored, stored_key)
        held = self.record(stored.channel, stored.n)
        if held is None or epoch_hash(held) != epoch_hash(stored):  # its row edited outside the node
            raise EpochInvalid(f"the stored epoch {stored.n} of {stored.channel} is not usable (see the log)")
        return stored

    # -- serving and fetching ---------------------------------------------------------------

    def _wire(self, key: tuple[str, ...], model: BaseModel) -> bytes:
        """`model`'s JSON, made again only when another object is held under `key`."""
        got = self._wire_json.get(key)
        if got is None or got[0] is not model:
            got = self._wire_json[key] = (model, model.model_dump_json().encode())
        return got[1]

    async def serve(self, peer: str, channel: str, after: int) -> bytes:
        """Epoch records after `after`, for a current member (the JSON page of 15.12); the owner
        first makes the current one."""
        state = self.channels.state(channel)
        if NodeId(peer) not in state.members:
            raise Forbidden(f"{peer!r} is not a member of channel {channel!r}")
        if state.owner == self.me and not state.closed:
            try:
                await self.make_current(state)  # which first takes in what other workers stored
            except ExchangeError as exc:  # a reader's announcement, say: the records held still serve
                log.warning("%s: no current epoch of %s now (%s); serving those held", self.me, channel, exc.detail)
            current = await ensure_grant(self, state, peer)
        else:
            current = None
            await self.refresh(channel)
        held = self._records.get(channel, [])
        page = held[max(after + 1, 0) : max(after + 1, 0) + EPOCH_PAGE]
        records = [self._wire(("epoch", channel), r) if r is held[-1] else r.model_dump_json().encode() for r in page]
        records = records[: head_within(map(len, records), EPOCH_PAGE_BYTES)]  # a page is read whole (MAX_ANSWER_BYTES)
        page = page[: len(records)]
        more = after + 1 + len(page) < len(held)
        grants = grants_served(self, peer, channel, current)
        # The readers' announcements, which verify themselves (15.12): one fetch, not one per reader.
        readers = sorted({n for r in page for n in r.readers} - {peer})
        support = [
            self._wire(("support", n), self._support[n]) for n in readers if n in self._support and self.fed.listed(n)
        ]
        if self.me in readers and self.announce:
            support.append(self._wire(("support", self.me), self.announcement))
        return b'{"epochs":[%s],"more":%s,"grants":%s,"support":[%s]}' % (
            b",".join(records),
            b"true" if more else b"false",
            json.dumps([] if more else grants).encode(),
            b",".join(support),
        )

    async def pull(self, peer: str, channel: str) -> int:
        """Fetch the epoch records this node lacks from `peer` (any member); return how many were new."""
        await self.refresh(channel)  # ask only for what no worker of this node holds
        start = max((e.n for e in self.records(channel)), default=-1)
        # The readers' announcements the peer relays, kept for the records taken (`relayed_for`).
        async with self.relayed_for(
            lambda: {r for e in self.records(channel) if e.n > start for r in e.readers}
        ) as offered:
            return await self._pages(peer, channel, offered)

    async def _pages(self, peer: str, channel: str, offered: dict[str, EpochSupport]) -> int:
        fresh = 0
        carried: list[Any] = []  # history at a page's end, not pinned yet (15.6 rule 2): taken with the next page
        sizes: list[int] = []  # the bytes of each carried record
        while True:
            latest = self.latest(channel)
            after = parse_epoch(carried[-1]).n if carried else latest.n if latest else -1
            page = await self.transport.fetch(NodeId(peer), epochs_path(channel, after))
            try:
                raws = list(page["epochs"])
                more = bool(page.get("more")) and bool(raws)  # a page that brings nothing ends the answer
                relayed = list(page.get("support") or [])
            except (KeyError, TypeError) as exc:
                raise EpochInvalid(f"{peer} sent a malformed page of epoch records") from exc
            if raws and relayed:
                offered.update(self.relayed_support(relayed))
            carried_before = carried
            raws, carried = carried + raws, []
            keep = len(raws)
            if more:
                # The answer's last record always waits for the next page, so that it is judged as
                # the last (rule 7), however the answer ends; with it, the history it pins.
                keep = pinned_end(raws[:-1], self._signed_now, unsigned=max(len(carried_before) - 1, 0))
                carried = raws[keep:]
                if len(carried) > MAX_CARRIED:
                    raise EpochInvalid(f"{peer} sent more than {MAX_CARRIED} epoch records without a current signature")
                if parse_epoch(carried[-1]).n <= after:
                    raise EpochInvalid(f"{peer} sent a page of epoch records that does not go past epoch {after}")
            fresh += await self.accept(channel, raws, final=not more, keep=keep)
            if more:  # what is held over is checked now as far as it can be, not held unchecked page after page
                new = max(keep, len(carried_before))  # the first carried record not checked yet
                before = parse_epoch(raws[new - 1]) if new else self.record(channel, after) if after >= 0 else None
                sizes = sizes[keep:] + [len(json.dumps(raw)) for raw in raws[new:]]
                if sum(sizes) > MAX_CARRIED_BYTES:
                    raise EpochInvalid(f"{peer} sent over {MAX_CARRIED_BYTES} bytes of epoch records not pinned yet")
                for raw in raws[new:]:
                    before = check_carried(parse_epoch(raw), channel, before, self.fed)
            if not more:
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
        except EpochInvalid as exc:  # what the peer served breaks a rule (an owner's equivocation among them)
            log.warning("%s: epochs of %s from %s refused here: %s", self.me, channel, peer, exc.detail)
        except (ExchangeError, OSError, ValueError, KeyError) as exc:
            log.info("%s: epochs of %s from %s: %s", self.me, channel, peer, exc)
        return 0

    async def accept(self, channel: str, raws: Sequence[Any], *, final: bool = True, keep: int | None = None) -> int:
        """Check epoch records (15.6) in order and keep the new ones of the first `keep` (all: None;
        the rest, held over to the next page, only pin them); a bad one stops the rest.

        Only the last record of a `final` answer is judged against the readers' current wrap keys
        (rule 7): each earlier one is history, pinned by the next one's `prev`, and may wrap for
        keys rotated out since, but only if that next one is checked against it first: a record
        followed by one that does not extend it (forged, held already, or of another chain) is
        judged as the last. A record not signed with an active owner's current key (a revoked
        owner's, before its successor's handover; one signed before the owner's key rotation) is
        history too: it is kept only once the records that follow it in `raws`, up to one signed
        with an active owner's current key, are checked as well (rule 2).
        """
        fresh = 0
        pinned: set[str] = set()  # the hashes of history records whose run was checked whole
        for i, raw in enumerate(raws[:keep]):
            record = parse_epoch(raw)
            if record.channel != channel:
                raise EpochInvalid("an epoch record of another channel")
            held = self.record(channel, record.n)
            if held is not None:
                if epoch_hash(held) != epoch_hash(record):
                    await self._equivocates(record)
                continue
            if not self._signed_now(record) and epoch_hash(record) not in pinned:
                pinned |= await self._check_history(channel, record, raws[i + 1 :])
            ahead = raws[i + 1 : i + 2]
            await self._accept_one(record, judge_wraps=not await self._extended(record, ahead[0]) if ahead else final)
            fresh += 1
        return fresh

    async def _extended(self, record: EpochRecord, raw: Any) -> bool:
        """Whether `raw` is a record that the owner signed as the next after `record` (rule 4):
        only then is `record` history of the answer, pinned (rule 7)."""
        try:
            later = parse_epoch(raw)
            if later.channel != record.channel:
                return False
            await self._verified(later, record, judge_wraps=False)
        except ExchangeError:  # it is refused when its turn comes; `record` is the last taken
            return False
        return True

    def _signed_now(self, record: EpochRecord) -> bool:
        """Whether an active owner's current (active or retiring) signing key signed `record`."""
        return self.fed.listed(record.owner) and self.fed.signing_key_of(record.owner, record.signer) is not None

    async def _check_history(self, channel: str, record: EpochRecord, after: Sequence[Any]) -> set[str]:
        """Check `record`, signed with a key no longer current, and the records after it up to the
        first signed with a current one, which pins it; EpochInvalid if none follows (nothing kept).
        The hashes of the run's records (each pinned by that one)."""
        prev, run = self.latest(channel), [record]
        for raw in after:
            run.append(parse_epoch(raw))
            if self._signed_now(run[-1]):
                break
        else:
            raise EpochInvalid(
                f"epoch {record.n} of {channel} is signed with a key of {record.owner} that is no longer "
                "current, and no epoch signed with a current key follows it"
            )
        for later in run:
            if later.channel != channel:
                raise EpochInvalid("an epoch record of another channel")
            await self._verified(later, prev, judge_wraps=False)
            prev = later
        return {epoch_hash(r) for r in run}

    async def _accept_one(self, record: EpochRecord, *, judge_wraps: bool) -> None:
        async with self._lock:
            held = self.record(record.channel, record.n)
            if held is None and await self._reread(record.channel):  # another worker took it
                held = self.record(record.channel, record.n)
            if held is not None:
                if epoch_hash(held) == epoch_hash(record):
                    return  # taken meanwhile, from another envelope of the same epoch
                await self._equivocates(record)
            prev = self.latest(record.channel)
            if record.n != (prev.n + 1 if prev is not None else 0):
                raise EpochInvalid(f"epoch {record.n} of {record.channel} comes after a gap")
            await self._verified(record, prev, judge_wraps=judge_wraps)
            key = None
            wrap = record.wrap_for(self.me)
            if wrap is not None:
                key = open_epoch(record, self.me, self.unwrap_key(wrap.kid))  # DecryptionFailed: not stored
            taken: AuditEntry | None = None
            if key is not None:
                taken = {
                    "event": EPOCH_KEY_TAKEN,
                    "at": timestamp(),
                    "channel": record.channel,
                    "n": record.n,
                    "hash": epoch_hash(record),
                    "owner": record.owner,
                }
            if epoch_hash(await self._store(record, key, taken)) != epoch_hash(record):
                await self._equivocates(record)  # another worker took another record n meanwhile

    async def _equivocates(self, record: EpochRecord) -> None:
        """A second record n of a channel: refused (EpochInvalid); if the owner signed it, logged
        and audited (`epoch.equivocation`, once per record while the node runs), however it came."""
        await self._verified(record, self.record(record.channel, record.n - 1) if record.n else None, judge_wraps=False)
        log.error("%s: owner %s signed two epochs %d of %s", self.me, record.owner, record.n, record.channel)
        held, other = self.record(record.channel, record.n), epoch_hash(record)
        if held is not None and other not in self._equivocations:
            entry = equivocation(timestamp(), record.channel, record.n, record.owner, epoch_hash(held), other)
            await self.store.audit(entry)  # Unavailable: not audited yet, nor counted as audited
            self._equivocations.add(other)
        raise EpochInvalid(f"a different epoch {record.n} of {record.channel} is held: the owner equivocates")

    async def _verified(self, record: EpochRecord, prev: EpochRecord | None, *, judge_wraps: bool) -> None:
        """15.6 rules 2 to 8 against the state the record cites (fetched if need be); rule 7's
        wrap keys only with `judge_wraps`."""
        history = not self._signed_now(record)
        check_signed_by_owner(record, self.fed, history=history)  # before the state it cites is fetched
        try:
            state = await self.channels.ensure(record.channel, record.state)
        except NotFound as exc:
            raise EpochInvalid(f"the epoch cites an unknown channel state: {exc.detail}") from exc
        keys = await self.record_key_ids(record) if judge_wraps else {}
        verify_epoch(record, self.fed, state, keys, prev, history=history, judge_wraps=judge_wraps)
