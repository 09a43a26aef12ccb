"""What the audit side of the application layer gives its adapters: typed views, and the one
filter of audit entries that the API and the console share.

Each view that the API sends has a `to_json()` giving the exact document it sends (key order
included, so the bytes stay the same). Entries themselves stay the parsed canonical JSON of
the log: they are whatever the log holds, tampered or not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from exchange.audit.keeper import StoredCheckpoint
from exchange.crypto import b64e

PEER_KEYS = ("peer", "from", "to", "author", "owner", "node")

Entry = dict[str, Any]  # one audit entry as the log holds it, parsed


@dataclass(frozen=True)
class EntryFilter:
    """Which audit entries to list. The API and the console validate their own input first.

    `event` is a kind, or a prefix ending in `*`; `peer` matches any node an entry names;
    `since` is inclusive and `until` exclusive, compared with the entry's RFC 3339 `at`.
    """

    event: str | None = None
    channel: str | None = None
    peer: str | None = None
    bulletin: str | None = None
    since: str | None = None
    until: str | None = None

    def __call__(self, body: Mapping[str, Any]) -> bool:
        """Does this entry match?"""
        event, kind = self.event, str(body.get("event", ""))
        if event is not None and not (kind == event or (event.endswith("*") and kind.startswith(event[:-1]))):
            return False
        if self.channel is not None and body.get("channel") != self.channel:
            return False
        if self.bulletin is not None and self.bulletin not in (body.get("bulletin"), body.get("ref")):
            return False
        if self.peer is not None:
            change = body.get("change")
            named = {v for k in PEER_KEYS if not isinstance(v := body.get(k), dict)} | set(body.get("recipients") or [])
            if isinstance(to := body.get("to"), dict):  # bulletin.sent_to, bulletin.delivered_to
                named |= set(to)
            if isinstance(change, dict):
                named.add(change.get("node"))
            if self.peer not in named:
                return False
        at = str(body.get("at", ""))
        return not ((self.since is not None and at < self.since) or (self.until is not None and at >= self.until))

    @property
    def needle(self) -> bytes | None:
        """The most selective value as bytes, to test the stored canonical JSON before parsing it."""
        value = self.bulletin or self.peer or self.channel
        if value:
            return f'"{value}"'.encode()
        if self.event:  # a kind, or a prefix of kinds ("bulletin.delivered*"): the entry's own `"event":"`
            kind = self.event.removesuffix("*")
            return f'"event":"{kind}'.encode() + (b"" if self.event.endswith("*") else b'"')
        return None


@dataclass(frozen=True)
class LogPage:
    """Matching entries, oldest first, and the cursor to go on from (None at the end)."""

    entries: list[Entry]
    next: int | None
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"entries": self.entries, "next": self.next, "size": self.size}


@dataclass(frozen=True)
class RecentEntries:
    """Matching entries below an index, newest first, and where to go on from (None at the start)."""

    entries: list[Entry]
    go_on: int | None


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint signed on demand, and what each witness asked answered (None: none was asked)."""

    checkpoint: StoredCheckpoint
    witnessing: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = dict(self.checkpoint.view())
        if self.witnessing is not None:
            body["witnessing"] = self.witnessing
        return body


@dataclass(frozen=True)
class InclusionProof:
    """An entry with its inclusion proof in a checkpoint this node signed."""

    index: int
    size: int
    entry: bytes
    leaf_hash: bytes
    proof: list[bytes]
    checkpoint: StoredCheckpoint

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "size": self.size,
            "entry": self.entry.decode("utf-8", "replace"),
            "leaf_hash": b64e(self.leaf_hash),
            "proof": [b64e(p) for p in self.proof],
            "checkpoint": self.checkpoint.full_note(),
        }


@dataclass(frozen=True)
class ConsistencyProof:
    """A consistency proof from a size to a checkpoint this node signed."""

    old: int
    new: int
    proof: list[bytes]
    checkpoint: StoredCheckpoint

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.old,
            "to": self.new,
            "proof": [b64e(p) for p in self.proof],
            "checkpoint": self.checkpoint.full_note(),
        }


@dataclass(frozen=True)
class LatestForWitness:
    """Our latest checkpoint (None if none yet) and a consistency proof from what a witness saw."""

    checkpoint: StoredCheckpoint | None
    proof: list[bytes]

    def to_json(self) -> dict[str, Any]:
        note = None if self.checkpoint is None else self.checkpoint.full_note()
        return {"checkpoint": note, "proof": [b64e(p) for p in self.proof]}


@dataclass(frozen=True)
class TraceHeader:
    """The cleartext header of a traced bulletin's envelope (no content)."""

    channel: str
    author: str
    seq: int
    created: str
    tlp: str
    recipients: list[str]


@dataclass(frozen=True)
class CollectedTrace:
    """Every node's evidence about one bulletin, as they answered: callers verify it."""

    bulletin: str
    header: TraceHeader
    evidence: list[Mapping[str, Any]]

    def to_json(self) -> dict[str, Any]:
        h = self.header
        return {
            "bulletin": self.bulletin,
            "header": {
                "channel": h.channel,
                "author": h.author,
                "seq": h.seq,
                "created": h.created,
                "tlp": h.tlp,
                "recipients": h.recipients,
            },
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class ProofStatus:
    """Is an entry proven to be in a checkpoint this node signed? Checked as an offline verifier would."""

    state: Literal["pending", "failed", "proven"]
    text: str
    checkpoint: StoredCheckpoint | None = None
    witnesses: list[str] | None = None  # who co-signed that checkpoint, when proven
    proof: list[str] | None = None  # the inclusion proof, in hex, when proven


@dataclass(frozen=True)
class EntryWithProof:
    """One entry of this node's log, as stored and parsed, and the state of its inclusion proof."""

    idx: int
    raw: bytes
    body: Any
    proof: ProofStatus


@dataclass(frozen=True)
class CheckpointCheck:
    """The latest checkpoint verified with the roster's keys, as an auditor would."""

    ok: bool
    witnesses: list[str]
    error: str | None = None


@dataclass(frozen=True)
class PartnerCosigned:
    """How far a partner has co-signed our log (0: not yet)."""

    node: str
    size: int


@dataclass(frozen=True)
class HeldReceipt:
    """A signed receipt this node holds for a bulletin."""

    node: str
    status: str
    at: str
