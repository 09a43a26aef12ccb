"""The pure parts of keeping a log: signed checkpoints as stored, resuming from one, and the
records of evidence and export bundles.

The keeper itself (following the audit table, signing, serving proofs) does I/O and lives in
`exchange.service.audit.keeper`; what it decides and what it writes is here. Pure: no I/O, no
clock (times are passed in).
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Any, Literal, NotRequired, TypedDict

from exchange.audit import batch
from exchange.audit.checkpoint import WitnessKeys, open_checkpoint, verify_cosignature, witness_key, witness_name
from exchange.audit.log import FORMAT
from exchange.audit.note import parse_note, parse_signature_line
from exchange.crypto import VerifyKey, b64e
from exchange.errors import BadSignature, InvalidInput
from exchange.merkle import HASH_SIZE, Frontier, leaf_hash

_URLSAFE = bytes.maketrans(b"+/", b"-_")
_ENTRY_LINE = batch.ENTRY_HEAD + b"%b" + batch.LEAF_FIELD + b'%b"}\n'
_IDX, _ENTRY, _LEAF = itemgetter(0), itemgetter(1), itemgetter(2)


class CheckpointJSON(TypedDict):
    """A checkpoint as the API shows it."""

    size: int
    root: str
    signed_at: str
    witnesses: list[str]
    note: str


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint this node signed, with the cosignature lines its witnesses returned."""

    size: int
    root: bytes
    note: str  # the signed note with this node's signature only
    at: str
    cosignatures: tuple[tuple[str, str], ...] = ()  # (witness node, signature line), as stored
    checked: tuple[str, ...] | None = None  # the witnesses whose line verified when it was read

    @property
    def witnesses(self) -> list[str]:
        """Nodes that co-signed it: those whose line verified, if checked (what is shown); the
        note (`full_note`) carries every line stored, for a verifier to check itself."""
        return list(self.checked) if self.checked is not None else [w for w, _ in self.cosignatures]

    def full_note(self) -> str:
        """The note with every cosignature line appended, as clients and auditors get it."""
        return self.note + "".join(line for _, line in self.cosignatures)

    def view(self) -> CheckpointJSON:
        """The checkpoint as the API shows it."""
        return {
            "size": self.size,
            "root": b64e(self.root),
            "signed_at": self.at,
            "witnesses": self.witnesses,
            "note": self.full_note(),
        }


def checked_cosignatures(
    note: str, lines: Iterable[tuple[str, str]], witnesses: WitnessKeys
) -> tuple[tuple[str, str], ...]:
    """The stored (witness, line) pairs of a checkpoint whose line is a valid cosignature, by that
    witness's key (`KeyRing.witnesses`: `exchange/witness/<node>` for a partner, its key name for a
    C2SP witness), of the checkpoint's text: what is shown as co-signed is checked when shown, and
    a row edited into the table, or a line that does not verify, is not shown."""
    try:
        text = parse_note(note).text
    except (InvalidInput, ValueError):
        return ()
    kept = []
    for witness, line in lines:
        name = witness if witness in witnesses else witness_name(witness)
        if name not in witnesses:
            continue
        try:
            sig = parse_signature_line(line.rstrip("\n"))
            key = witness_key(witnesses, sig)
            if sig.name == name and key is not None:
                verify_cosignature(text, sig, name, key)
                kept.append((witness, line))
        except (InvalidInput, BadSignature, ValueError):
            continue
    return tuple(kept)


def as_bytes(value: Any) -> bytes:
    """A stored value as bytes, whatever a tampered row now holds (SQLite keeps any type)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return value.encode("utf-8", "replace") if isinstance(value, str) else repr(value).encode()


def page_leaves(page: Sequence[Any], first: int) -> list[bytes]:
    """The leaf hashes of a page of (idx, leaf_hash) rows that should hold entries first, first + 1, ...:
    cut at the first one that is missing or malformed."""
    leaves = [raw if type(raw) is bytes else as_bytes(raw) for _, raw in page]
    if [row[0] for row in page] == list(range(first, first + len(page))) and set(map(len, leaves)) <= {HASH_SIZE}:
        return leaves
    for n, (idx, _) in enumerate(page):
        if idx != first + n or len(leaves[n]) != HASH_SIZE:
            return leaves[:n]
    return leaves


def mentions(body: Mapping[str, Any], bulletin: str) -> bool:
    """Is this entry about `bulletin` (as the bulletin it records, or the outbox item it refused)?"""
    return bulletin in (body.get("bulletin"), body.get("ref"))


def resumed_frontier(note: str, frontier_blob: bytes, key: VerifyKey, origin: str) -> Frontier:
    """The frontier stored with an own checkpoint, trusted only if it gives the signed root.

    Raises InvalidInput or BadSignature if the note does not verify, ValueError if the frontier
    does not give its root.
    """
    cp, _ = open_checkpoint(note, key, origin)
    raw = frontier_blob
    frontier = Frontier(cp.size, [raw[i : i + HASH_SIZE] for i in range(0, len(raw), HASH_SIZE)])
    if frontier.root() != cp.root:
        raise ValueError("the stored frontier does not give the signed root")
    return frontier


def shorter_than_signed(count: int, end: int, signed: int) -> str | None:
    """Why a table of `count` rows whose largest index is `end - 1` cannot hold the log this node
    signed a checkpoint of size `signed` (None if it may: holes are found when it is read)."""
    if count >= signed:
        return None
    which = (
        f"entries {count} to {signed - 1} were deleted"
        if end == count
        else f"at least {signed - count} of the entries it covers were deleted"
    )
    return f"the audit log holds {count} entries, but this node signed a checkpoint of {signed}: {which}"


def unsigned_entry_problem(idx: int, entry: bytes, stored_leaf_hash: bytes) -> str | None:
    """Why a stored row cannot be entry `idx` as the writer wrote it (its own index, its leaf hash)."""
    if leaf_hash(entry) != stored_leaf_hash:
        return "does not match its stored leaf hash: it was changed"
    try:
        body = json.loads(entry)
    except (ValueError, UnicodeDecodeError):
        return "is not valid JSON"
    if not isinstance(body, dict) or body.get("idx") != idx:
        return "does not carry its own index: entries were moved"
    return None


def first_unmatched(signed: Iterable[tuple[int, bytes]], root_at: Callable[[int], bytes]) -> tuple[int, int] | None:
    """The first span (lo, size) of the log whose entries no longer give the root of checkpoint
    `size`, given the (size, root) of each checkpoint in increasing size; None if all match."""
    lo = 0
    for size, root in signed:
        if size and root_at(size) != root:
            return lo, size
        lo = size
    return None


# -- evidence about one bulletin ------------------------------------------------------------------


class ProvenEntry(TypedDict):
    """An entry with its inclusion proof in the evidence's checkpoint."""

    idx: int
    entry: str
    proof: list[str]


