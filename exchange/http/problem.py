"""RFC 9457 problem+json: the one table that maps exchange errors to HTTP statuses."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from exchange import errors

# Every class of errors.py, in the order of its tree: a class defined elsewhere gets the row
# of its nearest ancestor here. The 500s are deliberate: a node that is misconfigured or whose
# own audit log does not verify has failed, whatever the request was.
STATUS: dict[type[errors.ExchangeError], int] = {
    errors.ExchangeError: 500,
    errors.ConfigError: 500,
    errors.SchemaOutdated: 500,
    errors.StoredRosterInvalid: 500,
    errors.SuiteUnsupported: 501,  # the functionality is missing here, not broken: a newer cryptography adds it
    errors.InvalidInput: 422,
    errors.WeakPassword: 422,
    errors.BodyTooLarge: 413,
    errors.IdempotencyKeyReused: 422,
    errors.ProofError: 422,
    errors.SmallOrderKey: 422,
    errors.EpochInvalid: 422,
    errors.HandoverRefused: 422,
    errors.OwnerRevoked: 422,
    errors.RosterRefused: 422,
    errors.RosterInvalid: 422,
    errors.RosterThreshold: 422,
    errors.RosterGap: 409,
    errors.RosterRollback: 409,
    errors.RosterEquivocation: 409,
    errors.RosterChainBroken: 409,
    errors.RosterExpired: 422,
    errors.InvalidEnvelope: 422,
    errors.BadSignature: 422,
    errors.DecryptionFailed: 422,
    errors.Equivocation: 409,
    errors.StaleEpoch: 422,
    errors.EnvelopeRejected: 422,
    errors.Unauthorized: 401,
    errors.RateLimited: 429,
    errors.TooManyFailures: 429,
    errors.RequestTimeout: 408,
    errors.Forbidden: 403,
    errors.UnknownPeer: 403,
    errors.NotAMember: 403,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Unavailable: 503,
    errors.HeldRosterExpired: 503,
    errors.LeaseLost: 503,
    errors.RosterBehind: 503,
    errors.AuditTampered: 500,
    errors.BadEntry: 500,
    errors.SplitView: 500,
    errors.BulletinUnverified: 500,
    errors.PeerError: 502,
    errors.AnswersFull: 503,
    errors.PeerRefused: 502,
    errors.StateUnavailable: 503,
    errors.ApiError: 502,
}


def status_for(exc: errors.ExchangeError) -> int:
    """The HTTP status of an error: its class's row, else its nearest ancestor's."""
    return next(STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS)


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
    response = problem(status_for(exc), exc.title, exc.detail, f"urn:exchange:error:{type(exc).__name__}", **extra)
    if isinstance(exc, errors.RateLimited):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response
