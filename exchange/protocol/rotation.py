"""Rotation of a node's keys (docs/protocol.md, 6a.13): the request a node makes on its own host,
and how the authority's proposer lists what it asks for.

A **rotation request** names the node, the use (`signing`, `encryption` or `tls`), the key it
replaces (`old`, the node's active key of that use) and the new public key (for `tls`, the new
certificate). It is signed by the node's active signing key (continuity: the holder of the listed
key asks), and, for a signing key, by the new key as well (proof of possession; an X25519 key cannot
sign, as for a join request, 6a.10; a TLS key proves itself in each handshake).
The proposer lists the new key `active` from the next version and the old one `retiring`: the
overlap, in which what the node signed or was sent before is still accepted. A later version ends
it (`finish`): the retiring keys become `verify-only`, valid until the version before.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exchange.crypto import EncryptionKey, SigningKey, VerifyKey, b64d, b64e, cert_subject, sha256, strict_loads
from exchange.crypto.encoding import canonical_json
from exchange.errors import ConfigError, InvalidEnvelope, InvalidInput
from exchange.model import Kid, NodeIdStr, Short, Timestamp, Version2, first_error
from exchange.protocol.roster2_model import JoinKey, NodeKey, RosterNodeV2, RosterSignature, RosterV2
from exchange.protocol.rosterchain import key_entry, key_kid
from exchange.protocol.rostermigration import tls_names
from exchange.protocol.signing import signing_input_prefix

ROTATE_DOMAIN = "roster-rotate"
RotationUse = Literal["signing", "encryption", "tls"]
ROTATION_USES: tuple[RotationUse, ...] = ("signing", "encryption", "tls")

_WIRE = ConfigDict(extra="forbid", frozen=True, strict=True)


class RotationRequestBody(BaseModel):
    """What a node asks the authority: list `key` for `use` in place of its key `old`."""

    model_config = _WIRE
    v: Version2
    federation: Short
    id: NodeIdStr
    use: RotationUse
    made: Timestamp
    old: Kid
    key: JoinKey

    @cached_property
    def canonical(self) -> bytes:
        """JCS of the request: what its signatures cover (after the domain prefix) and its hash."""
        return canonical_json(self.model_dump(mode="json"))


class RotationRequest(BaseModel):
    """A rotation request with its signatures: the node's active signing key's, and for a new
    signing key the new key's, each under its kid."""

    model_config = _WIRE
    request: RotationRequestBody
    signatures: Annotated[list[RosterSignature], Field(min_length=1, max_length=2)]


def _signing_input(body: RotationRequestBody) -> bytes:
    return signing_input_prefix(ROTATE_DOMAIN) + body.canonical


def sign_rotation_request(
    federation: str,
    node_id: str,
    made: str,
    current: SigningKey,
    new: SigningKey | EncryptionKey | bytes,
    old: str | None = None,
) -> RotationRequest:
    """A request to list `new` (a signing key, an encryption key, or a TLS certificate as PEM or
    DER) in place of the node's key of the same use: `old` (by default, for a signing key,
    `current`'s kid), signed by `current` and, for a signing key, by `new` too."""
    use: RotationUse = "signing" if isinstance(new, SigningKey) else "tls" if isinstance(new, bytes) else "encryption"
    raw = new.verify_key.raw if isinstance(new, SigningKey) else new if isinstance(new, bytes) else new.raw
    if old is None:
        if use != "signing":
            raise InvalidInput(f"name the {use} key this one replaces")
        old = current.kid
    entry = key_entry(use, raw, 1)
    try:
        body = RotationRequestBody.model_validate(
            {
                "v": 2,
                "federation": federation,
                "id": node_id,
                "use": use,
                "made": made,
                "old": old,
                "key": entry.model_dump(include={"use", "kid", "key"}),
            }
        )
    except ValidationError as exc:
        raise InvalidInput(f"rotation request does not match the schema: {first_error(exc)}") from exc
    signers = [current, *([new] if isinstance(new, SigningKey) else [])]
    sigs = [RosterSignature(kid=k.kid, signature=b64e(k.sign(_signing_input(body)))) for k in signers]
    return RotationRequest(request=body, signatures=sigs)


def parse_rotation_request(raw: bytes | object) -> RotationRequest:
    """A rotation request from bytes or a parsed JSON value; a schema violation is InvalidInput."""
    if isinstance(raw, bytes | bytearray | str):
        raw = strict_loads(raw)
    try:
        return raw if isinstance(raw, RotationRequest) else RotationRequest.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"rotation request does not match the schema: {first_error(exc)}") from exc


