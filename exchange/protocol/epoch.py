"""Channel epochs (docs/protocol.md, 15): the owner's signed epoch records and history grants.

The owner draws an epoch key whenever the readers change and wraps it once per reader; bulletins
are then encrypted under keys derived from it (exchange.protocol.envelope_v2). A grant wraps
earlier epoch keys for a member that was granted the channel's history.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from exchange.crypto import SigningKey, b64d, b64e, canonical_json, sha256, strict_loads
from exchange.crypto.content import Random, os_random
from exchange.crypto.epoch import SUITE_X25519, WRAP_SIZES, EpochKey, UnwrapKey, WrapKey, suite_of, unwrap_epoch_key
from exchange.errors import DecryptionFailed, EpochInvalid, InvalidInput
from exchange.model import StateRef, first_error
from exchange.protocol.channel import ChannelState
from exchange.protocol.epoch_model import EpochRecord, HistoryGrant
from exchange.protocol.roster import Federation
from exchange.protocol.signing import sign, verify

EPOCH_DOMAIN = "epoch"
GRANT_DOMAIN = "history-grant"
MAX_EPOCH_BYTES = 4 * 1024 * 1024  # 1,000 hybrid wraps take about 1.6 MB


@dataclass(frozen=True)
class WrapKeyId:
    """The key a reader's wraps must be for: what its roster entry lists (docs/protocol.md, 15.4)."""

    suite: str
    kid: str

    @classmethod
    def of(cls, key: WrapKey) -> WrapKeyId:
        return cls(suite_of(key), key.kid)


def roster_wrap_keys(fed: Federation, hybrid: Mapping[str, WrapKeyId] | None = None) -> dict[str, WrapKeyId]:
    """Every node's wrap key id: its hybrid key where one is listed, else its X25519 roster key.

    The v1 roster lists no hybrid keys, so the caller passes those it knows (roster v2 will list them).
    """
    out = {n.id: WrapKeyId(SUITE_X25519, n.encryption_kid) for n in fed.roster.nodes}
    out.update(hybrid or {})
    return out


def epoch_hash(record: EpochRecord) -> str:
    """The hash an envelope cites and the next epoch chains to (signature included)."""
    return sha256(record.canonical).hex()


def grant_digest(grant: HistoryGrant) -> str:
    """SHA-256 of the RFC 8785 form of the whole grant (signature included), hex: how the audit
    logs of its owner and its grantee name it (docs/audit.md), as an epoch is named by its hash."""
    return sha256(canonical_json(grant.model_dump(mode="json"))).hex()


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "big")


def epoch_wrap_info(channel: str, n: int, state_hash: str, node: str, kid: str) -> bytes:
    """HPKE `info` of an epoch wrap: one channel, one epoch, one state, one reader key."""
    return b"".join(
        (b"exchange-v2/epoch-wrap\x00", channel.encode("ascii"), b"\x00", _u64(n), bytes.fromhex(state_hash)),
    ) + b"".join((node.encode("ascii"), b"\x00", kid.encode("ascii")))


def grant_wrap_info(channel: str, n: int, epoch_hash_hex: str, node: str, kid: str) -> bytes:
    """HPKE `info` of a granted epoch key: one channel, one epoch (by its hash), one grantee key."""
    return b"".join(
        (b"exchange-v2/grant-wrap\x00", channel.encode("ascii"), b"\x00", _u64(n), bytes.fromhex(epoch_hash_hex)),
    ) + b"".join((node.encode("ascii"), b"\x00", kid.encode("ascii")))


def _parse(model: type[EpochRecord] | type[HistoryGrant], data: bytes | dict[str, Any]) -> Any:
    if isinstance(data, bytes | bytearray):
        if len(data) > MAX_EPOCH_BYTES:
            raise EpochInvalid("epoch record or grant too large")
        try:
            data = strict_loads(data)
        except InvalidInput as exc:
            raise EpochInvalid(exc.detail) from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise EpochInvalid(f"{model.__name__} does not match the schema: {first_error(exc)}") from exc


def _b64(text: str) -> bytes:
    try:
        return b64d(text)
    except InvalidInput as exc:
        raise EpochInvalid("malformed base64url field") from exc


# -- epoch records ---------------------------------------------------------------------------


