"""Verify a node's audit log, or an export bundle of it, against its signed checkpoints.

The verifier recomputes the RFC 9162 tree from the entries one by one (O(log n) memory), checks
each entry's index and stored leaf hash, each checkpoint's log signature and cosignatures, and
that the recomputed root equals every signed root. A partial bundle (the entries of one
bulletin) instead carries an inclusion proof per entry. Checks return None or raise
`AuditTampered`; `BadEntry` names the first bad entry. Pure: no I/O, no clock.

An export bundle is JSON Lines, in this order:

    {"type": "header", "format": "exchange-audit-bundle/v1", "node", "origin", "exported_at",
     "complete", "size", "filter", "roster": <the signed roster>}
    {"type": "checkpoint", "note": "<signed note, with cosignatures>"}        ascending size
    {"type": "consistency", "from": m, "to": n, "proof": [<b64url>, ...]}    optional
    {"type": "entry", "idx": i, "entry": "<canonical JSON>", "leaf_hash": "<b64url>"}
    {"type": "entry", "idx": i, "entry": "...", "size": n, "proof": [...]}  (partial bundles)
    {"type": "end", "entries": <count>}
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

from pydantic import ValidationError

from exchange.audit import batch
from exchange.audit.checkpoint import (
    cosignatures,
    cosigner_name,
    log_origin,
    open_checkpoint,
)
from exchange.audit.keyring import KeyRing as KeyRing  # its home is keyring; imported from here too
from exchange.audit.records import body_error, entry_fields, parse_line, record_field, stored_leaf
from exchange.audit.witness_sets import QuorumCount
from exchange.crypto import VerifyKey, b64d
from exchange.errors import AuditTampered, BadEntry, BadSignature, ConfigError, InvalidInput
from exchange.merkle import (
    EMPTY_ROOT,
    Frontier,
    ProofError,
    Subtree,
    leaf_hash,
    leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from exchange.model import SignedRoster
from exchange.protocol.roster import Federation

FORMAT = "exchange-audit-bundle/v1"
_CHECKPOINT = b'{"type":"checkpoint"'  # how the node writes a checkpoint record's line
Opener = Callable[
    [Callable[[str], "CheckpointInfo | AuditTampered"], Iterable[str]], Iterable["CheckpointInfo | AuditTampered"]
]


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint whose log signature verified, with the witnesses whose cosignatures verified."""

    size: int
    root: bytes
    witnesses: tuple[str, ...]
    note: str


@dataclass(frozen=True)
class LogReport:
    """What a verification established."""

    node: str
    complete: bool
    entries: int
    root: bytes
    checkpoints: tuple[CheckpointInfo, ...]
    tail: int = 0  # entries after the latest checkpoint, covered by no signature yet
    warnings: tuple[str, ...] = ()
    quorum: QuorumCount | None = None  # the latest checkpoint's cosigners by the quorum policy

    @property
    def latest(self) -> CheckpointInfo | None:
        """The largest checkpoint checked."""
        return self.checkpoints[-1] if self.checkpoints else None

    @property
    def latest_witnessed(self) -> CheckpointInfo | None:
        """The largest checkpoint with at least one valid cosignature."""
        return next((c for c in reversed(self.checkpoints) if c.witnesses), None)


