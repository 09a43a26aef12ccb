"""`check_signer`: the key rule of docs/protocol.md 9.8 rule 4, judged again where a receiver
stores what it checked earlier (rule 18), for each state a roster version gives a signing key
(6a.7, 6a.13). Recorded roster chain (tests/vectors): version 2 rotates ke-customs's first
signing key (retiring), version 3 marks it compromised."""

from __future__ import annotations

import pytest

from exchange.crypto import b64d
from exchange.errors import InvalidEnvelope, UnknownPeer
from exchange.protocol.envelope import CitedHeader, CitedRecipient, CitedState, check_signer
from exchange.protocol.roster import Federation, FormerKeys
from exchange.protocol.rosterview import federation_view
from tests.protocol.test_roster_chain import trusted

AUTHOR = "ke-customs"


def header(author: str, signer: str) -> CitedHeader:
    return CitedHeader("c2c", author, 1, CitedState("nl-customs", 1, "ab" * 32), (CitedRecipient(author),), signer)


def verify_only(fed: Federation, node: str, kid: str) -> Federation:
    """`fed` with `node`'s former key `kid` verify-only, as at the end of a rotation's overlap."""
    former = fed._index.former  # (a version the recorded chain does not hold)
    _, raw = former.signing[node, kid]
    signing = {**former.signing, (node, kid): ("verify-only", raw)}
    return Federation.index(fed.roster, FormerKeys(signing, former.wrap, former.departed, former.tls))


def revoked(fed: Federation, node: str) -> Federation:
    gone = fed.node(node)
    roster = fed.roster.model_copy(update={"nodes": [n for n in fed.roster.nodes if n.id != node]})
    return Federation.index(
        roster,
        FormerKeys({(node, gone.signing_kid): ("verify-only", b64d(gone.signing_key))}, frozenset(), {node: "KE"}),
    )


def test_each_key_state_is_judged_as_for_a_new_item() -> None:
    first, rotated, compromised = (federation_view(trusted(v)) for v in (1, 2, 3))
    old = first.node(AUTHOR).signing_kid
    new = rotated.node(AUTHOR).signing_kid
    assert old != new
    check_signer(header(AUTHOR, old), first)  # the current key
    check_signer(header(AUTHOR, new), rotated)
    check_signer(header(AUTHOR, old), rotated)  # retiring: a rotation's overlap
    with pytest.raises(InvalidEnvelope, match="not signed with the author's roster key"):
        check_signer(header(AUTHOR, old), verify_only(rotated, AUTHOR, old))  # checks what is stored only
    with pytest.raises(InvalidEnvelope, match="which the roster marks compromised"):
        check_signer(header(AUTHOR, old), compromised)
    with pytest.raises(InvalidEnvelope, match="not signed with the author's roster key"):
        check_signer(header(AUTHOR, "0000000000000000"), first)  # no key of the author's
    with pytest.raises(UnknownPeer):
        check_signer(header(AUTHOR, old), revoked(first, AUTHOR))  # what it signed is stored, not taken anew
    with pytest.raises(UnknownPeer):
        check_signer(header("xx-nowhere", old), first)
