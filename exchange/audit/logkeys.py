"""Which of a node's keys signed a checkpoint: a log outlives its node's signing key (a rotation,
docs/protocol.md, 6a.13), so a checkpoint signed before the change names the key of then."""

from __future__ import annotations

from collections.abc import Sequence

from exchange.audit.note import SIG_ED25519, Note, key_id, parse_note
from exchange.crypto import VerifyKey
from exchange.errors import InvalidInput


def key_that_signed(note: str | Note, name: str, keys: Sequence[VerifyKey]) -> VerifyKey:
    """The first of `keys` (the current key first, then former ones) whose key ID a signature line
    of `name` in `note` carries; the first of `keys` if none does, or the note does not parse (the
    check that follows then fails with its own message)."""
    try:
        parsed = parse_note(note) if isinstance(note, str) else note
    except InvalidInput:
        return keys[0]
    ids = {s.key_id for s in parsed.by(name)}
    return next((k for k in keys if key_id(name, SIG_ED25519, k.raw) in ids), keys[0])
