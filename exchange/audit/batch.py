"""Runs of consecutive audit entries, checked and encoded a run at a time instead of an entry at a time.

Verifying a log of a million entries is fast only if each entry costs little more than its two
SHA-256 hashes. The general path (`LogVerifier.entry`, `BundleCheck.feed_line`) parses every
bundle line and every entry with `json.loads`. Here a run of entries in their plain form is
checked with a few operations over the whole run instead. The plain form is what the node writes
for nearly every event: ASCII canonical JSON with no escape, no control character and no nesting
deeper than an object of scalars, holding its own index once. The checks are a regular grammar
for such a flat JSON object and a search for its one `"idx":` key.

What this module accepts, the general path accepts too; anything else is left to the general
path, which names the problem. tests/test_audit_batch.py checks that both paths agree on
generated and tampered logs. Pure: no I/O.
"""

from __future__ import annotations

import binascii
import operator
import re
from collections.abc import Sequence
from itertools import repeat

# Bytes that the plain form never holds: control characters (JSON strings may not hold them raw)
# and the backslash (so a string is its bytes between two quotes, and `"` always delimits one).
_NOT_PLAIN = bytes(range(0x20)) + b"\\"

# A flat JSON object without escapes or whitespace: string, number, true, false or null values,
# arrays of those, and objects of those whose keys are not "idx" (the `to` of bulletin.sent_to and
# bulletin.delivered_to). Possessive quantifiers and atomic groups keep matching linear in the
# input. Integer parts are capped at 30 digits, below Python's limit on converting long
# integers, which json.loads would refuse.
_STR = rb'"[^"]*+"'
_NUM = rb"-?+(?:0|[1-9][0-9]{0,29}+)(?:\.[0-9]++)?+(?:[eE][-+]?+[0-9]++)?+"
_SCALAR = rb"(?>" + _STR + rb"|" + _NUM + rb"|true|false|null)"
_INNER_KEY = rb'"(?!idx")[^"]*+"'  # so that every "idx": in a plain entry is a key of the entry itself
_INNER = rb"\{(?:" + _INNER_KEY + rb":" + _SCALAR + rb"(?:," + _INNER_KEY + rb":" + _SCALAR + rb")*+)?+\}"
_VALUE = rb"(?>" + _SCALAR + rb"|\[(?:" + _SCALAR + rb"(?:," + _SCALAR + rb")*+)?+\]|" + _INNER + rb")"
_OBJECT = rb"\{" + _STR + rb":" + _VALUE + rb"(?:," + _STR + rb":" + _VALUE + rb")*+\}"
_FLAT_OBJECT = re.compile(_OBJECT).fullmatch
# Flat objects joined by newlines. A string cannot run across a newline when each object holds an
# even number of quotes: strings take the quotes two by two, in order, so one that opened in an
# object closes in it. Each newline then separates two objects, which each match on their own.
# (Excluding newlines from strings instead, `[^"\n]`, would make the match twice as slow: `re`
# scans a class of one excluded byte much faster than any other class.)
_FLAT_OBJECTS = re.compile(_OBJECT + rb"(?:\n" + _OBJECT + rb")*+").fullmatch
_NOT_PLAIN_BUT_NEWLINE = _NOT_PLAIN.replace(b"\n", b"")

_IDX = b'"idx":'

# Lines taken as one run: the run grows while whole runs pass; after one that stopped short,
# small ones again, so that a bundle with many irregular lines costs no more than line by line.
RUN_MIN, RUN_MAX = 16, 4096


def next_run(run: int, whole: bool) -> int:
    """The next run's length, after a run of `run` lines that passed `whole` or stopped short."""
    return min(RUN_MAX, run * 2) if whole else RUN_MIN


# A full export's entry record as the node writes it (exchange.audit.keeper.entry_lines): the
# entry is a JSON string whose only escapes are \" and the stored leaf hash 43 base64url characters.
ENTRY_HEAD = b'{"type":"entry","idx":%d,"entry":"'
LEAF_FIELD = b'","leaf_hash":"'
_TAIL = len(LEAF_FIELD) + 43 + 2  # the leaf hash field, its value, and '"}'
_FIELD = slice(-_TAIL, -_TAIL + len(LEAF_FIELD))
_STORED = slice(-45, -2)

