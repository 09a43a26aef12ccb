"""Build, verify and open v2 envelopes (docs/protocol.md, 15.5 and 15.8): bulletins under epoch keys.

A v2 envelope carries no wraps: its readers are those of the epoch it cites, whose key was
wrapped for each of them once (exchange.protocol.epoch). As in v1, a receiver checks the author's
signature before any other rule, and the state the header cites before it trusts the epoch.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from exchange.crypto import EpochKey, SigningKey, b64d, b64e, sha256
from exchange.crypto.content import Random, os_random
from exchange.crypto.epoch import SALT_SIZE, BulletinKey, bulletin_info
from exchange.errors import DecryptionFailed, InvalidEnvelope, InvalidInput, StaleEpoch
from exchange.model import MAX_PAYLOAD_BYTES, Bulletin, BulletinId, NodeId, StateRef
from exchange.protocol.channel import ChannelState
from exchange.protocol.envelope import bulletin_from_payload, parse_wire
from exchange.protocol.epoch import WrapKeyId, epoch_hash
from exchange.protocol.epoch_model import CONTENT_SUITE, EnvelopeHeaderV2, EnvelopeV2, EpochRecord, EpochRef
from exchange.protocol.roster import Federation
from exchange.protocol.signing import signing_input_prefix

DOMAIN = "envelope-v2"


def bulletin_id_v2(header: EnvelopeHeaderV2) -> BulletinId:
    """The content-hash id, as in v1: hex SHA-256 of the canonical header."""
    return BulletinId(sha256(header.canonical).hex())


def signed_input_v2(header: EnvelopeHeaderV2) -> bytes:
    """`signing_input("envelope-v2", {"header": header})`, from the header's canonical bytes."""
    return signing_input_prefix(DOMAIN) + b'{"header":' + header.canonical + b"}"


def bulletin_key(header: EnvelopeHeaderV2, epoch_key: EpochKey) -> BulletinKey:
    """The key of one bulletin (15.3): it opens this bulletin and no other, and reveals not the epoch key."""
    info = bulletin_info(bytes.fromhex(header.epoch.hash), header.author, header.seq)
    return epoch_key.bulletin_key(_b64(header.salt), info)


def build_envelope_v2(
    bulletin: Bulletin,
    *,
    state: ChannelState,
    epoch: EpochRecord,
    epoch_key: EpochKey,
    author: NodeId,
    key: SigningKey,
    seq: int,
    created: str,
    rng: Random = os_random,
) -> EnvelopeV2:
    """Encrypt `bulletin` under a key derived from the current epoch's key, and sign it as `author`.

    The epoch must be the one for `state` (its readers are the state's): the author refuses to
    encrypt to a reader set other than the state's, as every receiver would (15.8 rule 10).
    """
    payload = bulletin.payload_bytes
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InvalidInput(f"the bulletin's encrypted part takes {len(payload)} bytes, more than {MAX_PAYLOAD_BYTES}")
    if epoch.channel != state.channel or epoch.state.pos > state.pos or epoch.readers != state.readers:
        raise StaleEpoch("the epoch is not the one for this channel state: wait for the owner's new epoch")
    if not hmac.compare_digest(epoch_key.commitment, _b64(epoch.commitment)):
        raise StaleEpoch("the epoch key is not the one the epoch record commits to")
    salt = rng(SALT_SIZE)
    ehash = epoch_hash(epoch)
    info = bulletin_info(bytes.fromhex(ehash), author, seq)
    ciphertext = epoch_key.bulletin_key(salt, info).seal(payload)
    header = EnvelopeHeaderV2(
        v=2,
        suite=CONTENT_SUITE,
        channel=state.channel,
        author=author,
        signer=key.kid,
        seq=seq,
        state=StateRef(owner=state.owner, pos=state.pos, hash=state.hash),
        epoch=EpochRef(n=epoch.n, hash=ehash),
        handling=bulletin.handling,
        created=created,
        salt=b64e(salt),
        ciphertext_sha256=b64e(sha256(ciphertext)),
    )
    return sign_envelope_v2(header, ciphertext, key)


def sign_envelope_v2(header: EnvelopeHeaderV2, ciphertext: bytes, key: SigningKey) -> EnvelopeV2:
    """Sign the header, which commits to the ciphertext, the cited state and the epoch."""
    return EnvelopeV2(header=header, ciphertext=b64e(ciphertext), signature=b64e(key.sign(signed_input_v2(header))))


def envelope_v2_bytes(env: EnvelopeV2) -> bytes:
    """The canonical wire form: JCS, with members in order (ciphertext, header, signature)."""
    return b"".join(
        (
            b'{"ciphertext":"',
            env.ciphertext.encode("ascii"),
            b'","header":',
            env.header.canonical,
            b',"signature":"',
            env.signature.encode("ascii"),
            b'"}',
        )
    )


def parse_envelope_v2(data: bytes | dict[str, Any]) -> EnvelopeV2:
    """Parse wire bytes (or an already strictly-parsed object) into a v2 envelope."""
    return parse_wire(EnvelopeV2, data)


