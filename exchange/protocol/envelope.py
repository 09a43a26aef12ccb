"""Build, verify and open bulletin envelopes: the rules every node applies to every bulletin.

Receivers verify the author's signature first, always: any reader could re-encrypt altered
content for the others, and only that signature stops it.
"""

from __future__ import annotations

import base64
import dataclasses
import hmac
import inspect
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from exchange.crypto import (
    DecryptionKey,
    EncryptionKey,
    NodeKeys,
    SealedContent,
    SigningKey,
    VerifyKey,
    b64d,
    b64e,
    open_content,
    sha256,
    strict_loads,
)
from exchange.crypto.content import Random, os_random
from exchange.errors import DecryptionFailed, InvalidEnvelope, InvalidInput
from exchange.model import (
    MAX_PAYLOAD_BYTES,
    Bulletin,
    BulletinId,
    Envelope,
    EnvelopeHeader,
    Handling,
    NodeId,
    Recipient,
    StateRef,
    first_error,
)
from exchange.protocol.channel import ChannelState
from exchange.protocol.roster import Federation
from exchange.protocol.signing import signing_input_prefix

DOMAIN = "envelope"
SUITE = "x25519-hkdfsha256-aes256gcm"
# The largest envelope the model's bounds allow (a ciphertext of MAX_CIPHERTEXT characters and
# MAX_RECIPIENTS recipients and wraps, about 160 KiB), rounded up.
MAX_ENVELOPE_BYTES = 8 * 1024 * 1024


M = TypeVar("M", bound=BaseModel)


def bulletin_id(header: EnvelopeHeader) -> BulletinId:
    """The content-hash id: hex SHA-256 of the canonical header (which commits to the ciphertext)."""
    return BulletinId(sha256(header.canonical).hex())


def wrap_info(bid: str, kid: str) -> bytes:
    """HPKE `info` that binds a wrapped key to one bulletin and one reader key."""
    return b"exchange-v1/wrap\x00" + bytes.fromhex(bid) + b"\x00" + kid.encode("ascii")


def _signed_input(header: EnvelopeHeader, wraps: Sequence[str]) -> bytes:
    """`signing_input(DOMAIN, {"header": header, "wraps": wraps})`, reusing the header's canonical bytes.

    JCS of an object is its members sorted by name with canonical values, and "header" sorts before
    "wraps"; wraps are base64url strings, which JSON never escapes.
    """
    quoted = b",".join(b'"' + w.encode("ascii") + b'"' for w in wraps)
    return signing_input_prefix(DOMAIN) + b'{"header":' + header.canonical + b',"wraps":[' + quoted + b"]}"


def sign_envelope(header: EnvelopeHeader, wraps: Sequence[str], ciphertext: bytes, key: SigningKey) -> Envelope:
    """Sign the header and the wrapped keys; the header already commits to the ciphertext."""
    signature = key.sign(_signed_input(header, wraps))
    return Envelope(header=header, wraps=list(wraps), ciphertext=b64e(ciphertext), signature=b64e(signature))


def build_envelope(
    bulletin: Bulletin,
    *,
    state: ChannelState,
    author: NodeId,
    key: SigningKey,
    seq: int,
    readers: Sequence[tuple[NodeId, EncryptionKey]],
    created: str,
    rng: Random | None = None,
) -> Envelope:
    """Encrypt `bulletin` for exactly `readers` and sign it as `author`.

    The caller passes the readers of `state`; the sender-side right checks live in the node.
    """
    header, wraps, sealed = _seal(
        bulletin.payload_bytes,
        bulletin.handling,
        state=state,
        author=author,
        key=key,
        seq=seq,
        readers=readers,
        created=created,
        rng=rng,
    )
    return sign_envelope(header, wraps, sealed.ciphertext, key)


