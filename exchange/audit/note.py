"""C2SP signed notes (c2sp.org/signed-note): a text, a blank line, then signature lines.

    <text, ending in a newline>
    <blank line>
    — <key name> base64(key ID (4 bytes) || signature)

Pure: parsing, rendering, Ed25519 note signatures. Base64 here is standard base64 with
padding, as the C2SP specifications require (the rest of exchange uses unpadded base64url).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from exchange.crypto import SigningKey, VerifyKey
from exchange.errors import BadSignature, InvalidInput

SIG_ED25519 = 0x01  # signature type of plain Ed25519 note signatures
SIG_COSIGNATURE_V1 = 0x04  # signature type of timestamped Ed25519 witness cosignatures
EM_DASH = "\u2014"
# The log's own line, up to 64 designated witnesses and up to 16 C2SP witnesses
# (exchange.audit.witness_sets: MAX_WITNESSES, MAX_C2SP_WITNESSES): every note a node keeps parses.
MAX_SIGNATURES = 1 + 64 + 16
MAX_NOTE_CHARS = 64 * 1024
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_BAD_NAME = re.compile(r"[\s+]")


def b64std_encode(data: bytes) -> str:
    """Standard, padded base64, as the C2SP formats use."""
    return base64.b64encode(data).decode("ascii")


def b64std_decode(text: str) -> bytes:
    """Strict standard base64: only canonical, padded encodings are accepted."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise InvalidInput("malformed base64 in a signed note") from exc
    if b64std_encode(raw) != text:
        raise InvalidInput("non-canonical base64 in a signed note")
    return raw


def check_key_name(name: str) -> None:
    """Key names are non-empty and hold no Unicode space and no plus sign."""
    if not name or _BAD_NAME.search(name):
        raise InvalidInput(f"invalid signed-note key name {name!r}")


def key_id(name: str, sig_type: int, public: bytes) -> bytes:
    """SHA-256(key name || 0x0A || signature type || public key)[:4], as signed-note recommends."""
    check_key_name(name)
    return hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public).digest()[:4]


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: the signer's key name, its 4-byte key ID, and the signature bytes."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        """The signature line, with its final newline."""
        return f"{EM_DASH} {self.name} {b64std_encode(self.key_id + self.signature)}\n"


@dataclass(frozen=True)
class Note:
    """A signed note: `text` includes its final newline but not the blank separator line."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def render(self) -> str:
        """The whole note: text, blank line, signature lines."""
        return self.text + "\n" + "".join(s.line() for s in self.signatures)

    def with_signatures(self, *extra: NoteSignature) -> Note:
        """The same note with more signature lines; a line already present is not repeated."""
        sigs = list(self.signatures)
        for sig in extra:
            if sig not in sigs:
                sigs.append(sig)
        return Note(self.text, tuple(sigs))

    def by(self, name: str) -> list[NoteSignature]:
        """The signature lines under key name `name`."""
        return [s for s in self.signatures if s.name == name]


def parse_signature_line(line: str) -> NoteSignature:
    """Parse `— <name> <base64>` (without its newline)."""
    if not line.startswith(EM_DASH + " "):
        raise InvalidInput("a signature line must start with an em dash and a space")
    parts = line[2:].split(" ")
    if len(parts) != 2:
        raise InvalidInput("a signature line is `— <key name> <base64 signature>`")
    name, encoded = parts
    check_key_name(name)
    raw = b64std_decode(encoded)
    if len(raw) < 5:
        raise InvalidInput("a note signature is a 4-byte key ID and at least one byte")
    return NoteSignature(name, raw[:4], raw[4:])


def parse_note(data: str | bytes) -> Note:
    """Parse a signed note; the text and signatures are returned unverified."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput("a signed note must be UTF-8") from exc
    if len(data) > MAX_NOTE_CHARS:
        raise InvalidInput("the signed note is too long")
    if _CONTROL.search(data):
        raise InvalidInput("a signed note may hold no control character but newline")
    if not data.endswith("\n"):
        raise InvalidInput("a signed note ends with a newline")
    split = data.rfind("\n\n")
    if split < 0:
        raise InvalidInput("a signed note needs a blank line before its signatures")
    text, block = data[: split + 1], data[split + 2 :]
    if text == "\n" or text.startswith("\n"):
        raise InvalidInput("the text of a signed note starts with a non-empty line")
    lines = block.split("\n")[:-1]
    if not lines:
        raise InvalidInput("a signed note has at least one signature")
    if len(lines) > MAX_SIGNATURES:
        raise InvalidInput(f"a signed note has at most {MAX_SIGNATURES} signatures here")
    return Note(text, tuple(parse_signature_line(line) for line in lines))


def sign_note(text: str, name: str, key: SigningKey) -> NoteSignature:
    """An Ed25519 note signature (type 0x01) over the note text."""
    return NoteSignature(name, key_id(name, SIG_ED25519, key.verify_key.raw), key.sign(text.encode("utf-8")))


def verify_note(note: Note, name: str, key: VerifyKey, known: Sequence[VerifyKey] = ()) -> None:
    """Return None if `note` carries a valid Ed25519 signature by (name, key); else BadSignature.

    Lines with the name but an unknown key ID belong to other keys and are ignored, as the
    specification says; a line that matches `key` or one of the `known` keys of the same name (a
    signer's former keys) and fails rejects the note, whichever key the note was opened with.
    """
    kid = key_id(name, SIG_ED25519, key.raw)
    if not any(s.key_id == kid for s in note.by(name)):
        raise BadSignature(f"the note carries no signature by {name}")
    keys = {key_id(name, SIG_ED25519, k.raw): k for k in known} | {kid: key}
    for sig in note.by(name):
        if (match := keys.get(sig.key_id)) is not None:
            match.verify(sig.signature, note.text.encode("utf-8"))
