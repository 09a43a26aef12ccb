"""The held roster v2 version as the v1 roster a node's wiring runs on (docs/protocol.md, 6a.7 and
6a.13): its active nodes with their current keys, and the former keys it still accepts.

Pure, as rosterchain is: it reads a version and builds a Federation.
"""

from __future__ import annotations

from pydantic import ValidationError

from exchange.crypto import b64d, cert_pem, spki_pin
from exchange.errors import ConfigError, RosterInvalid
from exchange.model import Roster, first_error
from exchange.protocol.roster import Federation, FormerKeys
from exchange.protocol.roster2_model import RosterV2
from exchange.protocol.rosterchain import TrustedRoster


def federation_view(trusted: TrustedRoster) -> Federation:
    """The held version as the v1 roster the node's wiring runs on (section 6): its active nodes,
    each with its active signing, encryption and TLS key, under the version's number. Suspended and
    revoked nodes are left out, as a v1 roster without them would leave them out; `authority_kid`
    names the first authority key (a v1 roster has one; trust came from the chain, not from it)."""
    return roster_view(trusted.roster)


def roster_view(doc: RosterV2) -> Federation:
    """The v1 view of any version, trusted or not: RosterInvalid if it has none (no active node, a
    field a v1 roster does not allow). A node runs on the view of the version it holds, so it takes
    no version without one (exchange.service.federation), and a proposer proposes none."""
    nodes = []
    for node in doc.nodes:
        if node.status != "active":
            continue
        current = {k.use: k for k in node.keys if k.state == "active"}
        cert = b64d(current["tls"].key)
        nodes.append(
            {
                **node.model_dump(include={"id", "name", "country", "agency", "endpoint"}),
                "signing_key": current["signing"].key,
                "signing_kid": current["signing"].kid,
                "encryption_key": current["encryption"].key,
                "encryption_kid": current["encryption"].kid,
                "tls_cert": cert_pem(cert),
                "tls_pin": spki_pin(cert),
            }
        )
    try:
        roster = Roster.model_validate(
            {
                "v": 1,
                "federation": doc.federation,
                "version": doc.version,
                "issued": doc.issued,
                "authority_kid": doc.authority.keys[0].kid,
                "nodes": nodes,
            }
        )
        return Federation.index(roster, former_keys(doc))
    except (ValidationError, ConfigError) as exc:
        detail = first_error(exc) if isinstance(exc, ValidationError) else exc.detail
        raise RosterInvalid(f"roster version {doc.version} has no v1 form: {detail}") from exc


def former_keys(doc: RosterV2) -> FormerKeys:
    """The keys of the held version's active nodes besides their active ones (6a.13): every
    signing key with its state, the retiring encryption keys that envelopes may still wrap for, and
    the retiring TLS keys that handshakes still accept.
    A suspended or revoked node's signing keys, but compromised ones, are listed as verify-only:
    what it signed before still verifies where it is stored (6a.7), and nothing new is taken."""
    signing: dict[tuple[str, str], tuple[str, bytes]] = {}
    wrap: set[tuple[str, str]] = set()
    departed: dict[str, str] = {}
    tls: dict[str, tuple[str, str]] = {}
    for node in doc.nodes:
        if node.status != "active":
            departed[node.id] = node.name
            for key in node.keys:
                if key.use == "signing" and key.state != "compromised":
                    signing[node.id, key.kid] = ("verify-only", b64d(key.key))
            continue
        for key in node.keys:
            if key.state == "active":
                continue
            if key.use == "signing":
                signing[node.id, key.kid] = (key.state, b64d(key.key))
            elif key.use == "encryption" and key.state == "retiring":
                wrap.add((node.id, key.kid))
            elif key.use == "tls" and key.state == "retiring":
                cert = b64d(key.key)
                tls[spki_pin(cert)] = (node.id, cert_pem(cert))
    return FormerKeys(signing, frozenset(wrap), departed, tls)
