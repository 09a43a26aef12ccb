"""Witnessing, the pure part: what a witness accepts, when it has caught a split view, and the
messages of the protocol.

It follows c2sp.org/tlog-witness, carried as JSON over the mutual-TLS federation API:

- push: a log POSTs `/fed/v1/audit/cosign` with `{"checkpoint", "old_size", "proof"}`, where
  `old_size` is the size it believes the witness last saw and `proof` a consistency proof from
  it. The witness answers `{"status": "cosigned", "cosignature": <line>}`, or `{"status":
  "stale", "size": n}` if it last saw size n (tlog-witness answers 409 there; a 200 keeps
  routine retries out of the audit trail of refused requests), or refuses with 409 if the
  proof fails or a checkpoint of a size it co-signed has another root: a split view, which it
  records, audits and never co-signs. A checkpoint smaller than one it co-signed is answered
  `stale` too: an honest log may push one late (a worker's push overtaken by another worker's,
  or by the witness's pull), and a rollback is caught by the pull instead.
- pull: a witness GETs `/fed/v1/audit/checkpoint?from=<size it saw>` from the log, checks the
  same way, and POSTs its cosignature back to `/fed/v1/audit/cosignatures`. Pulling catches a
  log that stops asking, and one that answers with no checkpoint after the witness co-signed one
  (a rollback to nothing, recorded as a split view).

A witness trusts the first checkpoint it sees of a log (trust on first use) and from then on
only checkpoints that extend it. The witness that stores what it saw and talks to partners is
`exchange.service.audit.witness`. Pure: no I/O, no clock (times are passed in).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from exchange.audit.checkpoint import Checkpoint, log_origin, open_checkpoint
from exchange.audit.events import AUDIT_SPLIT_VIEW, AuditSplitView
from exchange.audit.note import Note, parse_note
from exchange.crypto import VerifyKey, b64d, b64e, canonical_json
from exchange.errors import ExchangeError, InvalidInput, PeerError, PeerRefused, SplitView, Unavailable
from exchange.merkle import EMPTY_ROOT, ProofError, verify_consistency

CHECKPOINT_INTERVAL = 60.0  # seconds between rounds of signing, asking and pulling
COSIGN_PATH = "/fed/v1/audit/cosign"
COSIGNATURES_PATH = "/fed/v1/audit/cosignatures"
CHECKPOINT_PATH = "/fed/v1/audit/checkpoint"
MAX_PROOF = 128  # hashes: far more than any consistency proof of a log of 2**64 entries
MAX_ANSWER_KEPT = 16 * 1024  # characters of an answer without a checkpoint kept as evidence
NO_CHECKPOINT = "it answered with no checkpoint"

FailureKind = Literal["unreachable", "refused", "invalid", "split-view", "error"]
"""How a witnessing exchange with a partner failed (a label of `GET /metrics`: a bounded set)."""


@dataclass(frozen=True)
class Seen:
    """The largest checkpoint of a partner's log that this node has checked and co-signed."""

    size: int
    root: bytes
    note: str
    at: str


class Cosigned(TypedDict):
    status: Literal["cosigned"]
    cosignature: str


class Stale(TypedDict):
    status: Literal["stale"]
    size: int


CosignAnswer = Cosigned | Stale
"""A witness's answer to a log asking it to co-sign (a split view is refused instead)."""


@dataclass(frozen=True)
class CosignRequest:
    """A log's push: its checkpoint, the size it believes we saw, a consistency proof from it."""

    checkpoint: str
    old_size: int
    proof: list[bytes]


def parse_proof(body: dict[str, Any]) -> list[bytes]:
    """The `proof` member of a request or answer: base64url hashes, at most MAX_PROOF of them."""
    raw = body.get("proof", [])
    if not isinstance(raw, list) or len(raw) > MAX_PROOF or not all(isinstance(p, str) for p in raw):
        raise InvalidInput("proof must be a list of base64url hashes")
    return [b64d(p) for p in raw]


def parse_cosign_request(body: Any) -> CosignRequest:
    """A push request's body, checked."""
    if not isinstance(body, dict) or not isinstance(body.get("checkpoint"), str):
        raise InvalidInput('the body must be {"checkpoint": ..., "old_size": ..., "proof": [...]}')
    old = body.get("old_size", 0)
    if type(old) is not int or old < 0:
        raise InvalidInput("old_size must be a non-negative integer")
    return CosignRequest(body["checkpoint"], old, parse_proof(body))


def parse_cosignature(body: Any) -> tuple[int, str]:
    """A returned cosignature's body, checked: the checkpoint's size and the signature line."""
    if not isinstance(body, dict) or type(body.get("size")) is not int or not isinstance(body.get("cosignature"), str):
        raise InvalidInput('the body must be {"size": ..., "cosignature": ...}')
    return body["size"], body["cosignature"]


def cosign_request(note: str, old_size: int, proof: list[bytes]) -> bytes:
    """The body of a push: our checkpoint and a consistency proof from what the witness saw."""
    return canonical_json({"checkpoint": note, "old_size": old_size, "proof": [b64e(p) for p in proof]})


