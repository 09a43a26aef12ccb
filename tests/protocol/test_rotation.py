"""Rotation of a node's keys (docs/protocol.md, 6a.13): the request's rules at the proposer, the
history rule at every node that accepts the version, and the keys a held version lets through
(retiring: anything; verify-only: what was taken in before). Good cases accepted, each bad one
refused with nothing built."""

from __future__ import annotations

from typing import Any

import pytest

from exchange import errors
from exchange.crypto import DecryptionKey, NodeKeys, SigningKey, b64e
from exchange.protocol.roster2_model import RosterV2, SignedRosterV2
from exchange.protocol.rosterchain import TrustedRoster, combine, sign_roster_v2
from exchange.protocol.rostermigration import authority, first_version, node_from_join, propose
from exchange.protocol.rosterview import federation_view
from exchange.protocol.rotation import (
    RotationRequest,
    _signing_input,
    parse_rotation_request,
    rotate,
    rotation_hash,
    sign_rotation_request,
    verify_rotation_request,
)
from tests.protocol.test_roster_join import EXPIRES, FEDERATION, ISSUED, request
from tests.vectors.make_vectors import decryption_key, signing_key

HOLDERS = [signing_key(f"rotation/holder {i}") for i in range(3)]
MADE = "2025-05-21T00:00:00.000Z"


def sign(doc: RosterV2) -> SignedRosterV2:
    return combine(doc, [sign_roster_v2(doc, k) for k in HOLDERS[:2]])


def version1() -> SignedRosterV2:
    nodes = [node_from_join(request(n), 1) for n in ("fr-customs", "za-customs")]
    auth = authority([(f"holder {i}", k.verify_key) for i, k in enumerate(HOLDERS)], 2)
    return sign(first_version(FEDERATION, nodes, auth, ISSUED, EXPIRES))


FR_SIGNING = signing_key("fr-customs/join")
FR_DECRYPTION = decryption_key("fr-customs/join")
NEW_SIGNING = signing_key("fr-customs/rotated")
NEW_DECRYPTION = decryption_key("fr-customs/rotated")


def requests() -> list[RotationRequest]:
    return [
        sign_rotation_request(FEDERATION, "fr-customs", MADE, FR_SIGNING, NEW_SIGNING),
        sign_rotation_request(FEDERATION, "fr-customs", MADE, FR_SIGNING, NEW_DECRYPTION.public, FR_DECRYPTION.kid),
    ]


def next_doc(held: RosterV2, reqs: list[RotationRequest], finish: tuple[str, ...] = ()) -> RosterV2:
    return rotate(held, propose(held, MADE, held.expires), reqs, finish)


def test_a_rotation_lists_the_new_keys_active_the_old_retiring_and_every_node_accepts_it() -> None:
    v1 = version1()
    reqs = requests()
    for req in reqs:
        verify_rotation_request(req, v1.roster)
        assert parse_rotation_request(req.model_dump_json().encode()) == req
        assert len(rotation_hash(req)) == 64
    v2 = sign(next_doc(v1.roster, reqs))
    held = TrustedRoster.restore(v1).accept(v2)
    fr = held.node("fr-customs")
    states = {k.kid: (k.state, k.valid_from, k.valid_until) for k in fr.keys}
    assert states[FR_SIGNING.kid] == ("retiring", 1, None) and states[FR_DECRYPTION.kid] == ("retiring", 1, None)
    assert states[NEW_SIGNING.kid] == ("active", 2, None) and states[NEW_DECRYPTION.kid] == ("active", 2, None)

    # The wiring: senders wrap for the new key; the old ones are still accepted (the overlap).
    fed = federation_view(held)
    assert fed.node("fr-customs").signing_kid == NEW_SIGNING.kid
    assert fed.encryption_key("fr-customs").kid == NEW_DECRYPTION.kid
    assert fed.signing_key_of("fr-customs", FR_SIGNING.kid) is not None
    assert fed.accepts_wrap("fr-customs", FR_DECRYPTION.kid) and fed.accepts_wrap("fr-customs", NEW_DECRYPTION.kid)

    # Version 3 ends the overlap: verify-only, valid until 2; only what was taken in before.
    v3 = sign(next_doc(v2.roster, [], ("fr-customs",)))
    held3 = held.accept(v3)
    old = {k.kid: k for k in held3.node("fr-customs").keys}
    assert (old[FR_SIGNING.kid].state, old[FR_SIGNING.kid].valid_until) == ("verify-only", 2)
    fed3 = federation_view(held3)
    assert fed3.signing_key_of("fr-customs", FR_SIGNING.kid) is None
    assert fed3.signing_key_of("fr-customs", FR_SIGNING.kid, stored=True) is not None
    assert not fed3.accepts_wrap("fr-customs", FR_DECRYPTION.kid)
    assert [k.kid for k in fed3.signing_keys("fr-customs")] == [NEW_SIGNING.kid, FR_SIGNING.kid]
    # A node that never listed a key accepts none by that kid.
    assert fed3.signing_key_of("za-customs", FR_SIGNING.kid, stored=True) is None


