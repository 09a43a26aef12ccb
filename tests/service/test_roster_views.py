"""A node runs on the v1 view of the roster v2 version it holds (exchange.protocol.rosterview), so it
takes no version without one. Before, a version whose view could not be built was checked, stored
and held: the node named it in every header but ran on the version before, answered 503
RosterBehind to every partner on it for good, never pulled again, and could not restart.

Two ways to such a version: a TLS certificate of about 5.9 KB (within the 8,000 base64url
characters of DER that roster v2 allowed, beyond the 8,000 characters of PEM of the v1 view), and
a version with no active node (a v1 roster lists at least one).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from collections.abc import Callable

import pytest

from exchange import errors
from exchange.crypto import DecryptionKey, SigningKey, b64e, canonical_json, cert_pem, generate_tls_identity
from exchange.model import MAX_TLS_CERT
from exchange.protocol.roster2_model import MAX_TLS_KEY_TEXT, RosterNodeV2
from exchange.protocol.rosterchain import DOMAIN, key_entry, tls_kid
from exchange.protocol.rostermigration import propose, sign_join_request
from exchange.protocol.signing import signing_input_prefix
from exchange.service.federation import FederationRoster
from exchange.store import Store
from tests.protocol.test_roster_chain import BOTH, CHAIN
from tests.service.test_federation_roster import NOW, audited, holding, stored
from tests.vectors.make_roster_vectors import signed
from tests.vectors.make_vectors import signing_key

MADE = dt.datetime(2025, 5, 1, tzinfo=dt.UTC)
ISSUED, EXPIRES = "2025-05-10T00:00:00.000Z", "2025-12-01T00:00:00.000Z"


def der_with(names: int) -> bytes:
    """A fresh certificate's DER, about 20 bytes larger for each DNS name it lists."""
    pem = generate_tls_identity("big joiner", MADE, tuple(f"h{i:04d}.example.test" for i in range(names)))[1]
    return base64.b64decode(b"".join(line for line in pem.splitlines() if not line.startswith(b"-----")))


def pem_chars(der: int) -> int:
    """Characters of the PEM of `der` bytes: padded base64 in lines of 64, between armour lines."""
    text = 4 * math.ceil(der / 3)
    return len("-----BEGIN CERTIFICATE-----\n") + text + math.ceil(text / 64) + len("-----END CERTIFICATE-----\n")


def gap_cert() -> bytes:
    """A certificate within the former v2 limit (8,000 base64url characters) whose PEM is not
    within the v1 view's (MAX_TLS_CERT)."""
    for names in range(250, 400):
        der = der_with(names)
        if len(b64e(der)) <= 8000 < len(cert_pem(der)):
            return der
    raise AssertionError("no certificate of that size")


def v4_listing(tls: bytes) -> bytes:
    """Version 4 adding a node whose TLS key is `tls`, signed by the authority (two of its holders,
    as the ceremony let it through), as an offer's bytes. Built as a dict: the schema now refuses
    the key, and the point is what a receiver does with such bytes."""
    node = RosterNodeV2.model_validate(
        {
            "id": "zz-big",
            "name": "Big",
            "country": "ZZ",
            "agency": "customs",
            "endpoint": "https://zz.example:8443",
            "status": "active",
            "since": 4,
            "keys": [
                key_entry("signing", SigningKey.generate().verify_key.raw, 4).model_dump(),
                key_entry("encryption", DecryptionKey.generate().public.raw, 4).model_dump(),
                key_entry("tls", der_with(1), 4).model_dump(),
            ],
        }
    )
    doc = propose(CHAIN[3].roster, ISSUED, EXPIRES, nodes=[*CHAIN[3].roster.nodes, node]).model_dump(mode="json")
    key = doc["nodes"][-1]["keys"][2]
    key["key"], key["kid"] = b64e(tls), tls_kid(tls)
    message = signing_input_prefix(DOMAIN) + canonical_json(doc)
    signatures = [{"kid": signing_key(h).kid, "signature": b64e(signing_key(h).sign(message))} for h in BOTH]
    return json.dumps({"roster": doc, "signatures": signatures}).encode()


def v4_with_no_active_node() -> bytes:
    """Version 4 suspending every node still active: valid as roster v2, with no v1 view."""
    nodes = [
        RosterNodeV2.model_validate({**n.model_dump(), "status": "suspended", "since": 4})
        if n.status == "active"
        else n
        for n in CHAIN[3].roster.nodes
    ]
    doc = signed(propose(CHAIN[3].roster, ISSUED, EXPIRES, nodes=nodes), BOTH)
    return json.dumps(doc.model_dump(mode="json")).encode()


def test_the_v2_limit_is_where_the_v1_pem_ends() -> None:
    for names in (1, 60, 200):
        der = der_with(names)
        assert len(cert_pem(der)) == pem_chars(len(der))
    assert len(b64e(bytes(5865))) == MAX_TLS_KEY_TEXT
    assert pem_chars(5865) <= MAX_TLS_CERT < pem_chars(5866)


def test_the_proposer_and_a_joiner_refuse_a_certificate_too_large_for_the_view() -> None:
    """`exchange node init` (the join request) and every key entry the proposer writes."""
    big = gap_cert()
    with pytest.raises(errors.InvalidInput, match=f"at most {MAX_TLS_KEY_TEXT} characters"):
        key_entry("tls", big, 4)
    details = {"federation": CHAIN[3].roster.federation, "id": "zz-big", "name": "Big", "country": "ZZ"}
    details |= {"agency": "customs", "endpoint": "https://zz.example:8443"}
    with pytest.raises(errors.InvalidInput, match=f"at most {MAX_TLS_KEY_TEXT} characters"):
        sign_join_request(details, ISSUED, SigningKey.generate(), DecryptionKey.generate().public, big)


@pytest.mark.parametrize(
    ("offer", "error", "says"),
    [
        (lambda: v4_listing(gap_cert()), errors.InvalidInput, f"at most {MAX_TLS_KEY_TEXT} characters"),
        (v4_with_no_active_node, errors.RosterInvalid, "has no v1 form"),
    ],
    ids=["certificate-too-large-for-the-view", "no-active-node"],
)
async def test_a_version_the_node_cannot_run_on_is_refused_and_nothing_is_stored(
    store: Store, offer: Callable[[], bytes], error: type[errors.ExchangeError], says: str
) -> None:
    roster = await holding(store, 1, 2, 3)
    view, rows, entries = roster.view(), await stored(store), await audited(store)
    with pytest.raises(error, match=says):
        await roster.import_chain(offer(), source="peer:ke-customs")
    assert await stored(store) == rows and roster.held is not None and roster.held.version == 3
    assert roster.view() is view
    refusal = (await audited(store))[len(entries) :]
    assert [(e["event"], e["error"], e["source"]) for e in refusal] == [
        ("roster.refused", error.__name__, "peer:ke-customs")
    ]
    restarted = FederationRoster(store, clock=lambda: NOW)  # and a restart runs on version 3
    await restarted.load()
    assert restarted.view() is not None and restarted.view().roster.version == 3  # type: ignore[union-attr]
