"""A bundle file's lines, a read at a time, each line whole; a line without end is refused
rather than held. Loads no network code: offline verification and its workers import it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from exchange.errors import InvalidInput

READ_SIZE = 1 << 20  # bytes read at a time from an export, as it streams in or from its file
MAX_LINE = 64 << 20  # bytes in one bundle line at most: far past any record, and memory stays bounded


def bounded(rest: bytes) -> None:
    """Refuse a line unfinished after MAX_LINE bytes (else held, and copied at each read, for ever)."""
    if len(rest) > MAX_LINE:
        raise InvalidInput(f"a bundle line is longer than {MAX_LINE >> 20} MiB: this is not an export bundle")


def read_lines(fh: BinaryIO) -> Iterator[list[bytes]]:
    """The lines of a file, a list of whole lines per read."""
    rest = b""
    while chunk := fh.read(READ_SIZE):
        *lines, rest = (rest + chunk).split(b"\n")
        bounded(rest)
        if lines:
            yield lines
    if rest:
        yield [rest]