def rotation_hash(request: RotationRequest) -> str:
    """SHA-256 of JCS(request) in hex: the fingerprint both sides compare out of band."""
    return sha256(request.request.canonical).hex()


def verify_rotation_request(request: RotationRequest, held: RosterV2) -> None:
    """None if `held` lets `request` through, else InvalidInput naming the first rule broken: the
    federation is held's; the node is listed and active; `old` is its active key of that use; the
    new key parses, carries its kid, and no node lists it; the node's active signing key signed the
    request; and for a new signing key, that key signed it too."""
    body = request.request
    who = f"rotation request of {body.id}"
    if body.federation != held.federation:
        raise InvalidInput(f"{who}: it is for federation {body.federation!r}")
    node = next((n for n in held.nodes if n.id == body.id), None)
    if node is None or node.status != "active":
        raise InvalidInput(f"{who}: no active node {body.id} in roster version {held.version}")
    current = {k.use: k for k in node.keys if k.state == "active"}
    if body.key.use != body.use or current[body.use].kid != body.old:
        raise InvalidInput(f"{who}: {body.old} is not its active {body.use} key in roster version {held.version}")
    try:
        kid = key_kid(body.use, b64d(body.key.key))
    except (InvalidInput, ConfigError) as exc:
        raise InvalidInput(f"{who}: the new {body.use} key does not parse") from exc
    if kid != body.key.kid:
        raise InvalidInput(f"{who}: the new {body.use} key {body.key.kid} has kid {kid}")
    if any(k.kid == kid for n in held.nodes for k in n.keys):
        raise InvalidInput(f"{who}: key {kid} is listed already")
    if body.use == "tls" and cert_subject(b64d(body.key.key)) in tls_names(held.nodes):
        raise InvalidInput(f"{who}: the new certificate has the subject name of a certificate some node has")
    signers = [(current["signing"].kid, current["signing"].key, "its active signing key")]
    if body.use == "signing":
        signers.append((body.key.kid, body.key.key, "the new signing key"))
    by_kid = {s.kid: s.signature for s in request.signatures}
    for kid_, key, role in signers:
        try:
            VerifyKey(b64d(key)).verify(b64d(by_kid.get(kid_, "")), _signing_input(body))
        except (InvalidInput, InvalidEnvelope) as exc:  # BadSignature is an InvalidEnvelope
            raise InvalidInput(f"{who}: not signed by {role} ({kid_})") from exc


def rotate(
    held: RosterV2, proposed: RosterV2, requests: Sequence[RotationRequest], finish: Iterable[str] = ()
) -> RosterV2:
    """`proposed` (the next version after `held`) with the rotations of `requests` (each verified
    against `held`) and the overlaps of the nodes in `finish` ended.

    A rotation lists the new key `active` from `proposed`'s version and the old one `retiring`;
    a key still retiring from an earlier rotation of the same use becomes `verify-only`. Ending an
    overlap makes a node's retiring keys `verify-only`, valid until `held`'s version."""
    version = proposed.version
    nodes = {n.id: n for n in proposed.nodes}
    ending = set(finish)
    for node_id in ending:
        if node_id not in {n.id for n in held.nodes}:
            raise InvalidInput(f"node {node_id} is not in roster version {held.version}")
    uses: set[tuple[str, str]] = set()
    for request in requests:
        verify_rotation_request(request, held)
        body = request.request
        if (body.id, body.use) in uses:
            raise InvalidInput(f"two rotations of the {body.use} key of {body.id} in one version")
        uses.add((body.id, body.use))
    for node_id, node in nodes.items():
        mine = [r.request for r in requests if r.request.id == node_id]
        if not mine and node_id not in ending:
            continue
        keys = []
        for key in node.keys:
            rotated = any(b.use == key.use for b in mine)
            if key.state == "active" and rotated:
                key = key.model_copy(update={"state": "retiring"})
            elif key.state == "retiring" and (rotated or node_id in ending):
                key = key.model_copy(update={"state": "verify-only", "valid_until": held.version})
            keys.append(key)
        keys += [key_entry(b.use, b64d(b.key.key), version) for b in mine]
        nodes[node_id] = _node(node, keys)
    try:
        return RosterV2.model_validate({**proposed.model_dump(), "nodes": [n.model_dump() for n in nodes.values()]})
    except ValidationError as exc:
        raise InvalidInput(f"roster does not match the schema: {first_error(exc)}") from exc


def _node(node: RosterNodeV2, keys: list[NodeKey]) -> RosterNodeV2:
    try:
        return RosterNodeV2.model_validate({**node.model_dump(), "keys": [k.model_dump() for k in keys]})
    except ValidationError as exc:
        raise InvalidInput(f"{node.id}: {first_error(exc)}") from exc