def make_epoch(
    state: ChannelState,
    *,
    n: int,
    prev: EpochRecord | None,
    keys: Mapping[str, WrapKey],
    owner_key: SigningKey,
    created: str,
    rng: Random = os_random,
) -> tuple[EpochRecord, EpochKey]:
    """Draw a new epoch key and wrap it for every reader of `state`, with the key `keys` lists for each."""
    epoch_key = EpochKey.generate(rng)
    wraps = []
    for node in state.readers:
        key = keys.get(node)
        if key is None:
            raise EpochInvalid(f"no wrap key is known for the reader {node}")
        info = epoch_wrap_info(state.channel, n, state.hash, node, key.kid)
        wraps.append({"node": node, "kid": key.kid, "suite": suite_of(key), "wrap": b64e(epoch_key.wrap(key, info))})
    body = {
        "v": 2,
        "channel": state.channel,
        "owner": state.owner,
        "n": n,
        "prev": epoch_hash(prev) if prev is not None else None,
        "state": {"owner": state.owner, "pos": state.pos, "hash": state.hash},
        "created": created,
        "commitment": b64e(epoch_key.commitment),
        "wraps": wraps,
    }
    return sign_epoch(body, owner_key), epoch_key


def sign_epoch(body: dict[str, Any], owner_key: SigningKey) -> EpochRecord:
    """Sign an epoch record's body (everything but `signer` and `signature`) as the owner."""
    body = {**body, "signer": owner_key.kid}
    try:
        return EpochRecord.model_validate({**body, "signature": sign(EPOCH_DOMAIN, body, owner_key)})
    except ValidationError as exc:
        raise EpochInvalid(f"epoch record does not match the schema: {first_error(exc)}") from exc


def parse_epoch(data: bytes | dict[str, Any]) -> EpochRecord:
    result: EpochRecord = _parse(EpochRecord, data)
    return result


def _check_owner_signature(
    domain: str, signed: EpochRecord | HistoryGrant, fed: Federation, *, history: bool = False
) -> None:
    # current or retiring (6a.13); with `history`, a departed owner's non-compromised key too (15.6)
    key = fed.signing_key_of(signed.owner, signed.signer, stored=history)
    if key is None:
        raise EpochInvalid(f"the {domain} is not signed with the owner's roster key")
    verify(domain, signed.model_dump(mode="json", exclude={"signature"}), signed.signature, key)


def check_signed_by_owner(signed: EpochRecord | HistoryGrant, fed: Federation, *, history: bool = False) -> None:
    """An epoch record's or a grant's owner signature (15.6 rule 2, 15.7 rule 1), and that it cites
    a state of its own owner's: what a receiver checks before it fetches anything the item cites
    (a channel log, from the node the reference names as owner)."""
    _check_owner_signature(
        EPOCH_DOMAIN if isinstance(signed, EpochRecord) else GRANT_DOMAIN, signed, fed, history=history
    )
    if signed.state.owner != signed.owner:
        raise EpochInvalid("the channel or owner is not the channel's")


def check_carried(record: EpochRecord, channel: str, prev: EpochRecord | None, fed: Federation) -> EpochRecord:
    """What a receiver checks at once of a record it holds over to the next page of an answer
    (15.6 rule 2, 15.12), before the record that pins it comes: its channel, that it follows
    `prev` (rule 4's `n` and `prev`; None: it is epoch 0), and its owner's signature, with any key
    the roster lists for the owner and does not mark compromised. Returns `record`."""
    if record.channel != channel:
        raise EpochInvalid("an epoch record of another channel")
    if (record.n, record.prev) != ((prev.n + 1, epoch_hash(prev)) if prev is not None else (0, None)):
        raise EpochInvalid(f"epoch {record.n} of {channel} does not extend the epoch before it")
    current = fed.listed(record.owner) and fed.signing_key_of(record.owner, record.signer) is not None
    check_signed_by_owner(record, fed, history=not current)
    return record


def pinned_end(raws: Sequence[Any], signed_now: Callable[[EpochRecord], bool], *, unsigned: int = 0) -> int:
    """How many of `raws` end with a record signed with a current key (`signed_now`; the rest,
    history not pinned yet, waits for the next page); the first `unsigned` are known not to be
    (held over from the pages before), so each record is looked at once however many pages hold it."""
    for i in range(len(raws) - 1, unsigned - 1, -1):
        if signed_now(parse_epoch(raws[i])):
            return i + 1
    return 0


