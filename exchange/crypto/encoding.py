"""Canonical JSON (RFC 8785), strict JSON parsing, base64url and SHA-256: the byte-level rules."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any, AnyStr, cast

import rfc8785

from exchange.errors import InvalidInput


def canonical_json(value: Any) -> bytes:
    """Serialise `value` as RFC 8785 (JCS) canonical JSON; floats are refused."""
    _refuse_floats(value)
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise InvalidInput(f"value cannot be canonicalised: {exc}") from exc


def _refuse_floats(value: Any) -> None:
    if isinstance(value, float):
        raise InvalidInput("floats are not allowed in signed objects")
    if isinstance(value, dict):
        for item in value.values():
            _refuse_floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _refuse_floats(item)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in pairs:
        if key in out:
            raise InvalidInput(f"duplicate JSON key {key!r}")
        out[key] = item
    return out


def _no_float(text: str) -> Any:
    raise InvalidInput(f"floats are not allowed: {text[:20]}")


def _no_constant(text: str) -> Any:
    raise InvalidInput(f"{text} is not allowed")


# The largest integer JCS can write (RFC 8785 numbers are IEEE doubles). Checking the length first
# means a 5,000-digit literal never reaches int(), whose 4,300-digit limit raises ValueError.
MAX_SAFE_INTEGER = 2**53 - 1
MAX_INTEGER_DIGITS = len(str(MAX_SAFE_INTEGER))


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS or abs(value := int(text)) > MAX_SAFE_INTEGER:
        raise InvalidInput(f"integers are limited to ±(2^53 - 1): {text[:20]}")
    return value


# How many values a JSON text may hold, as parsing makes a Python object of each (50 to 200 bytes):
# at most one structural character (, : [ {) outside strings per BYTES_PER_VALUE bytes of text, and
# MIN_VALUES whatever the size. The densest legitimate document, an envelope with 1,000 recipients,
# has one per 25 bytes; a hostile list of two-letter strings, one per 5 bytes.
MIN_VALUES = 10_000
BYTES_PER_VALUE = 20
_STRUCTURAL_BYTES = (b",", b":", b"[", b"{")
_STRUCTURAL_TEXT = (",", ":", "[", "{")
_NOT_MARKS = bytes(b for b in range(256) if b not in b",:[{")
# One JSON string literal; group 1 when it holds a structural character. Both branches are
# unrolled loops (no nested alternation), so the engine goes through a long string linearly.
_STRING_BYTES = re.compile(rb'"[^"\\,:\[{]*(?:\\.[^"\\,:\[{]*)*"|("[^"\\]*(?:\\.[^"\\]*)*")', re.DOTALL)
_STRING_TEXT = re.compile(r'"[^"\\,:\[{]*(?:\\.[^"\\,:\[{]*)*"|("[^"\\]*(?:\\.[^"\\]*)*")', re.DOTALL)
_SURROGATE_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_ESCAPE_TEXT = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def value_budget(size: int) -> int:
    """How many structural characters outside strings a JSON text of `size` bytes may hold."""
    return max(MIN_VALUES, size // BYTES_PER_VALUE)


def _within_budget(data: bytes | bytearray | str) -> bool:
    """Whether `data` has at most `value_budget` of `,` `:` `[` `{` outside its strings."""
    if isinstance(data, str):
        return _marks_within(data, _STRUCTURAL_TEXT, _STRING_TEXT, value_budget(len(data)))
    # A bytearray has every bytes method used here, and the patterns take any buffer.
    return _marks_within(cast(bytes, data), _STRUCTURAL_BYTES, _STRING_BYTES, value_budget(len(data)))


def _marks_within(data: AnyStr, marks: tuple[AnyStr, ...], string: re.Pattern[AnyStr], budget: int) -> bool:
    """Counting every mark is a few passes in C. Only when that is over the budget (commas in a
    bulletin's text, or a hostile list) are the strings looked at, one match at a time and at most
    budget + 2 of them: every string is a value or a member name, and each but the first follows
    a mark, so more strings than that is over the budget too.
    """
    count = sum(data.count(c) for c in marks)
    if count <= budget:
        return True
    for seen, match in enumerate(string.finditer(data), start=1):
        if seen > budget + 1:
            return False
        if match.lastindex:  # a string holding marks: they are not structure
            start, end = match.span()
            if isinstance(data, bytes | bytearray):
                count -= len(data[start:end].translate(None, _NOT_MARKS))
            else:
                count -= sum(data.count(c, start, end) for c in marks)
            if count <= budget:
                return True
    return count <= budget


def _refuse_surrogates(value: Any) -> None:
    """Refuse a lone surrogate (an escaped "\\ud800") in any string or member name, at any depth."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise InvalidInput("strings must be Unicode scalar values: a lone surrogate is not allowed")
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def strict_loads(data: bytes | bytearray | str) -> Any:
    """Parse UTF-8 JSON, refusing duplicate keys, floats, NaN and Infinity, integers beyond
    ±(2^53 - 1), lone surrogates, and more values than `value_budget` allows for its size.

    The budget is checked on the text before anything is parsed, so a hostile body costs the
    node a few passes over its bytes, never a Python object per element. Nesting deeper than the
    interpreter's recursion limit (about 1,000 levels) is refused too.
    """
    if not _within_budget(data):  # a bytearray is read in place, not copied
        raise InvalidInput(
            f"too many JSON values: at most {MIN_VALUES} or one per {BYTES_PER_VALUE} bytes of the document"
        )
    if isinstance(data, str):
        text = data
        escaped_surrogate = _SURROGATE_ESCAPE_TEXT.search(data) is not None
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"malformed JSON: not UTF-8 at byte {exc.start}") from exc
        escaped_surrogate = _SURROGATE_ESCAPE_BYTES.search(data) is not None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_int=_bounded_int,
            parse_constant=_no_constant,
        )
    except RecursionError as exc:
        raise InvalidInput("malformed JSON: nested too deeply") from exc
    except ValueError as exc:  # json.JSONDecodeError, and any other refusal of the text
        raise InvalidInput(f"malformed JSON: {exc}") from exc
    if escaped_surrogate:
        _refuse_surrogates(value)
    return value


def b64e(data: bytes) -> str:
    """Unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    """Decode unpadded base64url strictly: the encoding of the result must give `text` back."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("malformed base64url") from exc
    if b64e(raw) != text:
        raise InvalidInput("non-canonical base64url")
    return raw


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
