"""Canonical JSON (RFC 8785), strict JSON parsing, base64url and SHA-256: the byte-level rules."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

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
    raise InvalidInput(f"floats are not allowed: {text}")


def _no_constant(text: str) -> Any:
    raise InvalidInput(f"{text} is not allowed")


def strict_loads(data: bytes | str) -> Any:
    """Parse JSON, refusing duplicate keys, floats, NaN and Infinity."""
    try:
        return json.loads(
            data,
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_constant=_no_constant,
        )
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from exc


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