def check_stored(record: EpochRecord, prev: EpochRecord | None, fed: Federation) -> None:
    """That a record read back from this node's store is one it checked when it came (15.12,
    "Storage"): it extends `prev`, the record held just before it (None: it is epoch 0), and its
    owner signed it with a key the roster lists or listed for the owner, in any state. EpochInvalid
    if not: its row was edited outside the node. Whether the key may still sign new records is
    not asked again (a record stored before its owner's key was retired or marked compromised
    stays as it was taken)."""
    if (record.n, record.prev) != ((prev.n + 1, epoch_hash(prev)) if prev is not None else (0, None)):
        raise EpochInvalid(f"epoch {record.n} of {record.channel} does not extend the epoch before it")
    key = fed.any_signing_key_of(record.owner, record.signer)
    if key is None:
        raise EpochInvalid("the epoch is not signed with a key the roster lists for its owner")
    verify(EPOCH_DOMAIN, record.model_dump(mode="json", exclude={"signature"}), record.signature, key)


def _check_state(ref: StateRef, channel: str, owner: str, state: ChannelState) -> None:
    if (channel, owner, ref.owner) != (state.channel, state.owner, state.owner):
        raise EpochInvalid("the channel or owner is not the channel's")
    if (ref.pos, ref.hash) != (state.pos, state.hash):
        raise EpochInvalid("the cited channel state is not the one checked")
    if state.closed:
        raise EpochInvalid("the cited channel state is closed")


def _check_wrap(suite: str, kid: str, wrap: str, node: str, keys: Mapping[str, WrapKeyId]) -> None:
    expected = keys.get(node)
    if expected is None or (suite, kid) != (expected.suite, expected.kid):
        raise EpochInvalid(f"the wrap for {node} is not for the key its roster entry lists")
    if len(_b64(wrap)) != WRAP_SIZES[suite]:
        raise EpochInvalid(f"malformed wrap for {node}")


def verify_epoch(
    record: EpochRecord,
    fed: Federation,
    state: ChannelState,
    keys: Mapping[str, WrapKeyId],
    prev: EpochRecord | None,
    *,
    history: bool = False,
    judge_wraps: bool = True,
) -> str:
    """Check an epoch record (docs/protocol.md, 15.6, rules 2 to 8); return its hash.

    `state` is the receiver's channel state at `record.state.pos`; `prev` the epoch it holds just
    before (None if it holds none); `keys` the roster wrap key of each reader that the held
    version lists as active. Rule 7 judges their wraps' keys with `judge_wraps` (the latest record
    of an answer); other wraps are checked for length only. `history`: the record is not signed
    with an active owner's current key, and a later record signed with one follows it (rule 2).
    """
    _check_owner_signature(EPOCH_DOMAIN, record, fed, history=history)
    if (record.channel, record.owner) != (state.channel, state.owner):
        raise EpochInvalid("the channel or owner is not the channel's")
    if prev is None:
        if record.n != 0 or record.prev is not None:
            raise EpochInvalid("the first epoch of a channel is number 0, with no prev")
    elif (
        record.channel != prev.channel
        or record.n != prev.n + 1
        or record.prev != epoch_hash(prev)
        or record.state.pos < prev.state.pos
    ):
        raise EpochInvalid("the epoch does not extend the epoch before it")
    _check_state(record.state, record.channel, record.owner, state)
    if record.readers != state.readers:
        raise EpochInvalid("the wrapped nodes differ from the readers of the cited state")
    for w in record.wraps:
        if judge_wraps and fed.listed(w.node):
            _check_wrap(w.suite, w.kid, w.wrap, w.node, keys)
        elif len(_b64(w.wrap)) != WRAP_SIZES[w.suite]:
            raise EpochInvalid(f"malformed wrap for {w.node}")
    if len(_b64(record.commitment)) != 32:
        raise EpochInvalid("malformed epoch key commitment")
    return epoch_hash(record)


