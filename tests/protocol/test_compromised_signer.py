"""An envelope signed with a key that a later roster version marks `compromised` (6a.7): refused
for what it is, with a message that says so. Before, it was refused as "not signed with the
author's roster key", and a stored bulletin so signed was shown as not verified because "the
envelope was changed", which was not what happened. Recorded roster chain (tests/vectors): version
2 rotates ke-customs's first signing key (retiring), version 3 marks it compromised."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from exchange.clock import timestamp
from exchange.crypto import NodeKeys
from exchange.errors import BulletinUnverified, InvalidEnvelope
from exchange.model import Bulletin, NodeId
from exchange.protocol.envelope import build_envelope, check_signature, envelope_bytes
from exchange.protocol.rosterview import federation_view
from exchange.service.inbox import _verified_bulletin
from tests.protocol.test_roster_chain import trusted
from tests.vectors.make_vectors import load, recorded_federation, recorded_state, signing_key

AUTHOR = "ke-customs"


def test_an_envelope_signed_with_a_key_since_marked_compromised_is_refused_as_such() -> None:
    vectors = load()
    assert vectors is not None
    fed = recorded_federation(vectors["outputs"])
    state = recorded_state(fed, vectors["outputs"])
    bulletin = Bulletin.model_validate({"kind": "alert", "handling": {"tlp": "AMBER"}, "title": "t", "body": "b"})
    readers = [(NodeId(n), fed.encryption_key(n)) for n in state.readers]
    env = build_envelope(
        bulletin,
        state=state,
        author=NodeId(AUTHOR),
        key=signing_key(AUTHOR),
        seq=1,
        readers=readers,
        created=timestamp(),
    )
    rotated, compromised = federation_view(trusted(2)), federation_view(trusted(3))
    assert rotated.former_key_state(AUTHOR, env.header.signer) == "retiring"
    check_signature(env, rotated, stored=True)  # a retiring key still checks it
    assert compromised.former_key_state(AUTHOR, env.header.signer) == "compromised"
    for stored in (False, True):
        with pytest.raises(InvalidEnvelope, match="which the roster marks compromised"):
            check_signature(env, compromised, stored=stored)
    assert compromised.former_key_state(AUTHOR, "0000000000000000") is None
    # A stored bulletin so signed is shown as not verified, for that reason (exchange.service.inbox).
    row = SimpleNamespace(envelope=envelope_bytes(env))
    with pytest.raises(BulletinUnverified, match="which the roster now marks compromised") as shown:
        _verified_bulletin(row, NodeId("nl-customs"), compromised, NodeKeys.generate())
    assert "changed" not in shown.value.detail
