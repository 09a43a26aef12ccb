"""The C2SP tlog-witness text protocol (c2sp.org/tlog-witness), the pure part: request and answer
bodies of `add-checkpoint`, and what a witness answers, with the status codes the specification
gives.

    POST <submission prefix>/add-checkpoint

    old <size>\\n
    <base64 consistency proof hash>\\n      (0 to 63 lines; none when old size is 0)
    \\n
    <signed note of the checkpoint>

A witness answers 200 with one or more cosignature/v1 lines, 409 with `<size>\\n`
(`text/x.tlog.size`) when the old size is not the size it last co-signed, 409 when a checkpoint of
that size has another root (a split view: the log signed both), 422 when the proof fails (the
caller's bad request: the proof is not signed by the log), 400 when the old size exceeds the
checkpoint's, 404 for an unknown origin and 403 when no signature of a trusted key verifies. Base64
is standard and padded, as everywhere in C2SP. Beside today's JSON witnessing
(`exchange.audit.witness`); the node serves it (`exchange.service.audit.tlog_witnessing`) and pushes
its own checkpoints to C2SP witnesses with it (`exchange.service.audit.tlog_push`). Keys are
configured as note verifier keys (c2sp.org/signed-note, "<name>+<hex key ID>+<base64(type || public
key)>"). Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from exchange.audit.checkpoint import MAX_SIZE, is_cosignature_by, verify_cosignature
from exchange.audit.note import (
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    Note,
    NoteSignature,
    b64std_decode,
    b64std_encode,
    check_key_name,
    key_id,
    parse_note,
    parse_signature_line,
    verify_note,
)
from exchange.crypto import VerifyKey
from exchange.errors import BadSignature, ExchangeError, InvalidInput, ProofError
from exchange.merkle import HASH_SIZE, verify_consistency

ADD_CHECKPOINT = "add-checkpoint"
SIZE_CONTENT_TYPE = "text/x.tlog.size"
MAX_PROOF_LINES = 63
MAX_BODY = 64 * 1024 + 64 * 50  # a note of at most 64 KiB and its proof lines
_OLD = re.compile(r"^old (0|[1-9][0-9]{0,18})$")
_SIZE = re.compile(r"^(0|[1-9][0-9]{0,18})\n$")
_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,18})$")
_KEY_HASH = re.compile(r"^[0-9a-f]{8}$")


class Head(Protocol):
    """What the witness rules read of a checkpoint: its size and root hash."""

    @property
    def size(self) -> int: ...

    @property
    def root(self) -> bytes: ...


@dataclass(frozen=True)
class LogCheckpoint:
    """A checkpoint of any C2SP log (c2sp.org/tlog-checkpoint): the origin is any non-empty line
    (`go.sum database tree` has spaces), unlike an exchange log's origin, which is also its key name."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> LogCheckpoint:
        """Parse a checkpoint note text: origin, decimal size, base64 root, extension lines."""
        lines = text.split("\n")
        if lines[-1] != "" or len(lines) < 4:
            raise InvalidInput("a checkpoint has an origin, a size and a root hash line")
        origin, size, root, *extensions = lines[:-1]
        if not origin or not _DECIMAL.match(size) or int(size) > MAX_SIZE:
            raise InvalidInput("a checkpoint has a non-empty origin and a decimal size without leading zeros")
        raw = b64std_decode(root)
        if len(raw) != HASH_SIZE or any(not line for line in extensions):
            raise InvalidInput("a checkpoint root hash is 32 bytes; extension lines are not empty")
        return cls(origin, int(size), raw, tuple(extensions))


@dataclass(frozen=True)
class VerifierKey:
    """A note verifier key (c2sp.org/signed-note): key name, 4-byte key ID, signature type, key."""

    name: str
    key_id: bytes
    sig_type: int
    key: VerifyKey

    def render(self) -> str:
        """`<name>+<hex key ID>+<base64(type || public key)>`."""
        return f"{self.name}+{self.key_id.hex()}+{b64std_encode(bytes([self.sig_type]) + self.key.raw)}"