def open_epoch(record: EpochRecord, me: str, key: UnwrapKey) -> EpochKey:
    """This node's epoch key, from its wrap (15.6 rule 9). One error for every failure."""
    wrap = record.wrap_for(me)
    if wrap is None or wrap.kid != key.kid or wrap.suite != suite_of(key):
        raise DecryptionFailed()
    info = epoch_wrap_info(record.channel, record.n, record.state.hash, me, key.kid)
    try:
        return unwrap_epoch_key(b64d(wrap.wrap), info, key, b64d(record.commitment))
    except InvalidInput as exc:
        raise DecryptionFailed() from exc


# -- history grants --------------------------------------------------------------------------


def make_grant(
    state: ChannelState,
    *,
    node: str,
    key: WrapKey,
    epochs: Sequence[tuple[EpochRecord, EpochKey]],
    owner_key: SigningKey,
    created: str,
) -> HistoryGrant:
    """Wrap the keys of `epochs` for `node`, a reader granted the history in `state`."""
    granted = []
    for record, epoch_key in sorted(epochs, key=lambda e: e[0].n):
        h = epoch_hash(record)
        info = grant_wrap_info(record.channel, record.n, h, node, key.kid)
        granted.append({"n": record.n, "hash": h, "wrap": b64e(epoch_key.wrap(key, info))})
    body = {
        "v": 2,
        "channel": state.channel,
        "owner": state.owner,
        "node": node,
        "state": {"owner": state.owner, "pos": state.pos, "hash": state.hash},
        "created": created,
        "kid": key.kid,
        "suite": suite_of(key),
        "epochs": granted,
    }
    return sign_grant(body, owner_key)


def sign_grant(body: dict[str, Any], owner_key: SigningKey) -> HistoryGrant:
    """Sign a grant's body (everything but `signer` and `signature`) as the owner."""
    body = {**body, "signer": owner_key.kid}
    try:
        return HistoryGrant.model_validate({**body, "signature": sign(GRANT_DOMAIN, body, owner_key)})
    except ValidationError as exc:
        raise EpochInvalid(f"history grant does not match the schema: {first_error(exc)}") from exc


def parse_grant(data: bytes | dict[str, Any]) -> HistoryGrant:
    result: HistoryGrant = _parse(HistoryGrant, data)
    return result


def verify_grant(
    grant: HistoryGrant,
    fed: Federation,
    state: ChannelState,
    keys: Mapping[str, WrapKeyId],
    epochs: Mapping[int, EpochRecord],
) -> None:
    """Check a history grant (docs/protocol.md, 15.7, rules 1 to 4); return None or raise.

    `state` is the receiver's channel state at `grant.state.pos`; `epochs` the epoch records it
    holds for the channel, by number.
    """
    _check_owner_signature(GRANT_DOMAIN, grant, fed)
    _check_state(grant.state, grant.channel, grant.owner, state)
    if grant.node not in state.readers or grant.node not in state.history_grants:
        raise EpochInvalid(f"{grant.node} is not a reader granted the history in the cited state")
    for e in grant.epochs:
        _check_wrap(grant.suite, grant.kid, e.wrap, grant.node, keys)
        record = epochs.get(e.n)
        if record is None or record.channel != grant.channel or epoch_hash(record) != e.hash:
            raise EpochInvalid(f"the grant names epoch {e.n}, which is not one this node holds")
        if record.state.pos > grant.state.pos:
            raise EpochInvalid(f"the grant names epoch {e.n}, made after the state it cites")


def open_grant(grant: HistoryGrant, epochs: Mapping[int, EpochRecord], me: str, key: UnwrapKey) -> dict[int, EpochKey]:
    """The granted epoch keys, by epoch number (15.7 rule 5). Call after verify_grant; one error for all."""
    if grant.node != me or grant.kid != key.kid or grant.suite != suite_of(key):
        raise DecryptionFailed()
    out: dict[int, EpochKey] = {}
    for e in grant.epochs:
        info = grant_wrap_info(grant.channel, e.n, e.hash, me, key.kid)
        try:
            out[e.n] = unwrap_epoch_key(b64d(e.wrap), info, key, b64d(epochs[e.n].commitment))
        except (InvalidInput, KeyError) as exc:
            raise DecryptionFailed() from exc
    return out


def commitment_matches(record: EpochRecord, epoch_key: EpochKey) -> bool:
    """Whether `epoch_key` is the key `record` commits to (constant time)."""
    return hmac.compare_digest(epoch_key.commitment, b64d(record.commitment))
