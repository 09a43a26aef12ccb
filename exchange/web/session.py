"""Console sign-in: server-side sessions behind a secure cookie, CSRF tokens, and sign-in throttling.

- The session cookie is `__Host-` prefixed, Secure, HttpOnly and SameSite=Strict; the database
  keeps only its SHA-256, so a copy of the database opens no session.
- Every form carries a CSRF token derived from the session secret (HMAC), checked on each POST,
  together with the Origin header when the browser sends one. The sign-in form, which has no
  session yet, uses a double-submit cookie instead.
- Failed sign-ins are counted per user name and per client address over a sliding window; past
  the limit, sign-in is refused without checking the password. Failures and refusals are audited.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.clock import timestamp, utc_now
from exchange.crypto import hash_token
from exchange.errors import ExchangeError, Forbidden, NotFound, Unauthorized
from exchange.node.appkeys import SERVICE, USER
from exchange.node.users import User, get_user, verify_password
from exchange.store import AuditBuffer, Store, console_sessions, signin_failures, users

SESSION_COOKIE = "__Host-exchange-console"
SIGNIN_COOKIE = "__Host-exchange-signin"
CSRF_FIELD = "csrf"


@dataclass(frozen=True)
class ConsoleSettings:
    """Session lifetime and sign-in limits (the defaults follow OWASP's session guidance)."""

    session_idle: dt.timedelta = dt.timedelta(minutes=30)
    session_max: dt.timedelta = dt.timedelta(hours=8)
    touch_every: dt.timedelta = dt.timedelta(minutes=1)  # how stale last_seen may get before a write
    failure_window: dt.timedelta = dt.timedelta(minutes=15)
    max_failures_per_user: int = 5
    max_failures_per_address: int = 20


CONSOLE_SETTINGS: web.AppKey[ConsoleSettings] = web.AppKey("console_settings", ConsoleSettings)


class TooManyFailures(ExchangeError):
    """Sign-in refused without a password check: too many recent failures (HTTP 429)."""

    title = "Too many failed sign-ins"


@dataclass(frozen=True)
class Session:
    """A signed-in person: the user as the database says now, and the cookie's secret."""

    user: User
    secret: str
    expires: str

    @property
    def csrf(self) -> str:
        return csrf_token(self.secret)


SESSION: web.RequestKey[Session] = web.RequestKey("console_session", Session)


def csrf_token(secret: str) -> str:
    """The CSRF token of a session: only who holds the (HttpOnly) session secret can compute it."""
    return hmac.new(secret.encode(), b"exchange-console-csrf", hashlib.sha256).hexdigest()


def client_address(request: web.Request) -> str:
    """The TCP peer; behind a reverse proxy this is the proxy, so limits would apply to it as a whole."""
    return (request.remote or "unknown")[:64]


def _cookie(response: web.StreamResponse, name: str, value: str, max_age: int | None) -> None:
    response.set_cookie(name, value, path="/", secure=True, httponly=True, samesite="Strict", max_age=max_age)


# -- sessions ---------------------------------------------------------------------------------


async def open_session(store: Store, user: User, address: str, settings: ConsoleSettings) -> Session:
    """A new session for `user` (a fresh secret on every sign-in, so no fixation); audited."""
    secret = secrets.token_urlsafe(32)
    now = utc_now()
    expires = timestamp(now + settings.session_max)

    async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
        stamp = timestamp(now)
        await conn.execute(sa.delete(console_sessions).where(console_sessions.c.expires < stamp))
        await conn.execute(sa.delete(signin_failures).where(signin_failures.c.user == user.name))
        await conn.execute(
            sa.insert(console_sessions).values(
                id_hash=hash_token(secret),
                user=user.name,
                address=address,
                created=stamp,
                expires=expires,
                last_seen=stamp,
            )
        )
        audit.add({"event": "console.signed_in", "at": stamp, "user": user.name, "address": address})

    await store.write(job)
    return Session(user, secret, expires)


async def find_session(store: Store, secret: str | None, settings: ConsoleSettings) -> Session | None:
    """The live session behind a cookie value, or None if it is unknown, expired or idle too long."""
    if not secret or len(secret) > 100:
        return None
    id_hash = hash_token(secret)
    async with store.read() as conn:
        row = (await conn.execute(sa.select(console_sessions).where(console_sessions.c.id_hash == id_hash))).first()
    if row is None:
        return None
    now = utc_now()
    if row.expires <= timestamp(now) or row.last_seen <= timestamp(now - settings.session_idle):
        await _delete_session(store, id_hash)
        return None
    try:
        user = await get_user(store, row.user)
    except NotFound:  # the user was removed since
        await _delete_session(store, id_hash)
        return None
    if row.last_seen <= timestamp(now - settings.touch_every):

        async def touch(conn: AsyncConnection, audit: AuditBuffer) -> None:
            await conn.execute(
                sa.update(console_sessions)
                .where(console_sessions.c.id_hash == id_hash)
                .values(last_seen=timestamp(now))
            )

        await store.write(touch)
    return Session(user, secret, row.expires)


async def _delete_session(store: Store, id_hash: str) -> None:
    async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
        await conn.execute(sa.delete(console_sessions).where(console_sessions.c.id_hash == id_hash))

    await store.write(job)


async def close_session(store: Store, session: Session, address: str) -> None:
    async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
        await conn.execute(sa.delete(console_sessions).where(console_sessions.c.id_hash == hash_token(session.secret)))
        audit.add({"event": "console.signed_out", "at": timestamp(), "user": session.user.name, "address": address})

    await store.write(job)


async def end_sessions(store: Store, user: str, keep: Session | None = None) -> None:
    """End every console session of `user` (but `keep`): after a password change, old ones must not live on."""

    async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
        query = sa.delete(console_sessions).where(console_sessions.c.user == user)
        if keep is not None:
            query = query.where(console_sessions.c.id_hash != hash_token(keep.secret))
        await conn.execute(query)

    await store.write(job)


def set_session_cookie(response: web.StreamResponse, session: Session) -> None:
    _cookie(response, SESSION_COOKIE, session.secret, None)  # a browser-session cookie; the server enforces expiry


def clear_session_cookie(response: web.StreamResponse) -> None:
    _cookie(response, SESSION_COOKIE, "", 0)


async def signed_in(request: web.Request) -> Session:
    """The request's session; Unauthorized (the console redirects to sign-in) if there is none."""
    session = await find_session(
        request.app[SERVICE].store, request.cookies.get(SESSION_COOKIE), request.app[CONSOLE_SETTINGS]
    )
    if session is None:
        raise Unauthorized("please sign in")
    request[USER] = session.user.name
    request[SESSION] = session
    return session


def check_origin(request: web.Request) -> None:
    """A form POST must come from this console's own origin when the browser says where from."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise Forbidden("the form was sent from another site")


async def check_csrf(request: web.Request, session: Session) -> None:
    """Return None if the POST carries this session's CSRF token, else raise Forbidden."""
    check_origin(request)
    form = await request.post()
    sent = form.get(CSRF_FIELD)
    if not isinstance(sent, str) or not hmac.compare_digest(sent, session.csrf):
        raise Forbidden("this form is not valid any more (its security token is missing or wrong); reload and retry")


async def posted_form(request: web.Request) -> tuple[Session, dict[str, str]]:
    """The session and text fields of a CSRF-checked form POST."""
    session = await signed_in(request)
    await check_csrf(request, session)
    form = await request.post()
    return session, {k: v for k, v in form.items() if isinstance(v, str)}


# -- the sign-in form's own CSRF protection (no session yet) ------------------------------------


def signin_token(request: web.Request) -> str:
    """The double-submit token of the sign-in form: the cookie's value, or a new one."""
    current = request.cookies.get(SIGNIN_COOKIE)
    return current if current and 20 <= len(current) <= 100 else secrets.token_urlsafe(32)


def set_signin_cookie(response: web.StreamResponse, token: str) -> None:
    _cookie(response, SIGNIN_COOKIE, token, 3600)


async def check_signin_token(request: web.Request) -> None:
    check_origin(request)
    form = await request.post()
    sent, cookie = form.get(CSRF_FIELD), request.cookies.get(SIGNIN_COOKIE)
    if not isinstance(sent, str) or not cookie or not hmac.compare_digest(sent, cookie):
        raise Forbidden("the sign-in form is not valid any more (its security token is missing or wrong); reload it")


# -- throttling ---------------------------------------------------------------------------------


async def check_password(store: Store, name: str, password: str, address: str, settings: ConsoleSettings) -> User:
    """The user these credentials belong to, under the failure limits; refusals are audited.

    Past a limit the password is not checked at all, so guessing gets no answer while it lasts.
    """
    since = timestamp(utc_now() - settings.failure_window)
    async with store.read() as conn:
        by_user = await conn.scalar(
            sa.select(sa.func.count()).where(signin_failures.c.user == name, signin_failures.c.at > since)
        )
        by_address = await conn.scalar(
            sa.select(sa.func.count()).where(signin_failures.c.address == address, signin_failures.c.at > since)
        )
        known = await conn.scalar(sa.select(users.c.name).where(users.c.name == name)) is not None
    limit = None
    if int(by_user or 0) >= settings.max_failures_per_user:
        limit = "user"
    elif int(by_address or 0) >= settings.max_failures_per_address:
        limit = "address"
    if limit is not None:
        await store.audit(
            {
                "event": "console.signin_throttled",
                "at": timestamp(),
                "limit": limit,
                "address": address,
                **({"user": name} if known else {}),
            }
        )
        minutes = int(settings.failure_window.total_seconds() // 60)
        what = "for this user" if limit == "user" else "from this address"
        raise TooManyFailures(f"Too many failed sign-ins {what}. Try again in {minutes} minutes.")
    try:
        return await verify_password(store, name, password)
    except Unauthorized:
        await _record_failure(store, name, address, known, since)
        raise


async def sign_in(store: Store, name: str, password: str, address: str, settings: ConsoleSettings) -> Session:
    """Check a name and password under the failure limits; a new session, or an audited refusal."""
    user = await check_password(store, name, password, address, settings)
    return await open_session(store, user, address, settings)


async def _record_failure(store: Store, name: str, address: str, known: bool, window_start: str) -> None:
    async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
        now = timestamp()
        await conn.execute(sa.delete(signin_failures).where(signin_failures.c.at <= window_start))
        await conn.execute(sa.insert(signin_failures).values(user=name[:64], address=address, at=now))
        # A name that is no user may be a password typed in the wrong field: it is not logged.
        who = {"user": name} if known else {"unknown_user": True}
        audit.add({"event": "console.signin_failed", "at": now, "address": address, **who})

    await store.write(job)


__all__ = [
    "CONSOLE_SETTINGS",
    "CSRF_FIELD",
    "SESSION",
    "ConsoleSettings",
    "Session",
    "TooManyFailures",
    "check_csrf",
    "check_password",
    "check_signin_token",
    "clear_session_cookie",
    "client_address",
    "close_session",
    "end_sessions",
    "find_session",
    "posted_form",
    "set_session_cookie",
    "set_signin_cookie",
    "sign_in",
    "signed_in",
    "signin_token",
]