class LogVerifier:
    """Check one node's log: first its checkpoints, then its entries in index order."""

    def __init__(self, node: str, keys: KeyRing) -> None:
        self.node = node
        self.origin = log_origin(node)
        keys.log_keys(node)  # AuditTampered for a node the roster never listed
        self._ring = keys
        self._witnesses = keys.witnesses(node)
        self._checkpoints: list[CheckpointInfo] = []
        self._consistent: set[tuple[int, int]] = set()
        self._frontier = Frontier()
        self._next_checkpoint = 0
        self._mismatch: BadEntry | None = None
        self._mode: str | None = None  # "complete" (every entry) or "proven" (entries with proofs)
        self._proven = 0

    @property
    def keys(self) -> KeyRing:
        """The keys it checks with (the quorum policy takes the roster's nodes from them)."""
        return self._ring

    @property
    def checkpoints(self) -> tuple[CheckpointInfo, ...]:
        """The checkpoints checked so far, by size."""
        return tuple(self._checkpoints)

    @property
    def size(self) -> int:
        """Entries of a complete log taken so far: the index the next one must carry."""
        return self._frontier.size

    @property
    def checked(self) -> int:
        """Entries checked so far."""
        return self._frontier.size if self._mode == "complete" else self._proven

    def checkpoint(self, note_text: str) -> CheckpointInfo:
        """Verify one checkpoint note (log signature and any cosignatures) and keep it."""
        if self._mode is not None:
            raise InvalidInput("checkpoints must come before the entries")
        return self.keep(self.opened(note_text))

    @property
    def before_entries(self) -> bool:
        """No entry taken yet: checkpoints may still come."""
        return self._mode is None

    def opened(self, note_text: str) -> CheckpointInfo | AuditTampered:
        """One checkpoint note verified (log signature and any cosignatures), or what is wrong with
        it. Changes nothing, so notes may be opened on several threads (Ed25519 releases the GIL)."""
        try:
            signer = self._ring.log_key_for(self.node, note_text)
            cp, note = open_checkpoint(note_text, signer, self.origin, self._ring.log_keys(self.node))
        except BadSignature as exc:
            return AuditTampered(f"a checkpoint is not validly signed by {self.node}: {exc.detail}")
        except InvalidInput as exc:
            return AuditTampered(f"a checkpoint of {self.node} is malformed: {exc.detail}")
        try:
            cosigned = cosignatures(note, self._witnesses)
        except BadSignature as exc:
            return AuditTampered(f"checkpoint {cp.size}: a cosignature does not verify: {exc.detail}")
        return CheckpointInfo(cp.size, cp.root, tuple(sorted(cosigner_name(n) for n in cosigned)), note.render())

    def keep(self, info: CheckpointInfo | AuditTampered) -> CheckpointInfo:
        """Keep the next checkpoint `opened` gave, in order (or raise what is wrong with it)."""
        if isinstance(info, AuditTampered):
            raise info
        if self._mode is not None:
            raise InvalidInput("checkpoints must come before the entries")
        if self._checkpoints:
            last = self._checkpoints[-1]
            if info.size == last.size:
                if info.root != last.root:
                    raise AuditTampered(
                        f"{self.node} signed two checkpoints of size {info.size} with different roots: a split view"
                    )
                info = replace(last, witnesses=tuple(sorted({*last.witnesses, *info.witnesses})))
                self._checkpoints[-1] = info
                return info
            if info.size < last.size:
                raise InvalidInput("checkpoints must come in increasing size")
        self._checkpoints.append(info)
        return info

    def _at(self, size: int) -> CheckpointInfo:
        for cp in self._checkpoints:
            if cp.size == size:
                return cp
        raise AuditTampered(f"no signed checkpoint of size {size}")

    def consistency(self, old: int, new: int, proof: Sequence[bytes]) -> None:
        """Check that checkpoint `new` extends checkpoint `old`."""
        a, b = self._at(old), self._at(new)
        try:
            verify_consistency(old, new, proof, a.root, b.root)
        except ProofError as exc:
            raise AuditTampered(f"checkpoints {old} and {new} of {self.node} are not consistent: {exc}") from exc
        self._consistent.add((old, new))

    def _fail(self, error: BadEntry) -> NoReturn:
        """Raise the earlier of `error` and a root mismatch seen before it."""
        if self._mismatch is not None and self._mismatch.index <= error.index:
            raise self._mismatch
        raise error

    def _check_body(self, idx: int, entry: bytes) -> None:
        if (error := body_error(idx, entry)) is not None:
            self._fail(error)

    def entry(self, idx: int, entry: bytes, stored_leaf_hash: bytes | None = None) -> None:
        """Append the next entry of a complete log; it must be entry number `idx`."""
        if self._mode == "proven":
            raise InvalidInput("a bundle holds either every entry or entries with proofs, not both")
        self._mode = "complete"
        expected = self._frontier.size
        if idx > expected:
            gap = f"the log goes from entry {expected - 1} to entry {idx}" if expected else f"the log starts at {idx}"
            self._fail(BadEntry(expected, f"is missing: {gap}"))
        if idx < expected:
            self._fail(BadEntry(idx, "appears twice or out of order"))
        self._check_body(idx, entry)
        leaf = leaf_hash(entry)
        if stored_leaf_hash is not None and stored_leaf_hash != leaf:
            self._fail(BadEntry(idx, "its content does not match its stored leaf hash: it was changed"))
        self._frontier.append(leaf)
        self._settle()

    def take_run(
        self,
        entries: Sequence[bytes],
        stored_leaf_hashes: Sequence[bytes],
        *,
        encoded: bool = False,
        plain: bool = False,
    ) -> int:
        """Append the longest leading run of `entries` (the next entries of a complete log, in
        order) that passes every check of `entry` in the plain form of `exchange.audit.batch`,
        hashed a run at a time; return its length. Each stored leaf hash is 32 bytes, or if
        `encoded` its base64url text. With `plain`, the caller found the entries in the plain
        form, carrying their own indices from `size` on (`batch.entry_run`). The caller gives the
        next entry to `entry`, which names what is wrong with it, if anything."""
        if self._mode == "proven":
            return 0
        count = len(entries) if plain else batch.plain_prefix(self._frontier.size, entries)
        digests = leaf_hashes(entries[:count])
        count = batch.matching_prefix(digests, stored_leaf_hashes[:count], encoded=encoded)
        if count:
            self._mode = "complete"
            self._grow(digests[:count])
        return count

    def take_subtrees(self, subtrees: Sequence[Subtree]) -> None:
        """Append the next entries' leaf hashes checked elsewhere (`exchange.audit.ranges`) as the
        roots of aligned perfect subtrees, in order; no checkpoint may end inside one."""
        if self._mode == "proven":
            raise InvalidInput("a bundle holds either every entry or entries with proofs, not both")
        self._mode = "complete"
        for root, height in subtrees:
            upcoming = self._upcoming()
            if upcoming is not None and upcoming < self._frontier.size + (1 << height):
                raise InvalidInput("a checkpoint ends inside a subtree given whole")
            self._frontier.push_subtree(root, height)
            self._settle()

    def _upcoming(self) -> int | None:
        """The size of the next checkpoint the log has not reached, if any (passing those of size 0
        at the start: `finish` checks those)."""
        cps = self._checkpoints
        while self._next_checkpoint < len(cps) and cps[self._next_checkpoint].size <= self._frontier.size:
            self._next_checkpoint += 1
        return cps[self._next_checkpoint].size if self._next_checkpoint < len(cps) else None

    def _grow(self, leaves: Sequence[bytes]) -> None:
        """Append leaf hashes in runs that end at each checkpoint's size, checking its root there."""
        done = 0
        while done < len(leaves):
            upcoming = self._upcoming()
            stop = len(leaves) if upcoming is None else min(len(leaves), done + upcoming - self._frontier.size)
            self._frontier.extend(leaves[done:stop])
            done = stop
            self._settle()

    def _settle(self) -> None:
        """Pass the checkpoints the log has reached; remember the first whose root it does not give."""
        cps = self._checkpoints
        while self._next_checkpoint < len(cps) and cps[self._next_checkpoint].size <= self._frontier.size:
            cp = cps[self._next_checkpoint]
            if cp.size == self._frontier.size and self._frontier.root() != cp.root and self._mismatch is None:
                lo = cps[self._next_checkpoint - 1].size if self._next_checkpoint else 0
                self._mismatch = BadEntry(
                    lo,
                    f"entries {lo} to {cp.size - 1} do not hash to the root signed in checkpoint {cp.size}: "
                    f"one of them was changed, removed or inserted (the first bad entry is at or after {lo})",
                )
            self._next_checkpoint += 1

    def proven_entry(self, idx: int, entry: bytes, size: int, proof: Sequence[bytes]) -> None:
        """Check one entry of a partial log by its inclusion proof in checkpoint `size`."""
        if self._mode == "complete":
            raise InvalidInput("a bundle holds either every entry or entries with proofs, not both")
        self._mode = "proven"
        cp = self._at(size)
        self._check_body(idx, entry)
        try:
            verify_inclusion(leaf_hash(entry), idx, size, proof, cp.root)
        except ProofError as exc:
            raise BadEntry(idx, f"is not in the log that checkpoint {size} signs: {exc}") from exc
        self._proven += 1

    def finish(self, *, complete: bool, quorum: int = 0) -> LogReport:
        """Close the check: no signed entry may be missing, and the latest checkpoint needs `quorum` witnesses."""
        cps = self._checkpoints
        if complete:
            if self._mode == "proven":
                raise InvalidInput("a complete bundle cannot hold entries with proofs")
            count = self._frontier.size
            if cps and cps[-1].size > count:
                self._fail(
                    BadEntry(
                        count,
                        f"is missing: checkpoint {cps[-1].size} covers {cps[-1].size} entries, the log holds "
                        f"{count}: entries {count} to {cps[-1].size - 1} were deleted",
                    )
                )
            if self._mismatch is not None:
                raise self._mismatch
            for cp in cps:
                if cp.size == 0 and cp.root != EMPTY_ROOT:
                    raise AuditTampered("a checkpoint of size 0 signs a root other than the empty tree's")
            root, tail = self._frontier.root(), count - (cps[-1].size if cps else 0)
        else:
            if self._mode == "complete":  # its roots were never compared: `_settle` only remembers
                raise AuditTampered("a partial log cannot hold entries without inclusion proofs")
            for a, b in itertools.pairwise(cps):
                if (a.size, b.size) not in self._consistent:
                    raise AuditTampered(f"no consistency proof between checkpoints {a.size} and {b.size}")
            count, root, tail = self._proven, cps[-1].root if cps else EMPTY_ROOT, 0
        latest = cps[-1] if cps else None
        if quorum and (latest is None or len(latest.witnesses) < quorum):
            have = len(latest.witnesses) if latest else 0
            raise AuditTampered(
                f"the latest checkpoint has {have} valid cosignature(s), fewer than the quorum of {quorum}"
            )
        return LogReport(self.node, complete, count, root, tuple(cps), tail)


