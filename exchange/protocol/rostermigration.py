"""Building roster v2 versions: from a v1 roster (how a 0.1.0 federation moves to v2), the first
version of a new federation, the next version of a held one, and the join requests that new nodes
send the authority (docs/protocol.md, 6a)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence

from pydantic import ValidationError

from exchange.crypto import EncryptionKey, SigningKey, VerifyKey, b64d, b64e, cert_subject, sha256, strict_loads
from exchange.errors import ConfigError, InvalidEnvelope, InvalidInput, RosterExpired, RosterInvalid
from exchange.model import RosterNode, SignedRoster, first_error
from exchange.protocol.roster import Federation
from exchange.protocol.roster2_model import (
    KEY_USES,
    Authority,
    JoinDetails,
    JoinRequest,
    JoinRequestBody,
    NodeStatus,
    RosterNodeV2,
    RosterV2,
    SignedRosterV2,
)
from exchange.protocol.rosterchain import TrustedRoster, check_threshold, key_entry, key_kid, roster_hash
from exchange.protocol.signing import signing_input_prefix

V1_HOLDER = "v1 authority"  # the holder name of the v1 key when it countersigns a migration


def authority(holders: Sequence[tuple[str, VerifyKey]], threshold: int) -> Authority:
    """k of n authority keys, each named by its holder (for example "WCO Secretariat")."""
    try:
        return Authority.model_validate(
            {
                "threshold": threshold,
                "keys": [{"kid": key.kid, "key": b64e(key.raw), "holder": holder} for holder, key in holders],
            }
        )
    except ValidationError as exc:
        raise InvalidInput(f"authority does not match the schema: {first_error(exc)}") from exc


def node_from_v1(node: RosterNode, version: int = 1) -> RosterNodeV2:
    """A v1 node entry as a v2 one: active since `version`, its three keys active from it."""
    keys = [
        key_entry("signing", b64d(node.signing_key), version),
        key_entry("encryption", b64d(node.encryption_key), version),
        key_entry("tls", node.tls_cert.encode("ascii"), version),
    ]
    return RosterNodeV2.model_validate(
        {
            **node.model_dump(include={"id", "name", "country", "agency", "endpoint"}),
            "status": "active",
            "since": version,
            "keys": [k.model_dump() for k in keys],
        }
    )


def first_version(
    federation: str, nodes: Sequence[RosterNodeV2], authority_: Authority, issued: str, expires: str
) -> RosterV2:
    """Version 1 of a roster v2: no previous version."""
    return _roster(federation, 1, None, nodes, authority_, issued, expires)


def from_v1(
    signed: SignedRoster, v1_authority: VerifyKey, authority_: Authority, issued: str, expires: str
) -> RosterV2:
    """Version 1 of roster v2 with the nodes and keys of a verified v1 roster (ConfigError if it
    does not verify). Its holders sign it, and so does the v1 authority key (`accept_migration`)."""
    fed = Federation.verify(signed, v1_authority)
    nodes = [node_from_v1(n) for n in fed.roster.nodes]
    return first_version(fed.roster.federation, nodes, authority_, issued, expires)


def accept_migration(
    fed: Federation, v1_authority: VerifyKey, signed: SignedRosterV2, now: dt.datetime
) -> TrustedRoster:
    """The first v2 version that a node holding the v1 roster `fed` installs: exactly `fed`'s
    nodes and keys as version 1, signed by the v1 authority key and by k of its own authority."""
    trusted = check_migration(fed, v1_authority, signed)
    if trusted.expired(now):
        raise RosterExpired(f"roster version {trusted.version} expired at {signed.roster.expires}")
    return trusted


def check_migration(fed: Federation, v1_authority: VerifyKey, signed: SignedRosterV2) -> TrustedRoster:
    """`accept_migration` but for the expiry: the first step of a chain that a node holding the v1
    roster takes, whose final version is then checked for expiry (6a.4)."""
    doc = signed.roster
    expected = [node_from_v1(n) for n in fed.roster.nodes]
    if doc.version != 1 or doc.federation != fed.roster.federation or doc.nodes != expected:
        raise RosterInvalid("a migration is version 1 with the nodes and keys of the held v1 roster, unchanged")
    check_threshold(signed, authority([(V1_HOLDER, v1_authority)], 1), "the v1 authority key")
    return TrustedRoster.restore(signed)


def propose(
    held: RosterV2,
    issued: str,
    expires: str,
    nodes: Sequence[RosterNodeV2] | None = None,
    authority_: Authority | None = None,
) -> RosterV2:
    """The next version after `held`: its number and `previous` filled in, the rest as given."""
    return _roster(
        held.federation,
        held.version + 1,
        roster_hash(held),
        held.nodes if nodes is None else nodes,
        held.authority if authority_ is None else authority_,
        issued,
        expires,
    )


def _roster(
    federation: str,
    version: int,
    previous: str | None,
    nodes: Sequence[RosterNodeV2],
    authority_: Authority,
    issued: str,
    expires: str,
) -> RosterV2:
    try:
        return RosterV2.model_validate(
            {
                "v": 2,
                "federation": federation,
                "version": version,
                "issued": issued,
                "expires": expires,
                "previous": previous,
                "authority": authority_.model_dump(),
                "nodes": [n.model_dump() for n in nodes],
            }
        )
    except ValidationError as exc:
        raise InvalidInput(f"roster does not match the schema: {first_error(exc)}") from exc


# -- join requests (docs/protocol.md, 6a.10) ------------------------------------------------------

JOIN_DOMAIN = "roster-join"


def sign_join_request(
    details: Mapping[str, str], made: str, signing: SigningKey, encryption: EncryptionKey, tls_cert: bytes
) -> JoinRequest:
    """A join request for the node `details` describes (federation, id, name, country, agency,
    endpoint), listing its three public keys, signed by its signing key: the proof that the
    administration holds it. `tls_cert` is PEM or DER."""
    keys = [
        key_entry("signing", signing.verify_key.raw, 1),
        key_entry("encryption", encryption.raw, 1),
        key_entry("tls", tls_cert, 1),
    ]
    try:
        body = JoinRequestBody.model_validate(
            {**details, "v": 2, "made": made, "keys": [k.model_dump(include={"use", "kid", "key"}) for k in keys]}
        )
    except ValidationError as exc:
        raise InvalidInput(f"join request does not match the schema: {first_error(exc)}") from exc
    return JoinRequest(request=body, signature=b64e(signing.sign(signing_input_prefix(JOIN_DOMAIN) + body.canonical)))


def check_join_details(details: Mapping[str, str]) -> None:
    """The details of a join request alone, as `sign_join_request` checks them (InvalidInput)."""
    try:
        JoinDetails.model_validate(details)
    except ValidationError as exc:
        raise InvalidInput(f"join request does not match the schema: {first_error(exc)}") from exc


def parse_join_request(raw: bytes | object) -> JoinRequest:
    """A join request from bytes or a parsed JSON value; a schema violation is InvalidInput."""
    if isinstance(raw, bytes | bytearray | str):
        raw = strict_loads(raw)
    try:
        return raw if isinstance(raw, JoinRequest) else JoinRequest.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"join request does not match the schema: {first_error(exc)}") from exc


def join_hash(request: JoinRequest) -> str:
    """SHA-256 of JCS(request) in hex: the fingerprint both sides compare out of band."""
    return sha256(request.request.canonical).hex()


def tls_names(nodes: Iterable[RosterNodeV2]) -> set[str]:
    """The subject names of the TLS certificates of `nodes` that handshakes accept (active and
    retiring): a new certificate must take none of them, since OpenSSL finds a trust anchor by its
    subject name and of two anchors with one name only one works (4, 6a.10, 6a.13)."""
    return {
        cert_subject(b64d(k.key)) for n in nodes for k in n.keys if k.use == "tls" and k.state in ("active", "retiring")
    }


def verify_join_request(request: JoinRequest) -> None:
    """None if every key parses and carries its own kid, and the listed signing key signed the
    request; else InvalidInput (also when one key is shared by two uses)."""
    body = request.request
    for key in body.keys:
        try:
            kid = key_kid(key.use, b64d(key.key))
        except (InvalidInput, ConfigError) as exc:
            raise InvalidInput(f"join request of {body.id}: its {key.use} key does not parse") from exc
        if kid != key.kid:
            raise InvalidInput(f"join request of {body.id}: {key.use} key {key.kid} has kid {kid}")
        if key.use == "encryption":  # SmallOrderKey: an authority must not list it (6, step 3)
            EncryptionKey(b64d(key.key)).check_order(f"join request of {body.id}: its encryption key")
    signing = next(k for k in body.keys if k.use == "signing")
    try:
        VerifyKey(b64d(signing.key)).verify(b64d(request.signature), signing_input_prefix(JOIN_DOMAIN) + body.canonical)
    except (InvalidInput, InvalidEnvelope) as exc:
        raise InvalidInput(f"join request of {body.id}: not signed by the signing key it lists") from exc


def node_from_join(request: JoinRequest, version: int) -> RosterNodeV2:
    """The roster entry of a verified join request: active since `version`, its keys active from it."""
    body = request.request
    keys = [{**k.model_dump(), "state": "active", "valid_from": version, "valid_until": None} for k in body.keys]
    return RosterNodeV2.model_validate(
        {
            **body.model_dump(include={"id", "name", "country", "agency", "endpoint"}),
            "status": "active",
            "since": version,
            "keys": sorted(keys, key=lambda k: KEY_USES.index(k["use"])),
        }
    )


def admit(
    held: RosterV2,
    issued: str,
    expires: str,
    joins: Sequence[JoinRequest] = (),
    statuses: Mapping[str, NodeStatus] | None = None,
    authority_: Authority | None = None,
) -> RosterV2:
    """The next version after `held`: the nodes of verified join requests added, the status of
    the nodes in `statuses` changed (since the new version), and optionally a new authority.

    Refuses (InvalidInput) a request for another federation, an id already listed, a certificate
    with the subject name of one a node has (`tls_names`), and a status
    change of a node that is not listed or is revoked; the history rules (6a.5) are then the
    receivers' to check again."""
    version = held.version + 1
    nodes = {n.id: n for n in held.nodes}
    for request in joins:
        verify_join_request(request)
        body = request.request
        if body.federation != held.federation:
            raise InvalidInput(f"the join request of {body.id} is for federation {body.federation!r}")
        if body.id in nodes:
            raise InvalidInput(f"node {body.id} is already in roster version {held.version}")
        tls = next(k for k in body.keys if k.use == "tls")
        if cert_subject(b64d(tls.key)) in tls_names(nodes.values()):
            raise InvalidInput(f"the join request of {body.id}: its certificate has the subject name of a node's")
        nodes[body.id] = node_from_join(request, version)
    for node_id, status in (statuses or {}).items():
        node = nodes.get(node_id)
        if node is None or node.since == version:
            raise InvalidInput(f"node {node_id} is not in roster version {held.version}")
        if node.status == "revoked":
            raise InvalidInput(f"node {node_id} is revoked and stays revoked")
        if node.status != status:
            nodes[node_id] = node.model_copy(update={"status": status, "since": version})
    return propose(held, issued, expires, [nodes[k] for k in sorted(nodes)], authority_)
