"""The console on a node's app: its routes under /console/, templates, static files and HTML error pages.

Problems on console pages become a friendly HTML page with the status code; the JSON API keeps
its problem+json. Refused console requests are audited as the API's are.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

from aiohttp import web

from exchange.errors import ExchangeError, Forbidden, InvalidInput, Unauthorized
from exchange.http.appkeys import SERVICE, USER
from exchange.http.problem import status_for
from exchange.web import admin, auditor, contact, live, signin
from exchange.web.i18n import N_
from exchange.web.pages import JINJA, environments, render
from exchange.web.session import CONSOLE_SETTINGS, NUL_REFUSED, SESSION, ConsoleSettings, client_address

log = logging.getLogger("exchange.web")

PREFIX = "/console"
STATIC = Path(__file__).parent / "static"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Nothing is loaded from elsewhere, the only script is the console's own (static/live.js, with its
# event stream), and no other site may frame or post to a page.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make browsers send Origin: null
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    # The console is HTTPS only: a browser that has seen it once never tries plain HTTP for a year
    # (browsers ignore it for an IP address, as the sample federation uses; a host name keeps it).
    "Strict-Transport-Security": "max-age=31536000",
}
HOME_PATHS = (PREFIX, PREFIX + "/")
MAX_FORM_BYTES = 4 * 1024 * 1024  # a full compose form is under 1 MB; the node's own limit is for envelopes


def _is_console(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def _from_elsewhere(request: web.Request) -> bool:
    """Whether a browser says another site, or a sibling host of the same site, made this request
    in the background (Fetch Metadata: an image, a script, a fetch, a form it posts). Such a
    request is refused before anything is done: opening a bulletin or an attachment sends its
    author an "opened" receipt, and a page on a sibling host (SameSite cookies do not tell it from
    this one) could otherwise have an officer's browser send one with a hidden image. A link
    followed to a page is let through, and so is a request without these headers (older browsers,
    other clients), which the session cookie and the CSRF checks still hold to."""
    if request.headers.get("Sec-Fetch-Site") in (None, "same-origin", "none"):
        return False
    navigation = (
        request.headers.get("Sec-Fetch-Mode") == "navigate" and request.headers.get("Sec-Fetch-Dest") == "document"
    )
    return not (navigation and request.method in ("GET", "HEAD"))


def _secure(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)
    if not request.path.startswith(PREFIX + "/static/"):
        response.headers["Cache-Control"] = "no-store"  # bulletin pages must not linger in caches


_DETAILS = {  # for aiohttp's own errors, whose text is only "404: Not Found"
    404: N_("no such page in the console"),
    405: N_("This page cannot be used that way."),
    411: N_("A form must be sent with its length."),
    413: N_("What you sent is larger than this node accepts."),
}
MAX_DETAIL = 300  # characters of an error's detail shown on the page (it may quote what was sent)
EXPLAIN = {
    401: N_("Please sign in again."),
    403: N_("You do not have the right to see or do this."),
    404: N_("There is nothing here that you may see."),
    409: N_("This clashes with what the node holds already."),
    422: N_("The node could not accept what was sent."),
    429: N_("Too many attempts; please wait before you try again."),
}
SERVER_FAULT = N_("The node could not handle this request.")
SESSION_ENDED = N_("Your session has ended. Please sign in again.")
FROM_ELSEWHERE = N_("this page may be opened from a link, not fetched by another site's page")
# The titles an error page may have (aiohttp's reasons and the errors' own titles), so the page can
# show them in the reader's language; a title not listed here is shown as it is.
TITLES = (
    N_("Bad Request"),
    N_("Unauthorized"),
    N_("Forbidden"),
    N_("Not Found"),
    N_("Not found"),
    N_("Method Not Allowed"),
    N_("Conflict"),
    N_("Length Required"),
    N_("Request Entity Too Large"),
    N_("Request body too large"),
    N_("Invalid input"),
    N_("Weak password"),
    N_("Not a member"),
    N_("Too many requests"),
    N_("Too many failed sign-ins"),
    N_("Internal error"),
    N_("Unavailable"),
    N_("Request refused"),
    N_("Channel state unavailable"),
    N_("Bulletin does not verify"),
)


def error_page(request: web.Request, status: int, title: str, detail: str) -> web.Response:
    """The console's HTML problem page (never a traceback), with the navigation if someone is signed in."""
    explain = EXPLAIN.get(status, SERVER_FAULT if status >= 500 else "")
    if len(detail) > MAX_DETAIL:
        detail = detail[:MAX_DETAIL] + "…"
    return render(
        request,
        "error.html",
        status=status,
        session=request.get(SESSION),
        title=title,
        explain=explain,
        detail=detail,
        code=status,
    )


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTML error pages and security headers for /console/; everything else passes through."""
    if not _is_console(request.path):
        return await handler(request)
    try:
        if "\x00" in request.path or any("\x00" in k or "\x00" in v for k, v in request.query.items()):
            raise InvalidInput(NUL_REFUSED)
        if _from_elsewhere(request):
            raise Forbidden(FROM_ELSEWHERE)
        if (request.content_length or 0) > MAX_FORM_BYTES:
            raise web.HTTPRequestEntityTooLarge(MAX_FORM_BYTES, request.content_length or 0)
        if request.content_length is None and request.body_exists:
            # Chunked: its size is unknown until read, so MAX_FORM_BYTES could not hold. Browsers
            # always send a form's length.
            raise web.HTTPLengthRequired()
        response = await handler(request)
        _secure(request, response)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            _secure(request, exc)
            raise
        status, title, reason = exc.status, exc.reason, exc.reason
        plain = not exc.text or exc.text.startswith(f"{exc.status}:")  # aiohttp's own "404: Not Found"
        detail = _DETAILS.get(status, exc.reason) if plain or exc.text is None else exc.text
    except Unauthorized as exc:
        if request.method in ("GET", "HEAD"):
            target = quote(request.path_qs, safe="/?=&")
            location = f"{PREFIX}/sign-in" + ("" if request.path in HOME_PATHS else f"?next={target}")
            response = web.Response(status=303, headers={"Location": location})
            _secure(request, response)
            return response
        status, title, reason, detail = 401, exc.title, exc.detail, SESSION_ENDED
    except ExchangeError as exc:
        status = status_for(exc)  # TooManyFailures is 429
        title, reason, detail = exc.title, exc.audited, exc.detail
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = error_page(request, 500, "Internal error", SERVER_FAULT)
        _secure(request, response)
        return response
    response = error_page(request, status, title, detail)
    _secure(request, response)
    if 400 <= status < 500:
        await request.app[SERVICE].audit_rejection(
            method=request.method,
            path=request.path,
            status=status,
            reason=reason,
            peer=None,
            user=request.get(USER),
            address=client_address(request),
        )
    return response


def routes() -> list[web.RouteDef]:
    return [
        web.get(PREFIX, signin.home),
        *signin.routes(PREFIX),
        *contact.routes(PREFIX),
        web.get(PREFIX + "/events", live.events),
        *auditor.routes(PREFIX),
        *admin.routes(PREFIX),
    ]


def mount(app: web.Application, settings: ConsoleSettings | None = None) -> None:
    """Serve the console from `app`: routes, static files, templates, and its error middleware.

    The middleware is appended, so it runs inside the node's problem+json middleware and turns
    console errors into HTML before that one sees them.
    """
    app[JINJA] = environments()
    app[CONSOLE_SETTINGS] = settings or ConsoleSettings()
    app.middlewares.append(console_middleware)
    app.add_routes(routes())
    app.router.add_static(PREFIX + "/static/", STATIC, name="console-static")


__all__ = ["PREFIX", "console_middleware", "error_page", "mount", "routes"]
