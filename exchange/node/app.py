"""The node's HTTP adapter: the federation, client and audit routes, and the middleware that
turns every error into problem+json and audits every refused request (within the bounds of
`exchange.service.rejections`: exact entries for accountable callers, counts for floods)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from exchange.errors import ExchangeError
from exchange.http.appkeys import PEER, SERVICE, USER
from exchange.http.limits import RETRY_AFTER
from exchange.http.problem import from_error, problem
from exchange.node import audit_api, client_api, epoch_api, federation_api, metrics_api, taxii_api, tlog_api

log = logging.getLogger("exchange.node")

MAX_REQUEST_BYTES = 64 * 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error becomes problem+json; every refused request is audited."""
    try:
        response = await handler(request)
        if response.status == 429 and RETRY_AFTER in request and "Retry-After" not in response.headers:
            response.headers["Retry-After"] = str(request[RETRY_AFTER])  # the console's HTML 429 page
        return response
    except ExchangeError as exc:
        response = from_error(exc)
        reason = exc.audited
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = problem(exc.status, exc.reason, exc.text or exc.reason)
        if "Allow" in exc.headers:  # a 405 names the methods the resource takes (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
        reason = exc.reason
    except ConnectionError:
        if request.transport is None or request.transport.is_closing():
            raise  # the client went away: aiohttp closes quietly
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem(500, "Internal error", "the node could not handle this request")
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem(500, "Internal error", "the node could not handle this request")
    if response.status == 408:
        response.force_close()  # the rest of a body that timed out is not read
    if 400 <= response.status < 500:
        await request.app[SERVICE].audit_rejection(
            method=request.method,
            path=request.path,
            status=response.status,
            reason=reason,
            peer=request.get(PEER),
            user=request.get(USER),
            address=request.remote,
        )
    return response


def api_application() -> web.Application:
    """An aiohttp application with the node's routes; the caller adds resources and the console."""
    app = web.Application(
        middlewares=[metrics_api.metrics_middleware, federation_api.roster_gossip, problem_middleware],
        client_max_size=MAX_REQUEST_BYTES,
    )
    app[metrics_api.HTTP_FIGURES] = metrics_api.HttpFigures()
    app.add_routes(federation_api.routes())
    app.add_routes(epoch_api.routes())
    app.add_routes(client_api.routes())
    app.add_routes(audit_api.routes())
    app.add_routes(taxii_api.routes())
    app.add_routes(metrics_api.routes())
    app.add_routes(tlog_api.routes())
    return app