def cosignature_body(size: int, line: str) -> bytes:
    """The body that returns our cosignature of a partner's checkpoint of `size` (pull)."""
    return canonical_json({"size": size, "cosignature": line})


def open_logs_checkpoint(
    node: str, note_text: str, key: VerifyKey, known: Sequence[VerifyKey] = ()
) -> tuple[Checkpoint, Note]:
    """The checkpoint, signed by `node` for its own log (a line under any of its `known` keys must
    verify too); only the log's own signature lines kept."""
    cp, note = open_checkpoint(note_text, key, log_origin(node), known)
    return cp, Note(note.text, tuple(note.by(cp.origin)))


def signed_by(note_text: str, name: str) -> bool:
    """Does the note carry a signature line by key name `name`?"""
    return any(s.name == name for s in parse_note(note_text).signatures)


def split_detail(seen: Seen | None, cp: Checkpoint, old_size: int, proof: list[bytes]) -> Stale | str | None:
    """Does `cp` extend what the witness saw? None if so (or nothing was seen: trust on first use;
    or the empty log, which every tree extends), `Stale` if the log proved it from another size or
    it is smaller, or why it is a split view.

    A smaller checkpoint than the one seen is only late, pushed or pulled: a log's workers sign
    and push checkpoints independently, and one may push a checkpoint after another worker's
    larger one was co-signed (or pulled by the witness) in the meantime. It proves nothing either
    way without a proof to the one seen; a log that went back is caught where it shows its
    latest, the pull (`went_back`), and cannot prove a larger one from the size seen.
    """
    if seen is None:
        return None
    if cp.size < seen.size or old_size != seen.size:
        return {"status": "stale", "size": seen.size}
    if seen.size == 0 and (cp.size > 0 or cp.root == seen.root):
        return None  # every tree extends the empty one; a proof from it proves nothing (tlog_witness.judge)
    try:
        verify_consistency(seen.size, cp.size, proof, seen.root, cp.root)
    except ProofError as exc:
        return str(exc)
    return None


def is_new(seen: Seen | None, cp: Checkpoint) -> bool:
    """Is `cp` new to a witness that holds `seen` (larger, or the first it sees)? A new checkpoint
    must be signed with a key of the log's node that signs new items, its `active` key or, in a
    rotation's overlap, its `retiring` one (docs/protocol.md 6a.13); a `verify-only` key checks
    only what the node signed before: checkpoints no larger than the one seen. Otherwise whoever
    holds a retired key could have new checkpoints co-signed."""
    return seen is None or cp.size > seen.size


def went_back(seen: Seen | None, cp: Checkpoint) -> str | None:
    """When pulling: a log whose latest checkpoint is smaller than one the witness co-signed (read
    before it asked) went back, a split view: an honest log's latest is at least any it showed."""
    if seen is not None and cp.size < seen.size:
        return f"it went back to size {cp.size}"
    return None


def shown_nothing(seen: Seen | None, node: str, answer: Any) -> tuple[Checkpoint, str] | None:
    """A pull answered with no checkpoint (`{"checkpoint": null}`, or an answer without a note): None
    if the witness never co-signed one of this log's checkpoints (nothing to witness yet); else a
    rollback to nothing, recorded as a split view: what the log showed, taken as its empty log
    (size 0, the root of the empty tree), and the answer as kept (sorted JSON, cut short). An
    honest log never loses a checkpoint it showed: it answers with its latest, which is at least
    any it put to a witness."""
    if seen is None:
        return None
    kept = json.dumps(answer, sort_keys=True)[:MAX_ANSWER_KEPT]  # ASCII: a lone surrogate is kept escaped
    return Checkpoint(log_origin(node), 0, EMPTY_ROOT), kept


def failure_kind(exc: BaseException) -> FailureKind:
    """How a pull or push failed: `unreachable` (no answer: down, or timed out; routine, the next
    round asks again), `refused` (it answered with an error status), `split-view`, `invalid` (what
    it answered does not hold: a bad signature, a malformed answer, a failed check), or `error`
    (anything else, this node's own failures included)."""
    if isinstance(exc, SplitView):
        return "split-view"
    if isinstance(exc, PeerRefused) or (isinstance(exc, PeerError) and " answered " in exc.detail):
        return "refused"
    if isinstance(exc, PeerError):
        return "unreachable"
    return "invalid" if isinstance(exc, ExchangeError) and not isinstance(exc, Unavailable) else "error"


def split_message(node: str, seen: Seen, cp: Checkpoint, detail: str) -> str:
    """The error a witness logs and raises for a split view."""
    return (
        f"split view: {node} showed a checkpoint of size {cp.size} that does not extend the checkpoint "
        f"of size {seen.size} this node witnessed ({detail})"
    )


def split_view_entry(node: str, seen: Seen, cp: Checkpoint, detail: str, at: str) -> AuditSplitView:
    """The audit entry a witness writes when it catches a split view."""
    return {
        "event": AUDIT_SPLIT_VIEW,
        "at": at,
        "node": node,
        "seen_size": seen.size,
        "seen_root": b64e(seen.root),
        "shown_size": cp.size,
        "shown_root": b64e(cp.root),
        "detail": detail,
    }