def verifier_key(name: str, sig_type: int, key: VerifyKey) -> VerifierKey:
    """The verifier key of an Ed25519 note key (type 0x01) or cosignature/v1 key (type 0x04)."""
    return VerifierKey(name, key_id(name, sig_type, key.raw), sig_type, key)


def parse_verifier_key(text: str, sig_type: int) -> VerifierKey:
    """Parse a vkey of signature type `sig_type` (0x01 for a log, 0x04 for a witness), checking
    its key ID against its name and key; InvalidInput names what is wrong."""
    parts = text.split("+", 2)
    if len(parts) != 3 or not _KEY_HASH.match(parts[1]):
        raise InvalidInput(f"{text[:80]!r} is not a note verifier key `<name>+<8 hex digits>+<base64 key>`")
    name, kid, encoded = parts
    check_key_name(name)
    raw = b64std_decode(encoded)
    if len(raw) != 33 or raw[0] != sig_type:
        raise InvalidInput(f"the verifier key of {name!r} is not of type 0x{sig_type:02x} with a 32-byte key")
    try:
        key = VerifyKey(raw[1:])
    except ExchangeError as exc:
        raise InvalidInput(f"the verifier key of {name!r} is not an Ed25519 key") from exc
    if key_id(name, sig_type, key.raw) != bytes.fromhex(kid):
        raise InvalidInput(f"the key ID of the verifier key of {name!r} does not match its name and key")
    return VerifierKey(name, bytes.fromhex(kid), sig_type, key)


@dataclass(frozen=True)
class AddCheckpoint:
    """An add-checkpoint request: the size the log believes the witness co-signed, a consistency
    proof from it, and the signed note (unverified)."""

    old_size: int
    proof: list[bytes]
    note: Note


@dataclass(frozen=True)
class Refusal:
    """A witness's refusal: the HTTP status, the body, its content type, and why (for logs).

    `split_view` is set only when the refusal is evidence against the log (it signed two
    checkpoints that cannot both be true); every other refusal is about the request, which anyone
    may send.
    """

    status: int
    reason: str
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    split_view: bool = False