class EvidenceJSON(TypedDict):
    """A log's entries about one bulletin, proven in one of its signed checkpoints."""

    node: str
    checkpoint: str | None
    size: NotRequired[int]  # absent when the log has no checkpoint yet
    entries: list[ProvenEntry]


# -- export bundles (see exchange.audit.log for the format) ---------------------------------------


class BundleFilter(TypedDict):
    bulletin: str


class HeaderRecord(TypedDict):
    type: Literal["header"]
    format: str
    node: str
    origin: str
    exported_at: str
    complete: bool
    size: int
    filter: BundleFilter | None
    roster: Any  # the signed roster, as the node read it


class CheckpointRecord(TypedDict):
    type: Literal["checkpoint"]
    note: str


class EntryRecord(TypedDict):
    """An entry of a full export (with its stored leaf hash) or of a partial one (with a proof)."""

    type: Literal["entry"]
    idx: int
    entry: str
    leaf_hash: NotRequired[str]
    size: NotRequired[int]
    proof: NotRequired[list[str]]


class EndRecord(TypedDict):
    type: Literal["end"]
    entries: int


BundleRecord = HeaderRecord | CheckpointRecord | EntryRecord | EndRecord


def header_record(
    node: str, origin: str, roster: Any, *, at: str, complete: bool, size: int, bulletin: str | None = None
) -> HeaderRecord:
    """The header record of an export bundle."""
    return {
        "type": "header",
        "format": FORMAT,
        "node": node,
        "origin": origin,
        "exported_at": at,
        "complete": complete,
        "size": size,
        "filter": {"bulletin": bulletin} if bulletin else None,
        "roster": roster,
    }


def evidence_records(evidence: EvidenceJSON) -> list[CheckpointRecord | EntryRecord | EndRecord]:
    """The records of a partial export after its header: the checkpoint, the proven entries, the end."""
    out: list[CheckpointRecord | EntryRecord | EndRecord] = []
    checkpoint = evidence["checkpoint"]
    if checkpoint is not None:
        out.append({"type": "checkpoint", "note": checkpoint})
    size = evidence.get("size", 0)
    for item in evidence["entries"]:
        out.append({"type": "entry", "size": size, "idx": item["idx"], "entry": item["entry"], "proof": item["proof"]})
    out.append({"type": "end", "entries": len(evidence["entries"])})
    return out


def record_line(record: BundleRecord) -> bytes:
    """One record as its line of the bundle, without the newline."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()


def entry_lines(rows: Sequence[Sequence[Any]]) -> bytes:
    """The lines of a full export's entry records for rows (index, entry, leaf hash), each with its
    newline: byte for byte `record_line(entry_record(...))`. A page whose entries are all in the
    plain form of `exchange.audit.batch` (nearly all pages) is written a page at a time, without
    a JSON encoder: its only escapes are the entries' quotes."""
    if not rows:
        return b""
    idxs, entries, leaves = list(map(_IDX, rows)), list(map(_ENTRY, rows)), list(map(_LEAF, rows))
    plain = (
        set(map(type, idxs)) == {int}
        and set(map(type, entries)) == {bytes}  # not bytes: a tampered row (SQLite keeps any type)
        and set(map(type, leaves)) == {bytes}
        and set(map(len, leaves)) == {HASH_SIZE}
        and batch.is_plain_text(b"".join(entries))
    )
    if not plain:
        return b"".join([record_line(entry_record(int(i), as_bytes(e), as_bytes(h))) + b"\n" for i, e, h in rows])
    # Base64 of each leaf hash padded with a zero byte to 33 bytes is 44 characters: the leaf's own
    # 43 (unpadded, as b64e gives them) and an "A". So the page's hashes are encoded in one call.
    encoded = binascii.b2a_base64(b"\x00".join(leaves) + b"\x00", newline=False).translate(_URLSAFE)
    fields: list[Any] = [None] * (3 * len(rows))
    fields[0::3] = idxs
    fields[1::3] = map(bytes.replace, entries, repeat(b'"'), repeat(b'\\"'))
    fields[2::3] = [encoded[at : at + 43] for at in range(0, len(encoded), 44)]
    return (_ENTRY_LINE * len(rows)) % tuple(fields)


def entry_record(idx: int, entry: bytes, leaf_hash: bytes) -> EntryRecord:
    """An entry of a full export, as stored."""
    return {
        "type": "entry",
        "idx": idx,
        "entry": entry.decode("utf-8", "replace"),
        "leaf_hash": b64e(leaf_hash),
    }