def verify_envelope_v2(
    env: EnvelopeV2,
    fed: Federation,
    state: ChannelState,
    epoch: EpochRecord,
    keys: Mapping[str, WrapKeyId],
    next_epoch: EpochRecord | None = None,
) -> BulletinId:
    """Check every rule a receiver can check without decrypting (15.8, rules 4 to 10); return the id.

    `state` is the channel state the header cites and `epoch` the epoch record the receiver holds
    under `header.epoch.n` (the caller looks both up); `next_epoch` the one after it, if held;
    `keys` each node's roster wrap key.
    """
    h = env.header
    if epoch.n != h.epoch.n or epoch_hash(epoch) != h.epoch.hash:
        raise InvalidEnvelope("the envelope cites an epoch other than the one checked")
    check_signature_v2(env, fed)
    check_author_v2(h, fed, state)
    if len(_b64(h.salt)) != SALT_SIZE:
        raise InvalidEnvelope("malformed salt")
    if not hmac.compare_digest(sha256(_b64(env.ciphertext)), _b64(h.ciphertext_sha256)):
        raise InvalidEnvelope("ciphertext does not match its hash in the header")
    check_epoch_of_state(epoch, state, keys, next_epoch)
    return bulletin_id_v2(h)


def check_author_v2(h: EnvelopeHeaderV2, fed: Federation, state: ChannelState) -> None:
    """15.8 rules 6 to 8: the header cites `state`, which is open, and its author's agency is in the
    policy and it holds `post` and `read` there. A receiver checks them before it fetches an epoch
    record the envelope cites (rule 4), so that only such an author can make it fetch."""
    author = fed.node(h.author)
    if (h.channel, h.state.owner, h.state.pos, h.state.hash) != (state.channel, state.owner, state.pos, state.hash):
        raise InvalidEnvelope("envelope cites a channel state other than the one checked")
    if state.closed:
        raise InvalidEnvelope("the cited channel state is closed")
    if author.agency not in state.policy.agencies:
        raise InvalidEnvelope(f"channel policy excludes the author's agency ({author.agency})")
    if "post" not in state.rights(h.author):
        raise InvalidEnvelope("the author lacks the post right in the cited channel state")
    if "read" not in state.rights(h.author):
        raise InvalidEnvelope("the author lacks the read right in the cited channel state, which v2 needs")


def check_signature_v2(env: EnvelopeV2, fed: Federation, *, stored: bool = False) -> None:
    """The author's roster key signed the header; with `stored` (a row this node took in earlier,
    checked again), a verify-only key or a departed author's key too (6a.7, 6a.13)."""
    h = env.header
    key = fed.signing_key_of(h.author, h.signer, stored=stored)  # current or retiring (6a.13)
    if key is None:
        raise InvalidEnvelope("envelope is not signed with the author's roster key")
    key.verify(_b64(env.signature), signed_input_v2(h))


def check_epoch_of_state(
    epoch: EpochRecord, state: ChannelState, keys: Mapping[str, WrapKeyId], next_epoch: EpochRecord | None
) -> None:
    """The epoch is the current one of the state (15.8 rule 10); return None or raise StaleEpoch."""
    if epoch.channel != state.channel or epoch.state.pos > state.pos:
        raise StaleEpoch("the epoch was made for a later channel state than the one cited")
    if epoch.readers != state.readers:
        raise StaleEpoch("the epoch's readers differ from the readers of the cited channel state")
    for w in epoch.wraps:
        expected = keys.get(w.node)
        if expected is None or (w.suite, w.kid) != (expected.suite, expected.kid):
            raise StaleEpoch(f"the epoch wraps for a key of {w.node} that its roster entry no longer lists")
    if next_epoch is not None and next_epoch.n > epoch.n and next_epoch.state.pos <= state.pos:
        raise StaleEpoch(f"epoch {next_epoch.n} replaces epoch {epoch.n} for the cited channel state")


def readers_steady(epoch: EpochRecord, between: Iterable[ChannelState]) -> bool:
    """Whether every state `between` the epoch's and the one an author cites has the epoch's readers.

    Rule 10 asks it of the cited state alone. An author holds no later epoch when readers changed and
    changed back (a member given history, then removed, while the author was behind): the epoch it
    holds has the cited state's readers, and the removed member holds its key. An author posts under
    an epoch only if this holds too, else it takes the next one (found by a read-only review)."""
    return all(state.readers == epoch.readers for state in between)


def open_envelope_v2(env: EnvelopeV2, epoch_key: EpochKey) -> Bulletin:
    """Decrypt a v2 envelope with its epoch's key. Call only after verify_envelope_v2. One error for every failure."""
    h = env.header
    try:
        plaintext = bulletin_key(h, epoch_key).open(_b64(env.ciphertext))
    except (InvalidInput, ValidationError) as exc:
        raise DecryptionFailed() from exc
    return bulletin_from_payload(plaintext, h.handling.model_dump())


def _b64(text: str) -> bytes:
    try:
        return b64d(text)
    except InvalidInput as exc:
        raise InvalidEnvelope("malformed base64url field") from exc
