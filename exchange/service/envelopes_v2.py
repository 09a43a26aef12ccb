"""v2 envelopes on a node (docs/protocol.md, 15.5 and 15.8): screening, the receiver rules that
need state, the stored row, and the check made again each time a stored one is opened.

Receivers dispatch on `header.v`: v1 goes through `EnvelopeCrypto` (worker processes), v2 here,
on the event loop (one signature, one HKDF and one AES-GCM per envelope; no HPKE).
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from exchange.audit.keeper import as_bytes
from exchange.crypto import EpochKey, SigningKey, b64d, canonical_json, sha256
from exchange.errors import BulletinUnverified, ExchangeError, InvalidEnvelope, InvalidInput, NotFound, StaleEpoch
from exchange.model import Bulletin, BulletinId, ChannelId, NodeId, StateRef
from exchange.protocol.channel import ChannelState
from exchange.protocol.envelope import CitedHeader, CitedRecipient, CitedState, pickled_by_fields
from exchange.protocol.envelope_v2 import (
    build_envelope_v2,
    bulletin_id_v2,
    check_author_v2,
    check_signature_v2,
    envelope_v2_bytes,
    open_envelope_v2,
    parse_envelope_v2,
    verify_envelope_v2,
)
from exchange.protocol.epoch import epoch_hash
from exchange.protocol.epoch_model import EnvelopeHeaderV2, EnvelopeV2, EpochRecord
from exchange.protocol.roster import Federation
from exchange.service.channels import ChannelBook
from exchange.service.cryptopool import EnvelopeCrypto, Opening, Sealed
from exchange.service.epoch_demand import find_epoch
from exchange.service.epochs import EpochBook
from exchange.service.records import header_row, search_text_of, summary_of
from exchange.service.views import BulletinView


def is_v2(raw: Any) -> bool:
    """Whether a received envelope (parsed JSON) says it is v2; anything else goes the v1 way."""
    return isinstance(raw, dict) and isinstance(h := raw.get("header"), dict) and h.get("v") == 2


def stored_v2(wire: bytes) -> bool:
    """Whether stored envelope bytes are v2: the header is JCS, so `"v":2` is its last member."""
    return b',"v":2},"signature":"' in wire


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class OpeningV2(Opening):
    """A received v2 envelope after parsing and its signature check; opened with state later."""

    env: EnvelopeV2 | None


def cited(h: EnvelopeHeaderV2, readers: tuple[str, ...] = ()) -> CitedHeader:
    """What `Receiving` reads of a checked header (as of v1), with the epoch's readers."""
    return CitedHeader(
        h.channel,
        h.author,
        h.seq,
        CitedState(h.state.owner, h.state.pos, h.state.hash),
        _recipients(readers),
        h.signer,
    )


@functools.lru_cache(maxsize=64)
def _recipients(readers: tuple[str, ...]) -> tuple[CitedRecipient, ...]:
    """An epoch's readers as cited recipients: made once per epoch, not once per envelope (every
    envelope of an epoch of 200 readers would build 200 of them)."""
    return tuple(CitedRecipient(r) for r in readers)


def screen_v2(index: int, raw: Any, peer: str, relayed: bool, fed: Federation) -> OpeningV2:
    """15.8 rules 1, 2 and 5: parse, pusher, signature (before any state is asked for)."""
    try:
        env = parse_envelope_v2(raw)
        if not relayed and env.header.author != peer:
            raise InvalidEnvelope("a peer may push only envelopes it authored")
    except ExchangeError as exc:
        return OpeningV2(index, None, None, exc, None, None, None, None, None)
    bid = bulletin_id_v2(env.header)
    bad: ExchangeError | None = None
    try:
        check_signature_v2(env, fed)
    except ExchangeError as exc:
        bad = exc
    return OpeningV2(index, bid, cited(env.header), None, bad, None, None, None, env)


def row_v2(env: EnvelopeV2, bid: str, payload: bytes, epoch: EpochRecord, now: str) -> dict[str, Any]:
    """A stored v2 bulletin: its envelope, its content, and as recipients the epoch's readers."""
    content = json.loads(payload)
    derived = {"summary": canonical_json(summary_of(content)).decode(), "search_text": search_text_of(content)}
    return header_row(env.header, bid, envelope_v2_bytes(env), payload.decode(), derived, now, epoch.readers)


async def check_v2(
    o: OpeningV2, me: NodeId, peer: str, fed: Federation, channels: ChannelBook, epochs: EpochBook
) -> tuple[CitedHeader, str, dict[str, Any]]:
    """15.8 rules 3, 4 and 6 to 13 for one screened v2 envelope; its header, id and row, or raise."""
    if o.refused is not None:
        raise o.refused
    if o.bad_signature is not None:
        raise o.bad_signature
    assert o.env is not None  # screened without refusal: it parsed
    env, h = o.env, o.env.header
    try:
        state = await channels.ensure(h.channel, StateRef.model_construct(**h.state.model_dump()))
    except NotFound as exc:
        raise InvalidEnvelope(f"unknown channel state: {exc.detail}") from exc
    check_author_v2(h, fed, state)  # rules 6 to 8 first: no other author makes this node fetch
    sources = [peer, state.owner, *sorted(channels.state(h.channel).members)]
    epoch = await find_epoch(epochs, h.channel, h.epoch.n, sources)
    ids = await epochs.wrap_key_ids(epoch.readers, strict=True)
    if ids is None:
        raise StaleEpoch("the epoch wraps for a node that announced no v2 support")
    bid = verify_envelope_v2(env, fed, state, epoch, ids, epochs.record(h.channel, h.epoch.n + 1))
    latest = channels.state(h.channel)
    if "post" not in latest.rights(h.author) or latest.closed:
        raise InvalidEnvelope("the author no longer holds the post right in the channel")
    key = epochs.key(h.channel, h.epoch.n)
    if key is None:
        raise InvalidEnvelope("this node holds no key of the envelope's epoch: it is not one of its readers")
    bulletin = open_envelope_v2(env, key)
    return cited(h, tuple(epoch.readers)), bid, row_v2(env, bid, bulletin.payload_bytes, epoch, "")


