"""A checkpoint line under one of the log's known former keys must verify too (docs/audit.md, 3:
"A line that matches a known key but does not verify rejects the note"). Before (found by a
read-only review), a note was opened with the key whose line came first in the roster's order, the
current one, and a bad line under a former key was ignored, by verifiers and witnesses alike."""

from __future__ import annotations

import hashlib

import pytest

from exchange.audit.checkpoint import Checkpoint, log_origin, sign_checkpoint
from exchange.audit.log import KeyRing, LogVerifier
from exchange.audit.note import SIG_ED25519, NoteSignature, key_id, sign_note
from exchange.audit.witness import open_logs_checkpoint
from exchange.crypto import SigningKey
from exchange.errors import AuditTampered, BadSignature
from exchange.protocol.roster import Federation, FormerKeys
from tests.vectors import make_audit_vectors as gen
from tests.vectors.make_vectors import recorded_federation, signing_key

LOG = gen.LOG_NODE
ORIGIN = log_origin(LOG)
FORMER = SigningKey(hashlib.sha256(b"a former key of the log").digest())
STRANGER = SigningKey(hashlib.sha256(b"a key no roster lists").digest())
FED = Federation.index(
    recorded_federation(gen.load_v1()["outputs"]).roster,
    FormerKeys({(LOG, FORMER.verify_key.kid): ("verify-only", FORMER.verify_key.raw)}, frozenset()),
)
RING = KeyRing.from_federation(FED)
CHECKPOINT = Checkpoint(ORIGIN, 5, hashlib.sha256(b"root").digest())


def forged(key: SigningKey) -> NoteSignature:
    """A line under `key`'s key ID that is no signature by it."""
    return NoteSignature(ORIGIN, key_id(ORIGIN, SIG_ED25519, key.verify_key.raw), bytes(64))


def note(*extra: NoteSignature) -> str:
    return sign_checkpoint(CHECKPOINT, signing_key(LOG)).with_signatures(*extra).render()


def test_a_bad_line_under_a_former_key_rejects_the_note() -> None:
    with pytest.raises(AuditTampered, match="not validly signed"):
        LogVerifier(LOG, RING).checkpoint(note(forged(FORMER)))
    with pytest.raises(BadSignature):
        open_logs_checkpoint(LOG, note(forged(FORMER)), FED.verify_key(LOG), FED.signing_keys(LOG))


def test_good_lines_under_known_keys_and_any_line_under_an_unknown_one_pass() -> None:
    text = CHECKPOINT.text()
    both = note(sign_note(text, ORIGIN, FORMER))
    assert LogVerifier(LOG, RING).checkpoint(both).size == CHECKPOINT.size
    assert LogVerifier(LOG, RING).checkpoint(note(forged(STRANGER))).size == CHECKPOINT.size
    cp, _ = open_logs_checkpoint(LOG, both, FED.verify_key(LOG), FED.signing_keys(LOG))
    assert cp == CHECKPOINT