def add_checkpoint_body(old_size: int, proof: list[bytes], note: str) -> bytes:
    """The request body of add-checkpoint."""
    if old_size < 0 or len(proof) > MAX_PROOF_LINES or any(len(p) != HASH_SIZE for p in proof):
        raise InvalidInput("an add-checkpoint request has a size >= 0 and at most 63 proof hashes of 32 bytes")
    lines = [f"old {old_size}", *(b64std_encode(p) for p in proof), ""]
    return ("".join(line + "\n" for line in lines) + note).encode("utf-8")


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Parse an add-checkpoint request body strictly (InvalidInput: a 400 Bad Request)."""
    if len(body) > MAX_BODY:
        raise InvalidInput("the add-checkpoint body is too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput("the add-checkpoint body is not UTF-8") from exc
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise InvalidInput("the add-checkpoint body needs an empty line before the checkpoint")
    lines = head.split("\n")
    matched = _OLD.match(lines[0])
    if matched is None:
        raise InvalidInput("the first line is `old <size>`, a decimal without leading zeros")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise InvalidInput(f"at most {MAX_PROOF_LINES} consistency proof lines")
    proof = [b64std_decode(line) for line in lines[1:]]
    if any(len(p) != HASH_SIZE for p in proof):
        raise InvalidInput("a consistency proof line is the base64 of a 32-byte hash")
    return AddCheckpoint(int(matched.group(1)), proof, parse_note(note))


def open_request(request: AddCheckpoint, logs: Mapping[str, tuple[str, VerifyKey]]) -> LogCheckpoint | Refusal:
    """The checkpoint of a request, if a log this witness follows signed it: `logs` maps an origin to
    the log's (key name, Ed25519 key). Else 404 (unknown origin) or 403 (no trusted signature
    verifies; signatures of other keys are ignored)."""
    try:
        checkpoint = LogCheckpoint.parse(request.note.text)
    except InvalidInput as exc:
        return Refusal(400, f"not a checkpoint: {exc.detail}")
    known = logs.get(checkpoint.origin)
    if known is None:
        return Refusal(404, f"unknown log {checkpoint.origin!r}")
    name, key = known
    try:
        verify_note(request.note, name, key)
    except BadSignature as exc:
        return Refusal(403, f"no signature of {checkpoint.origin!r} verifies: {exc.detail}")
    return checkpoint


def judge(old_size: int, proof: list[bytes], checkpoint: Head, seen: tuple[int, bytes] | None) -> Refusal | None:
    """What a witness that last co-signed `seen` (size, root; None: never) answers a request whose
    log signature verified: None to co-sign, or the refusal (tlog-witness, "add-checkpoint").

    Only a checkpoint of the size co-signed with another root is a split view (`split_view` set,
    409): the witness holds the log's signed note of the one and the request carries the other.
    A consistency proof that fails, or one that is not empty between equal sizes, is refused with
    the 422 the specification gives, but as the caller's bad request, not as evidence against the
    log: the proof is not signed by the log, and the route takes requests from anyone, so whoever
    holds two honest checkpoints of the log can send a wrong proof between them.
    """
    if old_size > checkpoint.size:
        return Refusal(400, f"old size {old_size} is larger than the checkpoint's size {checkpoint.size}")
    latest = seen[0] if seen is not None else 0
    if old_size != latest:
        return Refusal(409, f"this witness last co-signed size {latest}", f"{latest}\n".encode(), SIZE_CONTENT_TYPE)
    if seen is None:
        if proof:
            return Refusal(400, "the proof must be empty when the old size is 0")
        return None  # trust on first use
    if checkpoint.size == seen[0] and checkpoint.root != seen[1]:
        return Refusal(409, f"a checkpoint of size {seen[0]} with another root: a split view", split_view=True)
    if old_size == 0:  # a log of size 0 co-signed before proves nothing; take the new one as a first
        return Refusal(400, "the proof must be empty when the old size is 0") if proof else None
    try:
        verify_consistency(old_size, checkpoint.size, proof, seen[1], checkpoint.root)
    except ProofError as exc:
        return Refusal(422, f"the consistency proof from size {old_size} to {checkpoint.size} does not verify: {exc}")
    return None


def cosignature_body(signatures: list[NoteSignature]) -> bytes:
    """A 200 answer: one note signature line each, each ending in a newline."""
    if not signatures:
        raise InvalidInput("an add-checkpoint answer holds at least one cosignature")
    return "".join(sig.line() for sig in signatures).encode("utf-8")


def parse_cosignature_body(body: bytes) -> list[NoteSignature]:
    """The signature lines of a 200 answer (unverified: check each with `verify_cosignature`)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput("the answer is not UTF-8") from exc
    if not text.endswith("\n"):
        raise InvalidInput("each signature line ends in a newline")
    return [parse_signature_line(line) for line in text[:-1].split("\n")]


def parse_size_body(body: bytes) -> int:
    """The size of a 409 `text/x.tlog.size` answer: the witness's latest co-signed size."""
    matched = _SIZE.match(body.decode("ascii", "replace"))
    if matched is None:
        raise InvalidInput("a text/x.tlog.size body is a decimal size and a newline")
    return int(matched.group(1))


def accepted_cosignature(body: bytes, note_text: str, witness: VerifierKey) -> NoteSignature:
    """The cosignature/v1 line of `witness` in a 200 answer, verified over `note_text`; lines of
    other keys are ignored. BadSignature if there is none or it does not verify."""
    if witness.sig_type != SIG_COSIGNATURE_V1:
        raise InvalidInput("a witness's verifier key is of type 0x04 (cosignature/v1)")
    mine = [s for s in parse_cosignature_body(body) if is_cosignature_by(s, witness.name, witness.key)]
    if not mine:
        raise BadSignature(f"the answer holds no cosignature by {witness.name}")
    for sig in mine:
        verify_cosignature(note_text, sig, witness.name, witness.key)
    return mine[0]


LOG_KEY_TYPE = SIG_ED25519
WITNESS_KEY_TYPE = SIG_COSIGNATURE_V1