_URLSAFE = bytes.maketrans(b"+/", b"-_")


def is_plain_text(data: bytes, *, newlines: bool = False) -> bool:
    """ASCII, without control characters or backslashes: a JSON string of it needs only \\" escapes.
    With `newlines`, it may hold newlines too (the separators of texts joined by them)."""
    bad = _NOT_PLAIN_BUT_NEWLINE if newlines else _NOT_PLAIN
    return data.isascii() and len(data.translate(None, bad)) == len(data)


def plain_prefix(first: int, entries: Sequence[bytes]) -> int:
    """How many of `entries`, from the start, are in the plain form and carry their own index
    (`first`, `first + 1`, ...): certainly JSON objects whose "idx" is their position.

    Why that is certain: without backslashes every `"` delimits a string, and a string followed by
    `:` is a key, of the top-level object or of an object value, whose keys are never "idx"; so
    the one `"idx":` is the entry's only "idx" key, and the digits after it, ended by a comma or
    the object's end, are its value.
    """
    blob = b"\n".join(entries)
    plain = is_plain_text(blob, newlines=True) and blob.count(b"\n") == len(entries) - 1
    return _plain_prefix(first, entries, blob if plain else None)


def _plain_prefix(first: int, entries: Sequence[bytes], blob: bytes | None) -> int:
    """`plain_prefix`, given `blob`: the entries joined by newlines, if they are all plain text
    and hold no newline of their own (else None)."""
    count = len(entries)
    keys = _numbered(b'"idx":%d,', first, count)
    if (
        count
        and blob is not None
        and blob.count(_IDX) == count  # each holds its key below, so each holds exactly one
        and all(map(bytes.__contains__, entries, keys))
        and not any(map((1).__and__, map(bytes.count, entries, repeat(b'"'))))
        and _FLAT_OBJECTS(blob) is not None
    ):
        return count
    # Not all of them: find the first that is not, entry by entry.
    ok = [
        (key in entry or _last_key(entry, key))
        and entry.count(_IDX) == 1
        and is_plain_text(entry)
        and _FLAT_OBJECT(entry) is not None
        for entry, key in zip(entries, keys, strict=True)
    ]
    return ok.index(False) if False in ok else count


def _numbered(pattern: bytes, first: int, count: int) -> list[bytes]:
    """`pattern % i` for i from `first`, `count` of them, formatted in one operation.
    The pattern holds no newline."""
    if not count:
        return []
    return ((pattern + b"\n") * count % tuple(range(first, first + count))).split(b"\n")[:-1]


def _last_key(entry: bytes, key: bytes) -> bool:
    """Is `key` ('"idx":<i>,') the entry's last member ('"idx":<i>}')?"""
    return entry.endswith(key[:-1] + b"}")


def matching_prefix(digests: Sequence[bytes], stored: Sequence[bytes], *, encoded: bool) -> int:
    """How many of `digests`, from the start, equal their `stored` leaf hash: raw 32 bytes, or if
    `encoded` its base64url text (43 bytes; equal only to the one canonical encoding, as b64d)."""
    n = min(len(digests), len(stored))
    if not encoded:
        if list(digests[:n]) == list(stored[:n]):
            return n
        return next(i for i in range(n) if digests[i] != stored[i])
    # A digest padded with a zero byte to 33 bytes encodes to 44 characters: its canonical 43 and
    # an "A". So n digests are encoded in one call, and compared with the stored texts in one.
    if n and set(map(len, digests[:n])) == {32} and set(map(len, stored[:n])) == {43}:
        mine = binascii.b2a_base64(b"\x00".join(digests[:n]) + b"\x00", newline=False).translate(_URLSAFE)
        if mine == b"A".join(stored[:n]) + b"A":
            return n
    return next(
        (i for i in range(n) if binascii.b2a_base64(digests[i], newline=False)[:43].translate(_URLSAFE) != stored[i]),
        n,
    )


