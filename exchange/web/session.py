"""Console sign-in, the adapter's half: the session cookie, CSRF tokens, and who is signed in.

- The session cookie is `__Host-` prefixed, Secure, HttpOnly and SameSite=Strict and holds the
  session's secret; sessions themselves, their expiry and sign-in throttling are the service's
  (`exchange.service.sessions`), which keeps only the secret's SHA-256.
- Every form carries a CSRF token derived from the session secret (HMAC), checked on each POST,
  together with the Origin header when the browser sends one. The sign-in form, which has no
  session yet, uses a double-submit cookie instead.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from aiohttp import web
from multidict import MultiDictProxy

from exchange.errors import Forbidden, InvalidInput, TooManyFailures, Unauthorized
from exchange.http.appkeys import SERVICE, USER
from exchange.service.sessions import ConsoleSession, Sessions, SessionSettings
from exchange.web.i18n import N_

SESSION_COOKIE = "__Host-exchange-console"
SIGNIN_COOKIE = "__Host-exchange-signin"
# What a POST just did, for the page it redirects to to say so: set by this console's answer, so a
# link cannot make a page claim it (a query parameter could: "?done=1" said a password was changed).
DONE_COOKIE = "__Host-exchange-done"
CSRF_FIELD = "csrf"

ConsoleSettings = SessionSettings  # the console's session lifetime and sign-in limits
Session = ConsoleSession  # a signed-in person: the user as the database says now, and the cookie's secret

CONSOLE_SETTINGS: web.AppKey[ConsoleSettings] = web.AppKey("console_settings", ConsoleSettings)
SESSION: web.RequestKey[Session] = web.RequestKey("console_session", Session)

# What this console puts in its cookies and forms (secrets.token_urlsafe, an HMAC in hex): anything
# else a browser sends back is not ours, and is treated as absent, never hashed or compared.
TOKEN = re.compile(r"[A-Za-z0-9_-]{20,100}")


def _token(value: object) -> str | None:
    return value if isinstance(value, str) and TOKEN.fullmatch(value) else None


# No field, path or query of the console may hold a NUL character: nothing legitimate does, and a
# PostgreSQL text value cannot, so it would fail the query that reads or stores it.
NUL_REFUSED = N_("what was sent holds a NUL character, which no field may hold")


async def read_form(request: web.Request) -> MultiDictProxy[str | bytes | bytearray | web.FileField]:
    """The request's form fields; a body that is not a well-formed form is InvalidInput (422).

    aiohttp raises ValueError, LookupError, TypeError, RuntimeError or its own parse errors for a
    malformed body (an unknown charset, a missing boundary, a control byte in a part's header...);
    its HTTP errors (413: too large, too many fields) pass through as they are. A field holding a
    NUL character, or text that is not Unicode (a lone surrogate), is InvalidInput too.
    """
    try:
        form = await request.post()
    except web.HTTPException:
        raise
    except Exception as exc:  # every other failure to parse what the client sent is the client's
        raise InvalidInput(N_("what was sent is not a well-formed form")) from exc
    if any("\x00" in k or (isinstance(v, str) and "\x00" in v) for k, v in form.items()):
        raise InvalidInput(NUL_REFUSED)
    # A charset the client names (unicode_escape, say) can decode to text that is not Unicode
    # (lone surrogates), which every later step (password hashing, the database) fails on: a
    # 500, after a user was created (found by a read-only review). Refused here, as JSON is.
    names = (v.filename if isinstance(v, web.FileField) else v for v in form.values())
    if not all(_unicode(k) for k in form) or not all(_unicode(v) for v in names if isinstance(v, str)):
        raise InvalidInput(N_("what was sent is not a well-formed form"))
    return form


def _unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def csrf_token(secret: str) -> str:
    """The CSRF token of a session: only who holds the (HttpOnly) session secret can compute it."""
    return hmac.new(secret.encode(), b"exchange-console-csrf", hashlib.sha256).hexdigest()


def client_address(request: web.Request) -> str:
    """The TCP peer; behind a reverse proxy this is the proxy, so limits would apply to it as a whole."""
    return (request.remote or "unknown")[:64]


def sessions(request: web.Request) -> Sessions:
    """The node's console sessions and accounts, under this console's settings."""
    return Sessions(request.app[SERVICE].store, request.app[CONSOLE_SETTINGS])


def _cookie(response: web.StreamResponse, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, path="/", secure=True, httponly=True, samesite="Strict", max_age=max_age)


# -- sessions ---------------------------------------------------------------------------------


async def find_session(request: web.Request, *, use: bool = True) -> Session | None:
    """The live session behind the request's cookie, or None; `use`: the person made this
    request, so the session's idle time starts again (`Sessions.find`)."""
    return await sessions(request).find(_token(request.cookies.get(SESSION_COOKIE)), use=use)


def set_session_cookie(response: web.StreamResponse, session: Session) -> None:
    _cookie(response, SESSION_COOKIE, session.secret, None)  # a browser-session cookie; the server enforces expiry


def clear_session_cookie(response: web.StreamResponse) -> None:
    _cookie(response, SESSION_COOKIE, "", 0)


def set_done(response: web.StreamResponse, what: str) -> None:
    """Tell the page this response redirects to that `what` was done (`was_done`), for a minute."""
    _cookie(response, DONE_COOKIE, what, 60)


def was_done(request: web.Request, what: str) -> bool:
    """Whether the POST before this request did `what` (`set_done`); `spend_done` once it is said."""
    return request.cookies.get(DONE_COOKIE) == what


def spend_done(response: web.StreamResponse) -> None:
    _cookie(response, DONE_COOKIE, "", 0)


async def signed_in(request: web.Request, *, use: bool = True) -> Session:
    """The request's session; Unauthorized (the console redirects to sign-in) if there is none.

    `use=False` for what the browser asks by itself (the live inbox's event stream): it checks
    the session without keeping it alive."""
    session = await find_session(request, use=use)
    if session is None:
        raise Unauthorized(N_("please sign in"))
    request[USER] = session.user.name
    request[SESSION] = session
    return session


def check_origin(request: web.Request) -> None:
    """A form POST must come from this console's own origin when the browser says where from."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise Forbidden(N_("the form was sent from another site"))


async def check_csrf(request: web.Request, session: Session) -> None:
    """Return None if the POST carries this session's CSRF token, else raise Forbidden."""
    check_origin(request)
    form = await read_form(request)
    sent = _token(form.get(CSRF_FIELD))
    if sent is None or not hmac.compare_digest(sent, csrf_token(session.secret)):
        raise Forbidden(
            N_("this form is not valid any more (its security token is missing or wrong); reload and retry")
        )


async def posted_form(request: web.Request) -> tuple[Session, dict[str, str]]:
    """The session and text fields of a CSRF-checked form POST. A POST refused for its token does
    not count as use of the session: a page elsewhere posting forms could keep it alive."""
    await check_csrf(request, await signed_in(request, use=False))
    session = await signed_in(request)  # the person's own request: its idle time starts again
    form = await read_form(request)
    return session, {k: v for k, v in form.items() if isinstance(v, str)}


# -- the sign-in form's own CSRF protection (no session yet) ------------------------------------


def signin_token(request: web.Request) -> str:
    """The double-submit token of the sign-in form: the cookie's value, or a new one."""
    return _token(request.cookies.get(SIGNIN_COOKIE)) or secrets.token_urlsafe(32)


def set_signin_cookie(response: web.StreamResponse, token: str) -> None:
    _cookie(response, SIGNIN_COOKIE, token, 3600)


async def check_signin_token(request: web.Request) -> None:
    check_origin(request)
    form = await read_form(request)
    sent, cookie = _token(form.get(CSRF_FIELD)), _token(request.cookies.get(SIGNIN_COOKIE))
    if sent is None or cookie is None or not hmac.compare_digest(sent, cookie):
        raise Forbidden(
            N_("the sign-in form is not valid any more (its security token is missing or wrong); reload it")
        )


__all__ = [
    "CONSOLE_SETTINGS",
    "CSRF_FIELD",
    "SESSION",
    "SESSION_COOKIE",
    "SIGNIN_COOKIE",
    "ConsoleSettings",
    "Session",
    "TooManyFailures",
    "check_csrf",
    "check_signin_token",
    "clear_session_cookie",
    "client_address",
    "csrf_token",
    "find_session",
    "posted_form",
    "read_form",
    "sessions",
    "set_done",
    "set_session_cookie",
    "set_signin_cookie",
    "signed_in",
    "signin_token",
    "spend_done",
    "was_done",
]