@dataclass(frozen=True)
class VerifiedV2:
    """A stored v2 bulletin, checked again now: its envelope, content and the epoch's readers."""

    env: EnvelopeV2
    bulletin: Bulletin
    readers: list[str]


def verified_v2(row: Any, fed: Federation, epochs: EpochBook) -> VerifiedV2:
    """The stored row against its signed v2 envelope, as `inbox._verified_bulletin` does for v1.

    BulletinUnverified names the first check that failed, never the content.
    """
    try:
        env = parse_envelope_v2(as_bytes(row.envelope))
    except ExchangeError as exc:
        raise BulletinUnverified(f"its stored envelope does not parse ({exc.detail[:120]})") from exc
    h = env.header
    try:
        check_signature_v2(env, fed, stored=True)  # taken in earlier (6a.7)
    except ExchangeError as exc:
        raise BulletinUnverified(
            f"the signature of {h.author} over its stored envelope does not verify: the envelope was changed"
        ) from exc
    if bulletin_id_v2(h) != row.id:
        raise BulletinUnverified("its signed header hashes to another id: the stored id or envelope was changed")
    try:
        intact = hmac.compare_digest(sha256(b64d(env.ciphertext)), b64d(h.ciphertext_sha256))
    except InvalidInput:
        intact = False
    if not intact:
        raise BulletinUnverified("its ciphertext does not match the hash its signed header commits to")
    signed = (h.channel, h.author, h.seq, h.handling.tlp, h.created, h.state.pos)
    if (row.channel, row.author, row.seq, row.tlp, row.created, row.state_pos) != signed:
        raise BulletinUnverified("its stored columns differ from the signed header's: the row was changed")
    epoch = epochs.record(h.channel, h.epoch.n)
    key = epochs.key(h.channel, h.epoch.n)
    if epoch is None or epoch_hash(epoch) != h.epoch.hash or key is None:
        raise BulletinUnverified("this node holds no key of its epoch, so its stored content cannot be checked")
    try:
        bulletin = open_envelope_v2(env, key)
    except ExchangeError as exc:
        raise BulletinUnverified("its envelope no longer decrypts with its epoch's key") from exc
    content = row.content.encode("utf-8") if isinstance(row.content, str) else b""
    if not hmac.compare_digest(content, bulletin.payload_bytes):
        raise BulletinUnverified("its stored content differs from what its signed envelope decrypts to")
    return VerifiedV2(env, bulletin, list(epoch.readers))


async def verified_v2_held(row: Any, fed: Federation, epochs: EpochBook) -> VerifiedV2:
    """`verified_v2`, checked once more after taking in what the node's other workers stored of
    the channel's epochs, if this worker did not hold the bulletin's epoch or its key yet."""
    try:
        return verified_v2(row, fed, epochs)
    except BulletinUnverified:
        if not await epochs.refresh(row.channel):
            raise
        return verified_v2(row, fed, epochs)


def seal_v2(
    bulletin: Bulletin,
    state: ChannelState,
    epoch: tuple[EpochRecord, EpochKey],
    me: NodeId,
    key: SigningKey,
    seq: int,
    now: str,
) -> Sealed:
    """An author's v2 envelope for `bulletin` under `epoch` (record, key), and its stored row."""
    record, epoch_key = epoch
    env = build_envelope_v2(
        bulletin, state=state, epoch=record, epoch_key=epoch_key, author=me, key=key, seq=seq, created=now
    )
    bid = bulletin_id_v2(env.header)
    return Sealed(bid, row_v2(env, bid, bulletin.payload_bytes, record, now))


async def screen_mixed(
    crypto: EnvelopeCrypto,
    fed: Federation,
    raws: Sequence[Any],
    peer: str,
    relayed: bool,
    held: Callable[[list[str]], Awaitable[set[str]]],
    unheld: bool,
) -> tuple[list[Opening], set[str]]:
    """Screen a batch that holds v2 envelopes: v1 ones by `crypto` (workers), v2 ones here."""
    old = [(i, raw) for i, raw in enumerate(raws) if not is_v2(raw)]
    new = [screen_v2(i, raw, peer, relayed, fed) for i, raw in enumerate(raws) if is_v2(raw)]
    items: list[Opening] = []
    known: set[str] = set()
    if old:
        opened, known = await crypto.open([r for _, r in old], peer=peer, relayed=relayed, held=held, unheld=unheld)
        items = [dataclasses.replace(o, index=old[o.index][0]) for o in opened]
    ids = [o.bid for o in new if o.bid is not None]
    known |= await held(ids) if ids else set()
    return sorted([*items, *new], key=lambda o: o.index), known


def view_v2(v: VerifiedV2, fed: Federation, stored_receipts: Sequence[str]) -> BulletinView:
    """What a local reader sees of a checked v2 bulletin: as v1, with the epoch's readers."""
    h = v.env.header
    return BulletinView(
        id=BulletinId(bulletin_id_v2(h)),
        channel=ChannelId(h.channel),
        author=NodeId(h.author),
        author_name=fed.name_of(h.author),
        seq=h.seq,
        created=h.created,
        signature_verified=True,  # by verified_v2, for this request
        signer=h.signer,
        recipients=[NodeId(r) for r in v.readers],
        bulletin=v.bulletin.model_dump(mode="json"),
        receipts=[json.loads(r) for r in stored_receipts],
    )
