"""A complete export's entries checked in ranges, each range on its own core, then joined in order.

A range starts at an entry whose index is a multiple of `BLOCK` and holds consecutive entry
records, checked as `BundleCheck.feed_lines` checks them: runs in the plain form a run at a time
(`exchange.audit.batch`), any other line by the line-by-line checks (`exchange.audit.records`).
Each line must be a blank line or the entry record of the next index, its entry a JSON object
carrying that index and its stored leaf hash, if any, the entry's.

Its result is the range's leaf hashes folded into subtrees: the roots of the largest aligned
perfect subtrees (so subtrees of every larger tree) that cover the range in order and that no
checkpoint size ends inside: one per block of `BLOCK` leaves where no checkpoint ends, a few
dozen where one does (a node signs a checkpoint each minute the log grew). A result is small
however long the range. `LogVerifier.take_subtrees` appends the subtrees of each range in order
and checks every signed root as it is reached, so the roots are recomputed from every entry, as
on one core.

A range with a line that fails these checks (another record, a bad entry, a stored leaf hash
that is not the entry's) yields no result. The caller then checks the whole bundle line by
line, which names the first bad entry in the same words as always. Pure: no I/O.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence

from exchange.audit import batch
from exchange.audit.records import body_error, entry_fields, parse_line, stored_leaf
from exchange.errors import ExchangeError
from exchange.merkle import Subtree, leaf_hash, leaf_hashes, perfect_root

BLOCK_HEIGHT = 12
BLOCK = 1 << BLOCK_HEIGHT  # leaves per block: a range starts at a multiple of it

_ENTRY_INDEX = re.compile(rb'\{"type":"entry","idx":(0|[1-9][0-9]{0,17}),"entry":"').match


def entry_index(line: bytes) -> int | None:
    """The index an entry record of a full export names, if the line starts as the node writes one."""
    found = _ENTRY_INDEX(line)
    return int(found[1]) if found else None


class RangeCheck:
    """Check the entry records of one range, fed in order; `subtrees()` is its result."""

    def __init__(self, first: int, cuts: Iterable[int]) -> None:
        """A range from entry `first` (a multiple of BLOCK); `cuts` are the checkpoints' sizes."""
        if first < 0 or first % BLOCK:
            raise ValueError(f"a range starts at a multiple of {BLOCK}, not at {first}")
        self.first = self.size = first  # size: the index the next entry must carry
        self.clean = True  # every line so far was taken
        self._cuts = sorted(set(cuts))
        self._leaves: list[bytes] = []  # of the block being filled, which starts at `_start`
        self._start = first
        self._subtrees: list[Subtree] = []
        self._run = batch.RUN_MIN

    @property
    def count(self) -> int:
        """Entries taken so far."""
        return self.size - self.first

    def feed(self, lines: Sequence[bytes]) -> bool:
        """Take the next lines; False, and nothing more taken ever, once one is not as above."""
        at = 0
        while self.clean and at < len(lines):
            stop = min(len(lines), at + self._run)
            entries, stored = batch.entry_run(self.size, lines, at, stop)
            digests = leaf_hashes(entries)
            taken = batch.matching_prefix(digests, stored, encoded=True)
            self._take(digests[:taken])
            at += taken
            self._run = batch.next_run(self._run, at == stop)
            if at < stop:
                self.clean = self._one(lines[at])
                at += 1
        return self.clean

    def _one(self, line: bytes) -> bool:
        """Take a line the run checks did not, by the line-by-line checks: blank, or an entry
        record whose entry is a JSON object with its index and whose stored leaf hash, if any, is its own."""
        try:
            record = parse_line(line)
            if record is None:
                return True
            if record.get("type") != "entry" or "proof" in record:
                return False
            (idx, data), stored = entry_fields(record), stored_leaf(record)
        except ExchangeError:
            return False
        leaf = leaf_hash(data)
        if idx != self.size or body_error(idx, data) is not None or stored not in (None, leaf):
            return False
        self._take([leaf])
        return True

    def _take(self, digests: Sequence[bytes]) -> None:
        self.size += len(digests)
        self._leaves.extend(digests)
        while len(self._leaves) >= BLOCK:
            self._fold(self._leaves[:BLOCK])
            del self._leaves[:BLOCK]

    def _fold(self, leaves: list[bytes]) -> None:
        """Keep the subtrees of the next leaves, from `_start` on."""
        self._subtrees += cover(self._start, leaves, self._cuts)
        self._start += len(leaves)

    def subtrees(self) -> list[Subtree]:
        """The range's subtrees, its last block's included, whole or not."""
        return [*self._subtrees, *cover(self._start, self._leaves, self._cuts)]


def cover(start: int, leaves: Sequence[bytes], cuts: Sequence[int]) -> list[Subtree]:
    """The leaves from index `start` on as the largest aligned perfect subtrees, in order, that no
    size in `cuts` (sorted) ends strictly inside."""
    out: list[Subtree] = []
    done = 0
    while done < len(leaves):
        at = start + done
        height = (len(leaves) - done).bit_length() - 1
        if at:
            height = min(height, (at & -at).bit_length() - 1)
        out += _split(at, leaves[done : done + (1 << height)], height, cuts)
        done += 1 << height
    return out


def _split(at: int, leaves: Sequence[bytes], height: int, cuts: Sequence[int]) -> list[Subtree]:
    """An aligned perfect subtree as itself, or halved until no cut ends inside a part."""
    later = bisect_right(cuts, at)
    if height == 0 or later == len(cuts) or cuts[later] >= at + len(leaves):
        return [(perfect_root(leaves), height)]
    half = 1 << (height - 1)
    return _split(at, leaves[:half], height - 1, cuts) + _split(at + half, leaves[half:], height - 1, cuts)