def _resigned(req: RotationRequest, *keys: SigningKey) -> RotationRequest:
    body = req.request
    sigs = [{"kid": k.kid, "signature": b64e(k.sign(_signing_input(body)))} for k in keys]
    return RotationRequest.model_validate({"request": body.model_dump(), "signatures": sigs})


def _edited(req: RotationRequest, **changes: Any) -> RotationRequest:
    body = req.request.model_copy(update=changes)
    body.__dict__.pop("canonical", None)
    return _resigned(RotationRequest(request=body, signatures=req.signatures), FR_SIGNING, NEW_SIGNING)


REFUSED = {
    "not signed by the old key": lambda: _resigned(requests()[0], signing_key("someone else"), NEW_SIGNING),
    "no proof of the new signing key": lambda: _resigned(requests()[0], FR_SIGNING),
    "the new key signed for the old": lambda: _resigned(requests()[0], NEW_SIGNING),
    "another node's request": lambda: _edited(requests()[0], id="xx-customs"),
    "another federation": lambda: _edited(requests()[0], federation="elsewhere"),
    "an old key that is not the active one": lambda: _edited(requests()[0], old=NEW_SIGNING.kid),
    "a key listed already": lambda: sign_rotation_request(
        FEDERATION, "fr-customs", MADE, FR_SIGNING, signing_key("za-customs/join")
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_rotation_request_that_breaks_a_rule_is_refused(case: str) -> None:
    v1 = version1()
    bad = REFUSED[case]()
    with pytest.raises(errors.InvalidInput) as caught:
        verify_rotation_request(bad, v1.roster)
    assert "rotation request of" in caught.value.detail
    with pytest.raises(errors.InvalidInput):
        next_doc(v1.roster, [bad])  # the proposer builds nothing from it


def test_two_rotations_of_one_use_in_one_version_are_refused() -> None:
    v1 = version1()
    other = sign_rotation_request(FEDERATION, "fr-customs", MADE, FR_SIGNING, signing_key("fr-customs/third"))
    with pytest.raises(errors.InvalidInput, match="two rotations"):
        next_doc(v1.roster, [requests()[0], other])


def test_a_new_key_of_a_listed_node_that_is_not_active_is_refused_by_every_node() -> None:
    v1 = version1()
    doc = next_doc(v1.roster, requests()[:1])
    fr = next(n for n in doc.nodes if n.id == "fr-customs")
    keys = [k.model_copy(update={"state": "retiring"}) if k.kid == NEW_SIGNING.kid else k for k in fr.keys]
    keys = [k.model_copy(update={"state": "active"}) if k.kid == FR_SIGNING.kid else k for k in keys]
    broken = doc.model_copy(
        update={"nodes": [fr.model_copy(update={"keys": keys}) if n.id == fr.id else n for n in doc.nodes]}
    )
    with pytest.raises(errors.RosterInvalid, match="new signing key of a listed node is active"):
        TrustedRoster.restore(v1).accept(sign(broken))


def test_node_keys_open_with_former_keys_and_swap_whole() -> None:
    keys = NodeKeys(FR_SIGNING, FR_DECRYPTION)
    assert keys.decryption_for(NEW_DECRYPTION.kid) is None and not keys.former
    keys.install(NodeKeys(NEW_SIGNING, NEW_DECRYPTION, [FR_DECRYPTION]))
    assert (keys.signing.kid, keys.decryption.kid) == (NEW_SIGNING.kid, NEW_DECRYPTION.kid)
    assert keys.decryption_for(FR_DECRYPTION.kid) is FR_DECRYPTION
    assert [k.kid for k in keys.former] == [FR_DECRYPTION.kid]
    assert isinstance(keys.decryption_for(NEW_DECRYPTION.kid), DecryptionKey)
