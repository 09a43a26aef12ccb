"""Join requests and the next version built from them (docs/protocol.md, 6a.10), and the v1 view of
a held version that the node's wiring runs on: good cases accepted, each bad one refused."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from exchange import errors
from exchange.crypto import b64d, b64e, canonical_json, cert_subject, generate_tls_identity, sha256, spki_pin
from exchange.protocol.roster2_model import JoinRequest
from exchange.protocol.rosterchain import accept_chain
from exchange.protocol.rostermigration import (
    admit,
    join_hash,
    node_from_join,
    parse_join_request,
    sign_join_request,
    verify_join_request,
)
from exchange.protocol.rosterview import federation_view
from tests.protocol.test_roster_chain import BOTH, CHAIN, NOW, trusted
from tests.vectors.make_roster_vectors import signed
from tests.vectors.make_vectors import decryption_key, signing_key, tls_cert

FEDERATION = CHAIN[3].roster.federation
ISSUED, EXPIRES = "2025-05-20T00:00:00.000Z", "2025-12-01T00:00:00.000Z"


def request(node_id: str = "fr-customs", **details: str) -> JoinRequest:
    values = {"federation": FEDERATION, "id": node_id, "name": "FR customs (test)", "country": "FR"}
    values |= {"agency": "customs", "endpoint": "https://fr.example.test:8443", **details}
    return sign_join_request(
        values,
        "2025-05-19T10:00:00.000Z",
        signing_key(f"{node_id}/join"),
        decryption_key(f"{node_id}/join").public,
        tls_cert(f"{node_id}-join").encode(),
    )


def test_a_join_request_verifies_and_its_hash_is_of_its_request() -> None:
    req = request()
    verify_join_request(req)
    raw = req.model_dump(mode="json")
    assert join_hash(req) == sha256(canonical_json(raw["request"])).hex()
    assert parse_join_request(json.dumps(raw, indent=1).encode()) == req
    assert {k.use for k in req.request.keys} == {"signing", "encryption", "tls"}
    node = node_from_join(req, 4)
    assert (node.status, node.since) == ("active", 4) and all(k.valid_from == 4 for k in node.keys)


def _flip(text: str) -> str:
    raw = bytearray(b64d(text))
    raw[0] ^= 1
    return b64e(bytes(raw))


BREAKS: dict[str, Any] = {
    "signature-flipped": lambda r: r.update(signature=_flip(r["signature"])),
    "endpoint-changed": lambda r: r["request"].update(endpoint="https://elsewhere.example.test"),
    "signing-kid-not-its-key": lambda r: r["request"]["keys"][0].update(kid="0" * 16),
    "tls-not-a-certificate": lambda r: r["request"]["keys"][2].update(key=b64e(b"junk")),
    "signed-by-another-key": lambda r: r.update(signature=request("de-customs").signature),
}


@pytest.mark.parametrize("name", BREAKS)
def test_a_changed_join_request_is_refused(name: str) -> None:
    raw = request().model_dump(mode="json")
    BREAKS[name](raw)
    with pytest.raises(errors.InvalidInput):
        verify_join_request(parse_join_request(raw))


@pytest.mark.parametrize(
    "raw",
    [
        {"request": {}, "signature": "AA"},
        "two-signing-keys",
        "unknown-member",
    ],
)
def test_join_request_schema(raw: Any) -> None:
    value = request().model_dump(mode="json")
    if raw == "two-signing-keys":
        value["request"]["keys"][1] = value["request"]["keys"][0]
    elif raw == "unknown-member":
        value["request"]["extra"] = 1
    else:
        value = raw
    with pytest.raises(errors.InvalidInput):
        parse_join_request(value)


def test_admit_adds_the_node_and_nodes_accept_the_version() -> None:
    doc = admit(CHAIN[3].roster, ISSUED, EXPIRES, [request()], {"za-customs": "suspended"})
    held = accept_chain(trusted(3), [signed(doc, BOTH)], NOW)
    assert held.node("fr-customs").status == "active" and held.node("za-customs").status == "suspended"
    assert [n.id for n in doc.nodes] == sorted(n.id for n in doc.nodes)
    view = federation_view(held)  # the v1 form the wiring runs on: active nodes, current keys
    assert "fr-customs" in view.node_ids and "za-customs" not in view.node_ids and "gb-avsec" not in view.node_ids
    fr = view.node("fr-customs")
    assert fr.signing_kid == held.current_key("fr-customs", "signing").kid
    assert fr.tls_pin == spki_pin(b64d(held.current_key("fr-customs", "tls").key))
    assert view.node_by_pin(fr.tls_pin).id == "fr-customs" and view.roster.version == 4


def _named_like(other: str) -> JoinRequest:
    """A join request whose certificate has the subject name of `other`'s vector certificate."""
    name = cert_subject(tls_cert(other).encode()).removeprefix("CN=")
    _, cert = generate_tls_identity(name, dt.datetime(2025, 5, 19, tzinfo=dt.UTC))
    values = {"federation": FEDERATION, "id": "xx-customs", "name": "XX customs (test)", "country": "FR"}
    values |= {"agency": "customs", "endpoint": "https://xx.example.test:8443"}
    made = "2025-05-19T10:00:00.000Z"
    return sign_join_request(
        values, made, signing_key("xx-customs/join"), decryption_key("xx-customs/join").public, cert
    )


@pytest.mark.parametrize(
    ("joins", "statuses", "message"),
    [
        (lambda: [request(federation="another federation")], {}, "is for federation"),
        (lambda: [request("nl-customs")], {}, "already in roster version 3"),
        (lambda: [], {"gb-avsec": "active"}, "revoked and stays revoked"),
        (lambda: [], {"xx-nobody": "revoked"}, "not in roster version 3"),
        (lambda: [request(), request()], {}, "already in roster version 3"),
        # OpenSSL finds an anchor by subject name: a newcomer named like a member would cut it off
        (lambda: [_named_like("nl-customs")], {}, "subject name of a node's"),
        (lambda: [request(), _named_like("fr-customs-join")], {}, "subject name of a node's"),  # one version
    ],
)
def test_admit_refuses(joins: Any, statuses: Any, message: str) -> None:
    with pytest.raises(errors.InvalidInput, match=message):
        admit(CHAIN[3].roster, ISSUED, EXPIRES, joins(), statuses)
