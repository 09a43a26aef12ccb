"""One range of a bundle file's entry records checked (`exchange.audit.ranges`): the task of each
process `exchange.cli.verify_ranges` starts. It imports only what that needs, so that a worker
is ready in a fraction of the time its range takes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from exchange.audit.ranges import RangeCheck
from exchange.cli.lines import READ_SIZE
from exchange.merkle import Subtree

RangeResult = tuple[int, list[Subtree]] | None  # entries taken and their subtrees, or None if not clean
LONGEST = READ_SIZE  # bytes in a line a range takes: an entry record is far shorter; longer ones go to one core

_given_up: Any = None  # in a worker, the event set when the check was given up (`started`)


def started(given_up: Any) -> None:
    """A worker's start: keep the event that tells it to stop early."""
    global _given_up
    _given_up = given_up


@dataclass(frozen=True)
class Range:
    """Entry records of the file from byte `start` to byte `stop`, the first for entry `first`."""

    start: int
    stop: int
    first: int


def check_range(
    path: str, span: Range, cuts: Sequence[int], progress: Callable[[int], None] | None = None
) -> RangeResult:
    """Check one range of the file (a worker's task): the entries taken and their subtrees, or None."""
    check = RangeCheck(span.first, cuts)
    with open(path, "rb") as fh:
        fh.seek(span.start)
        left, rest = span.stop - span.start, b""
        while left > 0:
            chunk = fh.read(min(READ_SIZE, left))
            if not chunk or len(rest) > LONGEST or (_given_up is not None and _given_up.is_set()):
                return None
            left -= len(chunk)
            *lines, rest = (rest + chunk).split(b"\n")
            # A line longer than LONGEST is left to one core, whose limit on lines (MAX_LINE) then
            # applies as it always does: a range never takes a line that one core would refuse.
            if max(map(len, lines), default=0) > LONGEST or not check.feed(lines):
                return None
            if progress is not None:
                progress(check.count)
    return None if rest else (check.count, check.subtrees())