def plain_entry_lines(first: int, lines: Sequence[bytes], start: int, stop: int) -> tuple[list[bytes], list[bytes]]:
    """The longest leading run of `lines[start:stop]` that are entry records as the node writes
    them, for entries `first`, `first + 1`, ...: their entries, unescaped, and their stored leaf
    hashes as base64url. The line must be exactly
    `{"type":"entry","idx":<i>,"entry":"<text>","leaf_hash":"<43 characters>"}` and the text's
    only escapes `\\"`, so that the line is that JSON object and the entry that text unescaped,
    once `matching_prefix` finds the leaf hash to be the one canonical encoding of 32 bytes.
    """
    entries, stored, _ = _entry_lines(first, lines[start:stop])
    return entries, stored


def entry_run(first: int, lines: Sequence[bytes], start: int, stop: int) -> tuple[list[bytes], list[bytes]]:
    """`plain_entry_lines`, cut where `plain_prefix` stops: the longest leading run of entry
    records whose entries are in the plain form and carry their own index; each text is checked
    once for both."""
    entries, stored, blob = _entry_lines(first, lines[start:stop])
    count = _plain_prefix(first, entries, blob)
    return entries[:count], stored[:count]


def _entry_lines(first: int, window: Sequence[bytes]) -> tuple[list[bytes], list[bytes], bytes | None]:
    """`plain_entry_lines` of the window, and its entries joined by newlines if they are all
    plain text (as `plain_prefix` takes them; else None)."""
    if not window:
        return [], [], None
    heads = _numbered(ENTRY_HEAD, first, len(window))
    sizes = list(map(len, heads))
    # Checked for the whole window first; only if one line fails, line by line to find it. The
    # indices grow, so the last head is the longest: a line as long as it and the tail holds both.
    if not (
        all(map(bytes.startswith, window, heads))
        and all(map(LEAF_FIELD.__eq__, map(operator.getitem, window, repeat(_FIELD))))
        and all(map(bytes.endswith, window, repeat(b'"}')))
        and min(map(len, window)) >= sizes[-1] + _TAIL
    ):
        checks = (
            list(map(bytes.startswith, window, heads)),
            list(map(LEAF_FIELD.__eq__, map(operator.getitem, window, repeat(_FIELD)))),
            list(map(bytes.endswith, window, repeat(b'"}'))),
            list(map(operator.le, map(operator.add, sizes, repeat(_TAIL)), map(len, window))),
        )
        end = min(check.index(False) if False in check else len(window) for check in checks)
        window, sizes = window[:end], sizes[:end]
    texts: list[bytes] = list(map(operator.getitem, window, map(slice, sizes, repeat(-_TAIL))))  # type: ignore[arg-type]
    stored: list[bytes] = list(map(operator.getitem, window, repeat(_STORED)))  # type: ignore[arg-type]
    blob = b"\n".join(texts)
    unescaped = _unescaped(blob)
    if unescaped is None:  # some text has another escape, or a quote that ends it early: cut there
        end = next(n for n, text in enumerate(texts) if _unescaped(text) is None)
        texts, stored = texts[:end], stored[:end]
        unescaped = _unescaped(b"\n".join(texts)) or b""
    out = unescaped.split(b"\n") if texts else []
    if len(out) != len(texts):  # a line held a newline: it is not plain, and is left to the general path
        return [_unescaped(t) or b"" for t in texts], stored, None
    return out, stored, unescaped if unescaped.isascii() else None


def _unescaped(text: bytes) -> bytes | None:
    """The text with its \\" escapes undone, if it has no other escape, no quote unescaped and no
    control character but newlines: then every backslash is the first half of an escaped quote,
    and undoing them is deleting them."""
    deleted = text.translate(None, _NOT_PLAIN_BUT_NEWLINE)  # the backslashes, and any control character
    quotes = text.count(b'"')
    return deleted if len(text) - len(deleted) == quotes == text.count(b'\\"') else None
