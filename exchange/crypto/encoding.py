"""Canonical JSON (RFC 8785), strict JSON parsing, base64url and SHA-256: the byte-level rules."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any, AnyStr, cast

import rfc8785

from exchange.errors import InvalidInput


def canonical_json(value: Any) -> bytes:
    r"""Serialise `value` as RFC 8785 (JCS) canonical JSON; floats are refused.

    Two paths, one result. When `fast_canonical_json` finds the value inside the protocol's
    domain (below), the standard library's C encoder writes it: 3 to 4 times faster than the
    pure-Python `rfc8785` package on headers, receipts, events and audit entries, about as fast
    on megabytes of attachments, where escaping and UTF-8 encoding dominate (bench/canonical.py).
    Anything else goes to `rfc8785`, which refuses what JCS cannot write (floats are refused
    before it).

    Why the C encoder, configured as `_JCS_ENCODER`, writes RFC 8785's bytes for every value of
    the domain, rule by rule (RFC 8785 section 3.2):

    - Whitespace (3.2.1): none; the separators are "," and ":".
    - Literals (3.2.2.1): `null`, `true`, `false` in both.
    - Numbers (3.2.2.3): JCS writes a number as ECMAScript's Number.prototype.toString does. For
      an integer of magnitude below 2^53 that is its decimal digits, with "-" when negative: no
      exponent (that starts at 10^21), no fraction, no "+", no leading zero, never "-0". The C
      encoder writes `int.__repr__`: the same digits.
    - Strings (3.2.2.2): JCS writes U+0008, U+0009, U+000A, U+000C and U+000D as \b \t \n \f
      \r, the other characters below U+0020 as \u00hh with lowercase hex, `"` and `\` as \" and
      \\, and every other character as it is: "/" (which JSON allows escaping), DEL, U+0080 to
      U+009F, U+2028 and U+2029 are not escaped. With `ensure_ascii=False`, the C encoder's
      `encode_basestring` has the same seven short escapes, writes the other characters below
      U+0020 as \u00hh with lowercase hex digits, and copies every other code point. The tests
      compare every code point, and generated strings, with `rfc8785`.
    - UTF-8 (3.2.4): the text is encoded as UTF-8 at the end. A lone surrogate, which JCS cannot
      write (I-JSON strings are Unicode scalar values), makes that fail, and the value goes to
      the slow path, which refuses it.
    - Object members (3.2.3): JCS sorts names by their UTF-16 code units, the C encoder
      (`sort_keys`) by Python's string order, which is code point order. The two agree unless,
      where two names first differ, one has a character from U+E000 to U+FFFF and the other one
      above U+FFFF: in UTF-16 that one starts with a surrogate, D800 to DBFF, and sorts first;
      as a code point it sorts last. RFC 8785's own example has such a pair ("\ufb33" and
      "\ud83d\ude00"). So an object with a name that is not ASCII is in the domain only when
      sorting its names both ways gives the same list. A dict cannot repeat a name.
    - Arrays: elements in order, from a list or a tuple (as `rfc8785` takes them).

    Where `json` and `rfc8785` differ, the value is outside the domain and takes the slow path:
    floats (`json` writes 1.0, JCS 1; both refused here anyway), NaN and Infinity, integers
    beyond ±(2^53 - 1) (`json` writes them, JCS refuses them), names that are not strings
    (`json` turns 1, True or None into "1", "true", "null"; JCS refuses them), subclasses of
    str, int, list and dict (either library may call their overridden methods), and any other
    type. `json.dumps`'s defaults differ too, hence the configuration: `ensure_ascii=True` would
    escape every non-ASCII character, the default separators add spaces, and without
    `sort_keys` members keep their insertion order.
    """
    fast = fast_canonical_json(value)
    if fast is not None:
        return fast
    try:
        _refuse_floats(value)
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise InvalidInput(f"value cannot be canonicalised: {exc}") from exc
    except RecursionError as exc:  # a value that contains itself
        raise InvalidInput("value cannot be canonicalised: nested too deeply") from exc


# The C encoder of the standard library, set up to write RFC 8785 within the domain that
# `fast_canonical_json` checks. No circular check: the domain check recurses, so a value that
# contains itself never reaches the encoder.
_JCS_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False, check_circular=False
)


def fast_canonical_json(value: Any) -> bytes | None:
    """RFC 8785 bytes of `value` from the standard library's C encoder, or None when `value` is
    outside the domain where those bytes are provably RFC 8785's (see `canonical_json`): exact
    str without lone surrogates, int within ±(2^53 - 1), bool, None, list, tuple, and dict with
    exact str names that sort alike by code points and by UTF-16 code units.
    """
    try:
        if not _in_canonical_domain((value,)):
            return None
        return _JCS_ENCODER.encode(value).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: not a Unicode scalar value
        return None
    except RecursionError:  # contains itself, or deeper than the interpreter goes
        return None


def _in_canonical_domain(items: Iterable[Any]) -> bool:
    """Whether every item, at any depth, is in the fast path's domain (strings are checked for
    lone surrogates later, by encoding). One Python frame per level of nesting, none per scalar.
    """
    for item in items:
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                continue
            return False
        if kind is dict:
            for name in item:
                if type(name) is not str or not name.isascii():
                    if not _names_sort_alike(item):
                        return False
                    break
            if not _in_canonical_domain(item.values()):
                return False
        elif kind is list or kind is tuple:
            if not _in_canonical_domain(item):
                return False
        else:
            return False
    return True


def _names_sort_alike(obj: dict[Any, Any]) -> bool:
    """Whether every name is an exact str, and code point order (Python's) is UTF-16 order (JCS's)."""
    names = list(obj)
    if any(type(name) is not str for name in names):
        return False
    try:
        return sorted(names) == sorted(names, key=_utf16)
    except UnicodeEncodeError:  # a lone surrogate in a name: the slow path refuses it
        return False


def _utf16(name: str) -> bytes:
    """Big-endian UTF-16, whose bytes compare as its code units do: JCS's sort key."""
    return name.encode("utf-16-be")


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


def value_budget(size: int, min_values: int = MIN_VALUES) -> int:
    """How many structural characters outside strings a JSON text of `size` bytes may hold."""
    return max(min_values, size // BYTES_PER_VALUE)


def _within_budget(data: bytes | bytearray | str, min_values: int = MIN_VALUES) -> bool:
    """Whether `data` has at most `value_budget` of `,` `:` `[` `{` outside its strings."""
    if isinstance(data, str):
        return _marks_within(data, _STRUCTURAL_TEXT, _STRING_TEXT, value_budget(len(data), min_values))
    # A bytearray has every bytes method used here, and the patterns take any buffer.
    return _marks_within(cast(bytes, data), _STRUCTURAL_BYTES, _STRING_BYTES, value_budget(len(data), min_values))


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


def strict_loads(data: bytes | bytearray | str, *, min_values: int = MIN_VALUES) -> Any:
    """Parse UTF-8 JSON, refusing duplicate keys, floats, NaN and Infinity, integers beyond
    ±(2^53 - 1), lone surrogates, and more values than `value_budget` allows for its size
    (`min_values` whatever the size: a document of many small items, a batch, may take more).

    The budget is checked on the text before anything is parsed, so a hostile body costs the
    node a few passes over its bytes, never a Python object per element. Nesting deeper than the
    interpreter's recursion limit (about 1,000 levels) is refused too.
    """
    if not _within_budget(data, min_values):  # a bytearray is read in place, not copied
        raise InvalidInput(
            f"too many JSON values: at most {min_values} or one per {BYTES_PER_VALUE} bytes of the document"
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
