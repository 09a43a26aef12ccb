"""Strict parsing of what a request names: query parameters, path ids, the bearer token and the body.

Shared by the API and the console, so that `after=²`, `after=--1`, a 5,000-digit `limit`, a
cursor past what the database's integer columns hold, an id with a NUL byte or a token with
non-ASCII bytes are refused (422 InvalidInput, 401 Unauthorized, 413 BodyTooLarge) before
anything reaches the application layer or a query.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from exchange.crypto import strict_loads
from exchange.crypto.encoding import MIN_VALUES
from exchange.errors import BodyTooLarge, InvalidInput, Unauthorized
from exchange.model import (
    INT32_MAX as INT32_MAX,  # every cursor, position and count a request names is bounded by it
    BulletinId,
    ChannelId,
    NodeId,
)

_INTEGER = re.compile(r"-?[0-9]{1,10}")  # ASCII digits only: `\d` and str.isdigit() take ² and ٣
_BOOLEAN = {"true": True, "false": False}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")  # node and channel ids, as exchange.model has them
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_AUDIT_NAME = re.compile(r"[a-z0-9][a-z0-9._*-]{0,63}")  # an audit event kind (prefix*), channel or node
# A date, or an RFC 3339 time whose seconds and zone may be left out (then it is UTC).
_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?([Zz]|[+-][0-9]{2}:[0-9]{2})?)?"
)
# RFC 6750's b64token: what a bearer token may be at all. Ours are "exch_" and 43 base64url characters.
_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]{1,256}=*")

# Request bodies, per route: what the largest legitimate request needs, and no more.
SMALL_BODY = 16 * 1024  # a membership change, an assignment, a forward, an acceptance, a cosignature


def integer(
    query: Mapping[str, str],
    name: str,
    default: int | None = None,
    *,
    minimum: int = 0,
    maximum: int = INT32_MAX,
) -> int:
    """An integer query parameter in [minimum, maximum]: ASCII digits, an optional minus sign.

    Without the parameter, `default`; without a default, InvalidInput (it is required).
    """
    raw = query.get(name)
    if raw is None:
        if default is None:
            raise InvalidInput(f"query parameter {name} is required")
        return default
    if not _INTEGER.fullmatch(raw) or not minimum <= int(raw) <= maximum:
        raise InvalidInput(f"query parameter {name} must be an integer from {minimum} to {maximum}")
    return int(raw)


def optional_integer(query: Mapping[str, str], name: str, *, minimum: int = 0, maximum: int = INT32_MAX) -> int | None:
    """An integer query parameter as `integer` checks it, or None when it is absent."""
    if query.get(name) is None:
        return None
    return integer(query, name, minimum=minimum, maximum=maximum)


def boolean(query: Mapping[str, str], name: str, default: bool) -> bool:
    """`true` or `false`, nothing else."""
    raw = query.get(name)
    if raw is None:
        return default
    if raw not in _BOOLEAN:
        raise InvalidInput(f"query parameter {name} must be true or false")
    return _BOOLEAN[raw]


def bulletin_id(raw: str, what: str = "a bulletin id") -> BulletinId:
    """64 lowercase hexadecimal characters (the hash of an envelope header)."""
    if not _HEX64.fullmatch(raw):
        raise InvalidInput(f"{what} is 64 lowercase hex characters")
    return BulletinId(raw)


def channel_id(raw: str, what: str = "a channel id") -> ChannelId:
    """A channel id: 2 to 63 characters of [a-z0-9-], not starting with a hyphen."""
    if not _ID.fullmatch(raw):
        raise InvalidInput(f"{what} is 2 to 63 characters of a-z, 0-9 and -")
    return ChannelId(raw)


def node_id(raw: str, what: str = "a node id") -> NodeId:
    """A node id, of the same form as a channel id."""
    if not _ID.fullmatch(raw):
        raise InvalidInput(f"{what} is 2 to 63 characters of a-z, 0-9 and -")
    return NodeId(raw)


def user_name(raw: str) -> str:
    """A local user's name: 1 to 64 characters of [A-Za-z0-9._-], starting with a letter or digit."""
    if not _USER.fullmatch(raw):
        raise InvalidInput("a user name is 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'")
    return raw


def optional_text(query: Mapping[str, str], name: str, parse: Any) -> Any:
    """The parameter parsed by `parse` (one of the id functions above), or None when absent."""
    raw = query.get(name)
    return None if raw is None else parse(raw, f"query parameter {name}")


def audit_name(raw: str, what: str) -> str:
    """An audit filter's event kind (or prefix ending in *), channel or node."""
    if not _AUDIT_NAME.fullmatch(raw):
        raise InvalidInput(f"{what} has an invalid form")
    return raw


def time_or_date(raw: str, what: str) -> str:
    """A date or an RFC 3339 time, on the calendar, as the audit log's UTC `at` compares with it.

    A date and a time without a zone are UTC and kept as given; a time with an offset becomes UTC.
    """
    if not _TIME.fullmatch(raw):
        raise InvalidInput(f"{what} must be a date or an RFC 3339 time")
    text = raw.upper()
    try:
        when = datetime.fromisoformat(text.removesuffix("Z"))
    except ValueError as exc:
        raise InvalidInput(f"{what} is not a time on the calendar") from exc
    offset = when.utcoffset()
    if offset is None:
        return text
    try:
        utc = (when.replace(tzinfo=None) - offset).isoformat(timespec="microseconds")
    except OverflowError:  # before year 1 or after 9999 in UTC: before or after every entry
        return "0000" if offset > timedelta(0) else "9999-12-31T23:59:59.999999Z"
    return utc + "Z"


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The bearer token of an `Authorization` header; None without one; Unauthorized if malformed.

    aiohttp hands over undecodable header bytes as surrogates; a token of anything but RFC 6750's
    characters is refused here, before it is hashed or compared.
    """
    header = headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthorized("the Authorization header must be: Bearer <token>")
    token = token.strip()
    if not _TOKEN.fullmatch(token):
        raise Unauthorized("a malformed bearer token")
    return token


async def body_bytes(request: web.Request, limit: int) -> bytearray:
    """The request body, refused with BodyTooLarge (413) as soon as it passes `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"this request takes a body of at most {limit} bytes")
    data = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise BodyTooLarge(f"this request takes a body of at most {limit} bytes")
    return data  # strict_loads reads a bytearray as it is: no second copy of a large body


async def json_body(request: web.Request, limit: int = SMALL_BODY, *, min_values: int = MIN_VALUES) -> Any:
    """The request body parsed as strict JSON (exchange.crypto.strict_loads), at most `limit` bytes
    and at most `min_values` JSON values or one per 20 bytes, whichever is more."""
    return strict_loads(await body_bytes(request, limit), min_values=min_values)


def json_object(raw: Any, what: str = "the body") -> dict[str, Any]:
    """`raw` if it is a JSON object, else InvalidInput."""
    if not isinstance(raw, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return raw
