"""Audit checkpoints (c2sp.org/tlog-checkpoint) and witness cosignatures (c2sp.org/tlog-cosignature).

A checkpoint is a signed note whose text is the log's origin, its size in decimal and its
RFC 9162 root hash in base64, one per line:

    exchange/audit/nl-customs
    1284
    yZ2Pq3m2...=

    — exchange/audit/nl-customs <base64(key ID || Ed25519 signature)>
    — exchange/witness/ke-customs <base64(key ID || timestamp || Ed25519 signature)>

The log signs with its roster Ed25519 key under the key name = origin (type 0x01). A witness
co-signs with its own roster key under the name `exchange/witness/<node>` (type 0x04): it signs
`cosignature/v1\\ntime <POSIX seconds>\\n` followed by the checkpoint text. The three prefixes
(`exchange/audit/`, `cosignature/v1`, and `exchange-v1/` of the JSON signatures) differ, so
one node key signs all three kinds of message without any of them passing for another.
Pure: no I/O, no clock (callers pass the cosignature time, and the time now).
"""

from __future__ import annotations

import datetime as dt
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from exchange.audit.note import (
    SIG_COSIGNATURE_V1,
    Note,
    NoteSignature,
    b64std_decode,
    b64std_encode,
    check_key_name,
    key_id,
    parse_note,
    sign_note,
    verify_note,
)
from exchange.crypto import SigningKey, VerifyKey
from exchange.errors import BadSignature, InvalidInput

ORIGIN_PREFIX = "exchange/audit/"
WITNESS_PREFIX = "exchange/witness/"
COSIGNATURE_HEADER = "cosignature/v1\n"
HASH_SIZE = 32
MAX_SIZE = 2**63 - 1
COSIGNATURE_SKEW = 300  # seconds a witness's clock may be ahead of, or behind, the log's
_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,18})$")


def log_origin(node: str) -> str:
    """The origin line (and log key name) of a node's audit log."""
    return ORIGIN_PREFIX + node


def witness_name(node: str) -> str:
    """The key name under which a node co-signs other nodes' checkpoints."""
    return WITNESS_PREFIX + node


C2SP_MARK = "c2sp:"  # before a C2SP witness's key name: no roster node id holds a colon


def cosigner_name(name: str) -> str:
    """A cosigner as reports and the quorum policy name it: a roster node by its id, a C2SP
    witness by its key name after C2SP_MARK (never taken for a roster node's cosignature)."""
    return name.removeprefix(WITNESS_PREFIX) if name.startswith(WITNESS_PREFIX) else C2SP_MARK + name


def node_of_origin(origin: str) -> str:
    """The node whose audit log `origin` names."""
    if not origin.startswith(ORIGIN_PREFIX) or len(origin) == len(ORIGIN_PREFIX):
        raise InvalidInput(f"{origin!r} is not the origin of an exchange audit log")
    return origin[len(ORIGIN_PREFIX) :]


@dataclass(frozen=True)
class Checkpoint:
    """The log's statement: `size` entries with RFC 9162 root hash `root`."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_key_name(self.origin)
        if not 0 <= self.size <= MAX_SIZE:
            raise InvalidInput("checkpoint size out of range")
        if len(self.root) != HASH_SIZE:
            raise InvalidInput("a checkpoint root hash is 32 bytes")
        if any(not line or "\n" in line for line in self.extensions):
            raise InvalidInput("checkpoint extension lines are non-empty single lines")

    def text(self) -> str:
        """The note text: origin, size, base64 root, then any extension lines."""
        lines = [self.origin, str(self.size), b64std_encode(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint note text (origin, size, root, extension lines)."""
        lines = text.split("\n")
        if lines[-1] != "" or len(lines) < 4:
            raise InvalidInput("a checkpoint has an origin, a size and a root hash line")
        origin, size, root, *extensions = lines[:-1]
        if not _DECIMAL.match(size):
            raise InvalidInput("a checkpoint size is a decimal without leading zeros")
        return cls(origin, int(size), b64std_decode(root), tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, key: SigningKey) -> Note:
    """The checkpoint as a note signed by the log's key, under the origin as key name."""
    text = checkpoint.text()
    return Note(text, (sign_note(text, checkpoint.origin, key),))


def open_checkpoint(
    data: str | Note, log_key: VerifyKey, origin: str | None = None, known: Sequence[VerifyKey] = ()
) -> tuple[Checkpoint, Note]:
    """Parse a checkpoint note and check the log's signature; raise InvalidInput or BadSignature.

    With `origin`, the checkpoint must be of that log. A line under one of the log's `known` keys
    (its current and former ones) must verify too (`verify_note`).
    """
    note = parse_note(data) if isinstance(data, str) else data
    checkpoint = Checkpoint.parse(note.text)
    if origin is not None and checkpoint.origin != origin:
        raise InvalidInput(f"the checkpoint is of log {checkpoint.origin!r}, not {origin!r}")
    verify_note(note, checkpoint.origin, log_key, known)
    return checkpoint, note


