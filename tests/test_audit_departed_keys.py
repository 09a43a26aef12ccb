"""What a suspended or revoked node signed before still verifies (docs/protocol.md 6a.7): its audit
log's checkpoints and its cosignatures on other logs, with its keys but compromised ones. Before
(found by a read-only review), the key ring held active nodes only, each witness under its
current key only, so after a revocation `exchange audit verify` refused the revoked node's log
as "not in the roster" and dropped its earlier cosignatures. Recorded chain: version 3 revokes
gb-avsec and marks ke-customs's first signing key compromised."""

from __future__ import annotations

import hashlib

import pytest

from exchange.audit import quorum as policy
from exchange.audit.checkpoint import Checkpoint, cosign, log_origin, sign_checkpoint, witness_name
from exchange.audit.log import KeyRing, LogVerifier
from exchange.audit.note import NoteSignature
from exchange.errors import AuditTampered
from exchange.protocol.rosterview import federation_view
from tests.protocol.test_roster_chain import trusted
from tests.vectors.make_vectors import signing_key

REVOKED, LOG, ROTATED = "gb-avsec", "nl-customs", "ke-customs"
RING = KeyRing.from_federation(federation_view(trusted(3)))
T = 1_740_000_000


def checkpoint(node: str) -> Checkpoint:
    return Checkpoint(log_origin(node), 7, hashlib.sha256(node.encode()).digest())


def test_a_revoked_nodes_log_still_verifies() -> None:
    note = sign_checkpoint(checkpoint(REVOKED), signing_key(REVOKED)).render()
    assert LogVerifier(REVOKED, RING).checkpoint(note).size == 7
    forged = sign_checkpoint(checkpoint(REVOKED), signing_key(LOG)).render()  # not its key
    with pytest.raises(AuditTampered, match="not validly signed"):
        LogVerifier(REVOKED, RING).checkpoint(forged)


def test_a_revoked_witness_cosignature_still_verifies_but_is_not_designated() -> None:
    note = sign_checkpoint(checkpoint(LOG), signing_key(LOG))
    text = note.text
    cosigned = note.with_signatures(cosign(text, witness_name(REVOKED), signing_key(REVOKED), T)).render()
    info = LogVerifier(LOG, RING).checkpoint(cosigned)
    assert info.witnesses == (REVOKED,)
    assert REVOKED not in policy.designated(RING, LOG, 5) and REVOKED not in RING.nodes
    bad = NoteSignature(
        witness_name(REVOKED), cosign(text, witness_name(REVOKED), signing_key(REVOKED), T).key_id, bytes(72)
    )
    with pytest.raises(AuditTampered, match="a cosignature does not verify"):
        LogVerifier(LOG, RING).checkpoint(note.with_signatures(bad).render())


def test_a_compromised_key_is_still_refused() -> None:
    note = sign_checkpoint(checkpoint(LOG), signing_key(LOG))
    stolen = cosign(note.text, witness_name(ROTATED), signing_key(ROTATED), T)  # its compromised key
    assert LogVerifier(LOG, RING).checkpoint(note.with_signatures(stolen).render()).witnesses == ()
    with pytest.raises(AuditTampered, match="not validly signed"):
        LogVerifier(ROTATED, RING).checkpoint(sign_checkpoint(checkpoint(ROTATED), signing_key(ROTATED)).render())