@dataclass(frozen=True)
class BuiltEnvelope:
    """An envelope its author has just built: the signed header, the bulletin id, and the wire bytes.

    `wire` is `envelope_bytes` of the same envelope, built in place (see `build_envelope_bytes`);
    nothing may change it.
    """

    header: EnvelopeHeader
    id: BulletinId
    wire: bytearray


def build_envelope_bytes(
    payload: bytes,
    handling: Handling,
    *,
    state: ChannelState,
    author: NodeId,
    key: SigningKey,
    seq: int,
    readers: Sequence[tuple[NodeId, EncryptionKey]],
    created: str,
    rng: Random | None = None,
) -> BuiltEnvelope:
    """`build_envelope` straight to wire bytes, for an author who stores and sends them.

    `payload` is the bulletin's canonical payload (`Bulletin.payload_bytes`). The header, the
    ciphertext and what is signed are build_envelope's, and the bytes are those `envelope_bytes`
    writes (tests/protocol/test_envelope_wire.py); but a post of megabytes holds its ciphertext and
    the envelope's bytes, never also the ciphertext's base64url text, an Envelope model and a join
    of them: the text is written a chunk at a time into the final buffer.
    """
    # The check the Envelope model's bound on its ciphertext makes in build_envelope.
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InvalidInput(f"the bulletin's encrypted part takes {len(payload)} bytes, more than {MAX_PAYLOAD_BYTES}")
    header, wraps, sealed = _seal(
        payload, handling, state=state, author=author, key=key, seq=seq, readers=readers, created=created, rng=rng
    )
    head, tail = _around_ciphertext(header, b64e(key.sign(_signed_input(header, wraps))), wraps)
    ciphertext = memoryview(sealed.ciphertext)
    wire = bytearray(len(head) + _b64_size(len(ciphertext)) + len(tail))
    wire[: len(head)] = head
    end = len(head)
    for start in range(0, len(ciphertext), _B64_CHUNK):
        text = base64.urlsafe_b64encode(ciphertext[start : start + _B64_CHUNK]).rstrip(b"=")
        wire[end : end + len(text)] = text  # as long as the slice: the buffer is never resized
        end += len(text)
    wire[end:] = tail
    return BuiltEnvelope(header=header, id=bulletin_id(header), wire=wire)


# Bytes of ciphertext encoded at a time: a multiple of 3, so that only the last chunk is padded.
_B64_CHUNK = 3 * 16 * 1024


def _b64_size(n: int) -> int:
    """The length of the unpadded base64url text of `n` bytes (b64e's)."""
    return (4 * n + 2) // 3


def _seal(
    payload: bytes,
    handling: Handling,
    *,
    state: ChannelState,
    author: NodeId,
    key: SigningKey,
    seq: int,
    readers: Sequence[tuple[NodeId, EncryptionKey]],
    created: str,
    rng: Random | None,
) -> tuple[EnvelopeHeader, list[str], SealedContent]:
    """Encrypt `payload` and wrap its key for `readers`: the header and the wraps, to be signed."""
    ordered = sorted(readers, key=lambda r: r[0])
    sealed = SealedContent(payload, rng or os_random)
    header = EnvelopeHeader(
        v=1,
        suite=SUITE,
        channel=state.channel,
        author=author,
        signer=key.kid,
        seq=seq,
        state=StateRef(owner=state.owner, pos=state.pos, hash=state.hash),
        recipients=[Recipient(node=n, kid=k.kid) for n, k in ordered],
        handling=handling,
        created=created,
        nonce=b64e(sealed.nonce),
        key_commitment=b64e(sealed.key_commitment),
        ciphertext_sha256=b64e(sha256(sealed.ciphertext)),
    )
    bid = bulletin_id(header)
    wraps = [b64e(sealed.wrap(k, wrap_info(bid, k.kid))) for _, k in ordered]
    return header, wraps, sealed


