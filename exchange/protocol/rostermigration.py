"""Building roster v2 versions: from a v1 roster (how a 0.1.0 federation moves to v2), the first
version of a new federation, and the next version of a held one (docs/protocol.md, 6a)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pydantic import ValidationError

from exchange.crypto import VerifyKey, b64d, b64e
from exchange.errors import InvalidInput, RosterInvalid
from exchange.model import RosterNode, SignedRoster, first_error
from exchange.protocol.roster import Federation
from exchange.protocol.roster2_model import Authority, RosterNodeV2, RosterV2, SignedRosterV2
from exchange.protocol.rosterchain import TrustedRoster, check_threshold, key_entry, roster_hash

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
    doc = signed.roster
    expected = [node_from_v1(n) for n in fed.roster.nodes]
    if doc.version != 1 or doc.federation != fed.roster.federation or doc.nodes != expected:
        raise RosterInvalid("a migration is version 1 with the nodes and keys of the held v1 roster, unchanged")
    check_threshold(signed, authority([(V1_HOLDER, v1_authority)], 1), "the v1 authority key")
    return TrustedRoster.bootstrap(signed, now)


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
