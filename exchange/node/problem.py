"""RFC 9457 problem+json: the one table that maps exchange errors to HTTP statuses."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from exchange import errors

STATUS: list[tuple[type[errors.ExchangeError], int]] = [
    (errors.Equivocation, 409),
    (errors.InvalidInput, 422),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.ConfigError, 500),
    (errors.AuditTampered, 500),
    (errors.StateUnavailable, 503),
    (errors.Unavailable, 503),
    (errors.PeerError, 502),
    (errors.ExchangeError, 500),
]


def status_for(exc: errors.ExchangeError) -> int:
    return next(code for cls, code in STATUS if isinstance(exc, cls))


def problem(status: int, title: str, detail: str, type_: str = "about:blank", **extra: Any) -> web.Response:
    body = {"type": type_, "title": title, "status": status, "detail": detail, **extra}
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/problem+json",
    )


def from_error(exc: errors.ExchangeError) -> web.Response:
    extra: dict[str, Any] = {}
    if hasattr(exc, "errors"):
        extra["errors"] = exc.errors
    return problem(status_for(exc), exc.title, exc.detail, f"urn:exchange:error:{type(exc).__name__}", **extra)