def parse_wire(model: type[M], data: bytes | dict[str, Any]) -> M:
    """Parse wire bytes (or an already strictly-parsed object) into an envelope `model` (v1 or v2):
    at most MAX_ENVELOPE_BYTES, strict JSON, the exact schema; else InvalidEnvelope."""
    if isinstance(data, bytes | bytearray):
        if len(data) > MAX_ENVELOPE_BYTES:
            raise InvalidEnvelope("envelope too large")
        try:
            data = strict_loads(data)
        except InvalidInput as exc:
            raise InvalidEnvelope(exc.detail) from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidEnvelope(f"envelope does not match the schema: {first_error(exc)}") from exc


def parse_envelope(data: bytes | dict[str, Any]) -> Envelope:
    """Parse wire bytes (or an already strictly-parsed object) into an Envelope."""
    return parse_wire(Envelope, data)


def verify_envelope(env: Envelope, fed: Federation, state: ChannelState) -> BulletinId:
    """Check every rule a receiver can check without decrypting; return the bulletin id.

    `state` must be the channel state the header cites (the caller looks it up by position).
    """
    check_signature(env, fed)
    return check_rules(env, fed, state)


def check_signature(
    env: Envelope, fed: Federation, keys: dict[tuple[str, str], VerifyKey] | None = None, *, stored: bool = False
) -> None:
    """The author's roster key signed the header and the wrapped keys.

    `keys`: verify keys by (node, key id), kept between calls by a caller that checks many; a
    new roster version with a new key for the node has a new key id, so is never served stale.
    A former key of the author's (6a.13) is looked up each time: retiring, or with `stored` (a
    row this node took in earlier, checked again) verify-only.
    """
    h = env.header
    former = _former_signer(h.author, h.signer, fed, stored=stored)
    if former is not None:
        former.verify(_b64(env.signature), _signed_input(h, env.wraps))
        return
    key = None if keys is None else keys.get((h.author, h.signer))
    if key is None:
        key = fed.verify_key(h.author)
        if keys is not None:
            keys[h.author, h.signer] = key
    key.verify(_b64(env.signature), _signed_input(h, env.wraps))


def _former_signer(author: str, signer: str, fed: Federation, *, stored: bool) -> VerifyKey | None:
    """None if `signer` is the author's current key in `fed`; else the former key (6a.13) that
    checks its signature (retiring, or with `stored` verify-only), or the refusal.

    An author the held version no longer lists (revoked, suspended) has only former keys: what it
    signed verifies where it is stored, and anything else is refused as from an unknown node."""
    listed = fed.listed(author)
    if listed and signer == fed.node(author).signing_kid:
        return None
    former = fed.former_signing_key(author, signer, stored=stored)
    if former is None:
        if fed.former_key_state(author, signer) == "compromised":
            raise InvalidEnvelope(
                f"envelope is signed with key {signer} of {author}, which the roster marks compromised"
            )
        if not listed:
            fed.node(author)  # UnknownPeer, as before
        raise InvalidEnvelope("envelope is not signed with the author's roster key")
    return former


def check_signer(h: CitedHeader, fed: Federation) -> None:
    """The key rule of `check_signature` for a new item, without the signature: the key that
    signed `h` (checked when it came, under the roster held then) still signs new items under
    `fed`. A receiver applies it again when it stores what it checked earlier (docs/protocol.md
    9.8, rule 18): a version installed meanwhile that revokes or suspends the author, or marks
    the key compromised or verify-only, refuses the item as it would have had it come first."""
    _former_signer(h.author, h.signer, fed, stored=False)


def check_rules(env: Envelope, fed: Federation, state: ChannelState) -> BulletinId:
    """The channel rules, for an envelope whose signature has been checked."""
    h = env.header
    check_cited_state(h, fed, state)
    check_sealed_parts(env, fed)
    return bulletin_id(h)