def _hashes(record: Mapping[str, Any], name: str) -> list[bytes]:
    items = record_field(record, name, list)
    if not all(isinstance(i, str) for i in items):
        raise InvalidInput(f"{name!r} must be a list of base64url hashes")
    return [b64d(i) for i in items]


@dataclass
class BundleCheck:
    """Check an export bundle record by record, as it streams in, then `finish()`.

    `keys` come from a trusted roster (the auditor's own). Without it the bundle's roster is
    used: checked against `authority` if given, else taken on trust (and said so in warnings).
    """

    keys: KeyRing | None = None
    authority: VerifyKey | None = None
    header: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    opener: Opener = map  # how checkpoint notes are opened: in turn, or a thread pool's map
    _verifier: LogVerifier | None = None
    _end: int | None = None
    _run: int = batch.RUN_MIN

    @property
    def size(self) -> int | None:
        """The size the header announces (None before the header)."""
        return int(self.header["size"]) if self.header else None

    @property
    def verifier(self) -> LogVerifier:
        """The log verifier the header set up."""
        if self._verifier is None:
            raise InvalidInput("the bundle does not start with a header record")
        return self._verifier

    def feed_lines(self, lines: Sequence[bytes]) -> None:
        """Feed lines of the JSON Lines file in order, as `feed_line` does one by one: the same
        checks, but runs of entry records as the node writes them are checked a run at a time."""
        at = 0
        while at < len(lines):
            verifier = self._verifier
            if verifier is not None and self._end is None and verifier.before_entries:
                at += self._checkpoints(verifier, lines, at)
                if at == len(lines):
                    return
            if verifier is not None and self._end is None and self.header is not None and self.header["complete"]:
                stop = min(len(lines), at + self._run)
                entries, stored = batch.entry_run(verifier.size, lines, at, stop)
                taken = verifier.take_run(entries, stored, encoded=True, plain=True)
                at += taken
                self._run = batch.next_run(self._run, at == stop)
                if at == len(lines):
                    return
            self.feed_line(lines[at])
            at += 1

    def _checkpoints(self, verifier: LogVerifier, lines: Sequence[bytes], at: int) -> int:
        """Take the checkpoint records from `lines[at]` on, their notes opened through `opener`
        (several at once if it is a pool's map); return how many lines were taken. The first line
        that is not one is left to `feed_line`, which names what is wrong with it."""
        notes: list[str] = []
        for line in itertools.islice(lines, at, None):
            if not line.startswith(_CHECKPOINT):
                break
            try:
                record = parse_line(line)
            except InvalidInput:
                break
            if record is None or record.get("type") != "checkpoint" or not isinstance(record.get("note"), str):
                break
            notes.append(record["note"])
        for info in self.opener(verifier.opened, notes):
            verifier.keep(info)
        return len(notes)

    def feed_line(self, line: bytes | str) -> None:
        """Feed one line of the JSON Lines file; blank lines are skipped."""
        if (record := parse_line(line)) is not None:
            self.feed(record)

    def feed(self, record: Mapping[str, Any]) -> None:
        """Check one parsed record of the bundle."""
        kind = record.get("type")
        if self.header is None:
            if kind != "header":
                raise InvalidInput("the bundle does not start with a header record")
            self._read_header(record)
            return
        if self._end is not None:
            raise InvalidInput("the bundle has records after its end record")
        verifier = self.verifier
        if kind == "entry":
            idx, data = entry_fields(record)
            if not self.header["complete"] and ("proof" not in record or "leaf_hash" in record):
                # a full export relabelled partial would otherwise skip every root check
                raise AuditTampered(f"entry {idx} of a partial bundle is not one with an inclusion proof")
            if "proof" in record:
                verifier.proven_entry(idx, data, record_field(record, "size", int), _hashes(record, "proof"))
            else:
                verifier.entry(idx, data, stored_leaf(record))
        elif kind == "checkpoint":
            verifier.checkpoint(record_field(record, "note", str))
        elif kind == "consistency":
            verifier.consistency(
                record_field(record, "from", int), record_field(record, "to", int), _hashes(record, "proof")
            )
        elif kind == "end":
            self._end = record_field(record, "entries", int)
        else:
            raise InvalidInput(f"unknown bundle record type {kind!r}")

    def _read_header(self, record: Mapping[str, Any]) -> None:
        if record.get("format") != FORMAT:
            raise InvalidInput(f"not an {FORMAT} file")
        node = record_field(record, "node", str)
        record_field(record, "size", int)
        if not isinstance(record.get("complete"), bool):
            raise InvalidInput("the header needs 'complete' true or false")
        keys = self.keys
        if keys is None:
            try:
                signed = SignedRoster.model_validate(record.get("roster"))
            except ValidationError as exc:
                raise InvalidInput("the bundle carries no valid roster; pass the node file instead") from exc
            if self.authority is not None:
                try:
                    keys = KeyRing.from_federation(Federation.verify(signed, self.authority))
                except (ConfigError, BadSignature) as exc:
                    raise AuditTampered(f"the bundle's roster is not signed by the given authority: {exc}") from exc
            else:
                keys = KeyRing.from_roster(signed.roster)
                self.warnings.append(
                    "keys were taken from the bundle's own roster, unchecked: pass --authority or --node to anchor them"
                )
        self.header = dict(record)
        self._verifier = LogVerifier(node, keys)

    def finish(self, *, quorum: int = 0) -> LogReport:
        """Close the check: the bundle must be whole, and the log must verify."""
        if self.header is None:
            raise InvalidInput("the bundle is empty")
        if self._end is None:
            raise InvalidInput("the bundle is truncated: it has no end record")
        report = self.verifier.finish(complete=bool(self.header["complete"]), quorum=quorum)
        if report.entries != self._end:
            raise InvalidInput(f"the end record counts {self._end} entries, the bundle holds {report.entries}")
        return replace(report, warnings=tuple(self.warnings))
