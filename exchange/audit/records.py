"""The records of an export bundle read one at a time, and the check of an entry's body: shared by
the line-by-line verifier (`exchange.audit.log`) and the range workers (`exchange.audit.ranges`),
so both judge a record alike, whatever the depth of the caller's stack: nesting is bounded by
MAX_NESTING, checked before parsing, rather than by Python's recursion limit. Pure: no I/O."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from itertools import accumulate
from typing import Any

from exchange.crypto.encoding import b64d
from exchange.errors import BadEntry, InvalidInput

MAX_NESTING = 128  # arrays and objects in one another, at most: far past any record the node writes
_STRING = re.compile(r'"(?:[^"\\]|\\.)*+"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def too_deep(text: str) -> bool:
    """Whether the JSON text nests arrays and objects deeper than MAX_NESTING. Exact for JSON (its
    strings are taken out first); for a text that is not JSON, what a parser reads before the
    error is JSON, so a parser goes no deeper than this says."""
    if text.count("[") + text.count("{") <= MAX_NESTING:
        return False
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, map(ord, brackets))), default=0) > MAX_NESTING


def record_field(record: Mapping[str, Any], name: str, kind: type) -> Any:
    """The record's member `name`, which must be of type `kind` (not a bool for int)."""
    value = record.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidInput(f"a {record.get('type')} record needs {name!r} of type {kind.__name__}")
    return value


def body_error(idx: int, entry: bytes) -> BadEntry | None:
    """What is wrong with the entry stored at position `idx`, if anything: it must be a JSON object
    whose "idx" is `idx`."""
    try:
        text = entry.decode("utf-8")  # as the entry records carry it; json.loads would guess others
        if too_deep(text):
            return BadEntry(idx, f"is nested deeper than {MAX_NESTING} levels")
        body = json.loads(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return BadEntry(idx, "is not valid JSON")
    if not isinstance(body, dict):
        return BadEntry(idx, "is not a JSON object")
    claimed = body.get("idx")
    if type(claimed) is not int or claimed < 0:
        return BadEntry(idx, "carries no index")
    if claimed != idx:
        return BadEntry(
            min(idx, claimed),
            f"the entry stored at position {idx} says it is entry {claimed}: "
            "entries were reordered, inserted or removed",
        )
    return None


def parse_line(line: bytes | str) -> dict[str, Any] | None:
    """A bundle line's record (None for a blank line, which every reader skips)."""
    if not line.strip():
        return None
    try:
        text = line if isinstance(line, str) else line.decode("utf-8")  # the encoding of a bundle
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"a bundle line is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    if too_deep(text):
        raise InvalidInput(f"a bundle line is nested deeper than {MAX_NESTING} levels")
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: only if the stack was nearly full already
        raise InvalidInput(f"a bundle line is not JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise InvalidInput("a bundle line is not a JSON object")
    return record


def entry_fields(record: Mapping[str, Any]) -> tuple[int, bytes]:
    """An entry record's index and its entry's bytes."""
    idx, text = record_field(record, "idx", int), record_field(record, "entry", str)
    try:
        return idx, text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate (\ud800) is not text
        raise InvalidInput(f"entry {idx} is not text: {exc.reason}") from exc


def stored_leaf(record: Mapping[str, Any]) -> bytes | None:
    """A full export's entry record's stored leaf hash (None if it has none)."""
    return b64d(record_field(record, "leaf_hash", str)) if "leaf_hash" in record else None
