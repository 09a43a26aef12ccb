"""Envelope v2 support (docs/protocol.md, 15.12): a node's signed word that it takes v2 envelopes,
and the wrap key it wants epoch keys wrapped for.

The v1 roster cannot list a hybrid key, nor say which nodes run a release that reads v2. So each
node announces both, signed with its roster signing key: a partner that trusts the roster trusts
the announcement, and a node that predates v2 has none (its `GET` answers 404), so authors keep
sending it v1.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from exchange.crypto import SigningKey, b64d, b64e, epoch as suites, strict_loads
from exchange.crypto.epoch import (
    SUITE_X25519,
    SUITE_XWING,
    XWING_PUBLIC_SIZE,
    HybridDecryptionKey,
    HybridEncryptionKey,
    check_hybrid_order,
)
from exchange.crypto.keys import key_id
from exchange.errors import ConfigError, EpochInvalid, InvalidInput, SuiteUnsupported
from exchange.model import B64Signature, Kid, NodeIdStr, Version2, first_error
from exchange.protocol.epoch import WrapKeyId
from exchange.protocol.roster import Federation
from exchange.protocol.signing import sign, verify

SUPPORT_DOMAIN = "epoch-support"
MAX_SUPPORT_BYTES = 8 * 1024
# base64url of a 1216-byte hybrid public key: 1622 characters.
B64HybridKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]*$", max_length=1700)]


class EpochSupport(BaseModel):
    """`{"v": 2, "node", "hybrid_key", "hybrid_kid", "signer", "signature"}`; both hybrid members null
    for a node that takes only X25519 wraps."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    v: Version2
    node: NodeIdStr
    hybrid_key: B64HybridKey | None
    hybrid_kid: Kid | None
    signer: Kid
    signature: B64Signature


def make_support(node: str, key: SigningKey, hybrid: HybridDecryptionKey | None) -> EpochSupport:
    """This node's announcement: it takes v2, and wants wraps for `hybrid` if it has one."""
    body: dict[str, Any] = {
        "v": 2,
        "node": node,
        "hybrid_key": b64e(hybrid.public.raw) if hybrid is not None else None,
        "hybrid_kid": hybrid.kid if hybrid is not None else None,
        "signer": key.kid,
    }
    return EpochSupport.model_validate({**body, "signature": sign(SUPPORT_DOMAIN, body, key)})


def parse_support(data: bytes | dict[str, Any]) -> EpochSupport:
    try:
        if isinstance(data, bytes | bytearray):
            if len(data) > MAX_SUPPORT_BYTES:
                raise EpochInvalid("v2 support announcement too large")
            data = strict_loads(bytes(data))
        return EpochSupport.model_validate(data)
    except InvalidInput as exc:
        raise EpochInvalid(exc.detail) from exc
    except ValidationError as exc:
        raise EpochInvalid(f"v2 support announcement does not match the schema: {first_error(exc)}") from exc


def verify_support(support: EpochSupport, fed: Federation, node: str) -> HybridEncryptionKey | None:
    """Check `node`'s announcement against the roster; return its hybrid key (None: X25519 only,
    or a hybrid key this node cannot use).

    Checking an announced hybrid key needs no hybrid suite here: on a `cryptography` or backend
    without ML-KEM its size and kid are checked, and None returned. Only wrapping for it needs the
    suite (`HybridEncryptionKey`, SuiteUnsupported). Before, the check itself raised
    SuiteUnsupported, and such a node, announcing X25519 alone, took no v2 bulletin of a channel
    that had a hybrid reader (found by a read-only review; docs/protocol.md 15.4).
    """
    if support.node != node:
        raise EpochInvalid(f"the v2 support announcement is {support.node}'s, not {node}'s")
    if support.signer != fed.node(node).signing_kid:
        raise EpochInvalid("the v2 support announcement is not signed with the node's roster key")
    body = support.model_dump(mode="json", exclude={"signature"})
    verify(SUPPORT_DOMAIN, body, support.signature, fed.verify_key(node))
    if (support.hybrid_key is None) != (support.hybrid_kid is None):
        raise EpochInvalid("a hybrid key comes with its kid")
    if support.hybrid_key is None:
        return None
    if not suites.hybrid_supported():
        raw = b64d(support.hybrid_key)
        if len(raw) != XWING_PUBLIC_SIZE:
            raise EpochInvalid(f"malformed hybrid key: an ML-KEM-768 + X25519 public key has {XWING_PUBLIC_SIZE} bytes")
        if key_id(HybridEncryptionKey.alg, raw) != support.hybrid_kid:
            raise EpochInvalid("the hybrid key's kid is not the one announced")
        try:
            check_hybrid_order(raw)
        except InvalidInput as exc:
            raise EpochInvalid(f"malformed hybrid key: {exc.detail}") from exc
        return None
    try:
        key = HybridEncryptionKey(b64d(support.hybrid_key))
    except SuiteUnsupported:
        raise
    except (InvalidInput, ConfigError) as exc:  # ConfigError: the key class's word for a bad key of our own
        raise EpochInvalid(f"malformed hybrid key: {exc.detail}") from exc
    if key.kid != support.hybrid_kid:
        raise EpochInvalid("the hybrid key's kid is not the one announced")
    return key


def wrap_key_id(fed: Federation, node: str, support: EpochSupport | None) -> WrapKeyId:
    """The key `node`'s epoch wraps must be for (15.4, 15.12): its announced hybrid key, else its
    roster X25519 key. Every look-up of "which key for this reader" goes through here."""
    if support is not None and support.hybrid_kid is not None:
        return WrapKeyId(SUITE_XWING, support.hybrid_kid)
    return WrapKeyId(SUITE_X25519, fed.node(node).encryption_kid)