def check_cited_state(h: EnvelopeHeader | CitedHeader, fed: Federation, state: ChannelState) -> None:
    """The rules `check_rules` checks first: those against the channel state the header cites.

    They are the only ones that need the channel's state; `check_sealed_parts` has the rest. A
    node that opens envelopes away from its channel states (in a worker process) applies this
    one to the `CitedHeader` of each, in this order, before the other's outcome.
    """
    author = fed.node(h.author)
    cited = (h.state.owner, h.state.pos, h.state.hash)
    if (h.channel, *cited) != (state.channel, state.owner, state.pos, state.hash):
        raise InvalidEnvelope("envelope cites a channel state other than the one checked")
    if state.closed:
        raise InvalidEnvelope("the cited channel state is closed")
    if author.agency not in state.policy.agencies:
        raise InvalidEnvelope(f"channel policy excludes the author's agency ({author.agency})")
    if "post" not in state.members.get(NodeId(h.author), frozenset()):
        raise InvalidEnvelope("the author lacks the post right in the cited channel state")
    if [r.node for r in h.recipients] != state.readers:
        raise InvalidEnvelope("the recipients differ from the readers of the cited channel state")


def check_sealed_parts(env: Envelope, fed: Federation) -> bytes:
    """The rules `check_rules` checks after the cited state's: the recipients' roster keys, the
    wrapped keys, nonce, key commitment and the ciphertext's hash. They need the roster only.

    Returns the ciphertext, decoded, so that `open_envelope` need not decode it again.
    """
    h = env.header
    for r in h.recipients:
        if not fed.accepts_wrap(r.node, r.kid):
            raise InvalidEnvelope(f"recipient key of {r.node} is not its roster key")
    if len(env.wraps) != len(h.recipients):
        raise InvalidEnvelope("one wrapped key per recipient is required")
    if any(len(_b64(w)) != 80 for w in env.wraps):
        raise InvalidEnvelope("malformed wrapped key")
    if len(_b64(h.nonce)) != 12 or len(_b64(h.key_commitment)) != 32:
        raise InvalidEnvelope("malformed nonce or key commitment")
    ciphertext = _b64(env.ciphertext)
    if not hmac.compare_digest(sha256(ciphertext), _b64(h.ciphertext_sha256)):
        raise InvalidEnvelope("ciphertext does not match its hash in the header")
    return ciphertext


D = TypeVar("D")


