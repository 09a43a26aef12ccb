"""check_signature with a cache of verify keys (as the crypto workers keep one): a roster version
that gives the author a new key is obeyed at once, and the old key no longer signs."""

from __future__ import annotations

import pytest

from exchange.crypto import VerifyKey, b64e
from exchange.errors import BadSignature, InvalidEnvelope
from exchange.protocol.envelope import check_signature
from exchange.protocol.roster import Federation
from tests.protocol.test_envelope_rules import AUTHORITY, NODES, entry, envelope, resign, signed_roster
from tests.vectors.make_vectors import channel_log, replay, signing_key


def test_a_cached_key_serves_until_the_roster_gives_the_author_another() -> None:
    fed = Federation.verify(signed_roster(), AUTHORITY.verify_key)
    state = replay(channel_log(fed), fed)
    good = envelope(fed, state)
    keys: dict[tuple[str, str], VerifyKey] = {}
    check_signature(good, fed, keys)
    check_signature(good, fed, keys)  # from the cache
    assert list(keys) == [("nl-customs", signing_key("nl-customs").kid)]

    rotated = signing_key("nl-customs rotated")
    entries = [
        entry(n, signing_key=b64e(rotated.verify_key.raw), signing_kid=rotated.kid) if n == "nl-customs" else entry(n)
        for n in NODES
    ]
    fed.install(Federation.verify(signed_roster(entries), AUTHORITY.verify_key))
    with pytest.raises(InvalidEnvelope, match="not signed with the author's roster key"):
        check_signature(good, fed, keys)  # the old key's envelopes are refused
    renewed = resign(good, by="nl-customs rotated", signer=rotated.kid)
    check_signature(renewed, fed, keys)  # the new key is looked up, not the cached old one
    forged = resign(good, by="nl-customs", signer=rotated.kid)
    with pytest.raises(BadSignature):
        check_signature(forged, fed, keys)