WitnessKeys = Mapping[str, VerifyKey | Sequence[VerifyKey]]  # witness key name -> its key, or keys


def _cosigned_message(text: str, timestamp: int) -> bytes:
    return f"{COSIGNATURE_HEADER}time {timestamp}\n{text}".encode()


def cosign(note_text: str, witness: str, key: SigningKey, timestamp: int) -> NoteSignature:
    """A timestamped Ed25519 cosignature (tlog-cosignature, type 0x04) of a checkpoint text."""
    if not 0 <= timestamp <= MAX_SIZE:
        raise InvalidInput("cosignature timestamp out of range")
    signature = key.sign(_cosigned_message(note_text, timestamp))
    kid = key_id(witness, SIG_COSIGNATURE_V1, key.verify_key.raw)
    return NoteSignature(witness, kid, struct.pack(">Q", timestamp) + signature)


def is_cosignature_by(sig: NoteSignature, witness: str, key: VerifyKey) -> bool:
    """Whether a signature line is (by name and key ID) a cosignature/v1 of this witness key."""
    return sig.name == witness and sig.key_id == key_id(witness, SIG_COSIGNATURE_V1, key.raw)


def verify_cosignature(note_text: str, sig: NoteSignature, witness: str, key: VerifyKey) -> int:
    """Return the cosignature's timestamp if `sig` is a valid cosignature by (witness, key)."""
    if not is_cosignature_by(sig, witness, key):
        raise BadSignature(f"the line is not a cosignature by {witness}")
    if len(sig.signature) != 8 + 64:
        raise BadSignature(f"the cosignature by {witness} has the wrong length")
    (timestamp,) = struct.unpack(">Q", sig.signature[:8])
    if timestamp > MAX_SIZE:
        raise BadSignature(f"the cosignature by {witness} has an invalid timestamp")
    key.verify(sig.signature[8:], _cosigned_message(note_text, timestamp))
    return int(timestamp)


def check_cosignature_time(sig: NoteSignature, signed_at: str, now: int) -> None:
    """Return None if a log may keep a witness's (verified) cosignature `sig` of a checkpoint it
    signed at `signed_at` (RFC 3339; one that does not parse sets no lower bound), at `now` (POSIX
    seconds): dated at most COSIGNATURE_SKEW after now, and at most as much before the checkpoint
    was signed. Else InvalidInput: a witness cannot have checked a checkpoint in the future, nor
    before it existed, and a line kept would make the checkpoint look fresher than it is, or
    date the log's entries earlier than they were written, to whoever reads the times."""
    (timestamp,) = struct.unpack(">Q", sig.signature[:8])
    if timestamp > now + COSIGNATURE_SKEW:
        raise InvalidInput(
            f"the cosignature by {sig.name} is dated {timestamp - now} s after this node's clock "
            f"(at most {COSIGNATURE_SKEW} s is allowed)"
        )
    try:
        signed = int(dt.datetime.fromisoformat(signed_at).timestamp())
    except ValueError:
        return
    if timestamp < signed - COSIGNATURE_SKEW:
        raise InvalidInput(
            f"the cosignature by {sig.name} is dated {signed - timestamp} s before this node signed the "
            f"checkpoint (at most {COSIGNATURE_SKEW} s is allowed)"
        )


def witness_key(witnesses: WitnessKeys, sig: NoteSignature) -> VerifyKey | None:
    """The key of the witness that `sig` names whose key ID it carries, if any: a witness may have
    several (its current one and former ones that still check what it signed, docs/protocol.md 6a.7)."""
    keys = witnesses.get(sig.name, ())
    return next(
        (k for k in ((keys,) if isinstance(keys, VerifyKey) else keys) if is_cosignature_by(sig, sig.name, k)), None
    )


def cosignatures(note: Note, witnesses: WitnessKeys) -> dict[str, int]:
    """Verify every cosignature by a known witness (key name -> its key or keys); return name ->
    timestamp.

    Lines of unknown keys are ignored; a line that matches a known key but fails raises
    BadSignature, which rejects the whole note.
    """
    found: dict[str, int] = {}
    for sig in note.signatures:
        key = witness_key(witnesses, sig)
        if key is not None:
            found[sig.name] = verify_cosignature(note.text, sig, sig.name, key)
    return found