def pickled_by_fields(cls: type[D]) -> type[D]:
    """Pickle a frozen dataclass as its class and its fields' values, in order. The default of a
    dataclass with slots calls `dataclasses.fields` for every object, both ways: a few µs each for
    the thousands that go to and from the crypto workers every second (exchange.service.cryptopool)."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if any(not f.init or f.kw_only for f in fields):
        raise TypeError(f"{cls.__name__}: every field must be an __init__ argument by position")
    # Unpickled through __init__: an InitVar would shift the values after it, and a __post_init__
    # would run again on values it already changed (found by review).
    params = [n for n in inspect.signature(cls).parameters]
    if params != [f.name for f in fields] or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: __init__ must take exactly its fields, with no __post_init__")
    names = tuple(f.name for f in fields)
    values = operator.attrgetter(*names)

    def __reduce__(self: D) -> tuple[type[D], tuple[Any, ...]]:
        if type(self) is not cls:  # a subclass must be decorated itself, or it would come back as cls
            raise TypeError(f"{type(self).__name__} is not pickled by its own fields")
        got = values(self)
        return cls, got if len(names) > 1 else (got,)

    cls.__reduce__ = __reduce__  # type: ignore[assignment,method-assign]
    return cls


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class CitedRecipient:
    node: str


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class CitedState:
    owner: str
    pos: int
    hash: str


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class CitedHeader:
    """What the rules that need channel state read of a checked header, as plain values: small to
    send from a worker process to the event loop (an EnvelopeHeader model is not)."""

    channel: str
    author: str
    seq: int
    state: CitedState
    recipients: tuple[CitedRecipient, ...]
    signer: str  # the key id that signed the header (checked again at storing: `check_signer`)

    @classmethod
    def of(cls, h: EnvelopeHeader) -> CitedHeader:
        return cls(
            h.channel,
            h.author,
            h.seq,
            CitedState(h.state.owner, h.state.pos, h.state.hash),
            tuple(CitedRecipient(r.node) for r in h.recipients),
            h.signer,
        )


def open_envelope(
    env: Envelope, bid: str, me: NodeId, key: DecryptionKey | NodeKeys, *, ciphertext: bytes | None = None
) -> Bulletin:
    """Decrypt this node's copy. Call only after verify_envelope. One error for every failure.

    `key`: this node's decryption key, or its keys, of which the one the envelope wrapped for
    (current or former, 6a.13). `ciphertext`: the envelope's ciphertext as `check_sealed_parts`
    returned it, decoded already.
    """
    h = env.header
    index = next((i for i, r in enumerate(h.recipients) if r.node == me), None)
    if isinstance(key, NodeKeys):
        key = (key.decryption_for(h.recipients[index].kid) if index is not None else None) or key.decryption
    if index is None or h.recipients[index].kid != key.kid:
        raise DecryptionFailed()
    try:
        plaintext = open_content(
            wrapped_key=_b64(env.wraps[index]),
            info=wrap_info(bid, key.kid),
            reader=key,
            key_commitment_=_b64(h.key_commitment),
            nonce=_b64(h.nonce),
            ciphertext=_b64(env.ciphertext) if ciphertext is None else ciphertext,
        )
    except (InvalidInput, ValidationError) as exc:
        raise DecryptionFailed() from exc
    # The header's Handling as it is: a strict model takes an instance of its own class.
    return bulletin_from_payload(plaintext, h.handling)


def bulletin_from_payload(plaintext: bytes, handling: Any) -> Bulletin:
    """The bulletin a decrypted payload holds, with the header's `handling` (8.2, for envelopes v1
    and v2): a JSON object without handling that fits the bulletin's schema, else DecryptionFailed
    (one error for every failure), and in canonical form, else InvalidEnvelope."""
    try:
        payload = strict_loads(plaintext)
        if not isinstance(payload, dict) or "handling" in payload:
            raise DecryptionFailed()
        bulletin = Bulletin.model_validate({**payload, "handling": handling})
    except (InvalidInput, ValidationError) as exc:
        raise DecryptionFailed() from exc
    # What is stored and shown must be exactly what the author encrypted: no defaults, no trimming.
    try:
        canonical = bulletin.payload_bytes
    except InvalidInput as exc:
        raise InvalidEnvelope("the bulletin payload cannot be canonicalised") from exc
    if canonical != plaintext:
        raise InvalidEnvelope("the bulletin payload is not in canonical form")
    return bulletin


def _b64(text: str) -> bytes:
    try:
        return b64d(text)
    except InvalidInput as exc:
        raise InvalidEnvelope("malformed base64url field") from exc


def envelope_bytes(env: Envelope) -> bytes:
    """The canonical wire form of an envelope: JCS, composed from the header's canonical bytes."""
    head, tail = _around_ciphertext(env.header, env.signature, env.wraps)
    # One join, not a chain of +, which would copy a ciphertext of megabytes once per operand.
    return b"".join((head, env.ciphertext.encode("ascii"), tail))


def _around_ciphertext(header: EnvelopeHeader, signature: str, wraps: Sequence[str]) -> tuple[bytes, bytes]:
    """The envelope's wire bytes before and after the base64url text of its ciphertext.

    Members in JCS order (ciphertext, header, signature, wraps); every value but the header is a
    base64url string, which JSON never escapes.
    """
    quoted = b",".join(b'"' + w.encode("ascii") + b'"' for w in wraps)
    tail = b"".join(
        (b'","header":', header.canonical, b',"signature":"', signature.encode("ascii"), b'","wraps":[', quoted, b"]}")
    )
    return b'{"ciphertext":"', tail
