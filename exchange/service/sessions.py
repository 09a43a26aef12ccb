"""Console sessions and accounts: server-side sessions, sign-in throttling, console passwords.

- A session is a 256-bit secret held by the browser; the store keeps only its SHA-256, so a
  copy of the database opens no session. A new secret is made at every sign-in (no fixation).
  A session ends after `session_idle` without use or `session_max` in all, at sign-out, when
  its user is disabled (`exchange users disable`), or when the user's password is set. Only the
  person's own requests are use: the live inbox's checks are not (`find(use=False)`).
- Sign-in throttling slows whoever guesses, never the person elsewhere whose account it is.
  Failed sign-ins are counted over `failure_window` per client address (an IPv6 /64), and per
  user name *from that address*. Past `max_failures_per_address` from an address, or
  `max_failures_per_user` for one name from it, each further attempt from there must wait a
  delay that doubles with every failure (`first_delay`, up to `max_delay`); an attempt that comes
  sooner is refused (429, Retry-After) without checking the password. Nothing is counted per user
  name across addresses, so no one can lock an officer out by guessing from elsewhere: the
  officer's own address has no failures. Sign-ins, sign-outs, failures and refusals are audited
  (refusals within the bounds of `exchange.service.rejections`).

The console (`exchange.web`) is the adapter: cookies, CSRF and pages are its business, the
rules and the queries are here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import secrets
from dataclasses import dataclass
from typing import ClassVar, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit import events as ev
from exchange.clock import timestamp, utc_now
from exchange.crypto import hash_token
from exchange.crypto.passwords import check_strength
from exchange.errors import Forbidden, InvalidInput, NotFound, TooManyFailures, Unauthorized, WeakPassword
from exchange.service.rejections import Refusals, client_key
from exchange.service.users import (
    User,
    add_user,
    disable_user,
    enable_user,
    get_user,
    list_users,
    set_password,
    verify_password,
)
from exchange.service.views import View
from exchange.store import AuditBuffer, Store, console_sessions, signin_failures, user_passwords, users


@dataclass(frozen=True)
class SessionSettings:
    """Session lifetime and sign-in throttling (the defaults follow OWASP's session and
    authentication guidance: slow the guesser down, do not lock the account)."""

    session_idle: dt.timedelta = dt.timedelta(minutes=30)
    session_max: dt.timedelta = dt.timedelta(hours=8)
    touch_every: dt.timedelta = dt.timedelta(minutes=1)  # how stale last_seen may get before a write
    failure_window: dt.timedelta = dt.timedelta(hours=1)  # how long a failure counts
    max_failures_per_user: int = 5  # failures for one user name from one address before delays begin
    max_failures_per_address: int = 20  # failures from one address, whatever the names, before delays begin
    first_delay: dt.timedelta = dt.timedelta(seconds=30)  # then twice as long after each further failure
    max_delay: dt.timedelta = dt.timedelta(minutes=15)

    def delay(self, failures: int, free: int) -> dt.timedelta:
        """How long after the last of `failures` the next attempt must wait, `free` being the allowance."""
        if failures < free:
            return dt.timedelta(0)
        return min(self.max_delay, self.first_delay * (1 << min(failures - free, 32)))


@dataclass(frozen=True)
class ConsoleSession:
    """A signed-in person: the user as the database says now, and the session's secret."""

    user: User
    secret: str
    expires: str


@dataclass(frozen=True)
class Person(View):
    """A local user as the administration page lists them."""

    name: str
    role: str
    channels: list[str]
    password: bool  # has a console password
    online: bool  # has a live, recently used console session
    disabled_since: (
        str | None
    )  # when an administrator disabled it (`exchange users disable`, or the console); None: enabled


class Sessions:
    """Console sessions, sign-in under the failure limits, and console accounts of one node."""

    # One sign-in check at a time per client address in this process (the console makes a
    # Sessions per request), so that each sees the failures of the ones before it: guesses sent
    # at once no longer all get their passwords checked. With N worker processes a burst gets at
    # most N - 1 checks more than the limit. Each lock, with the number of checks using it.
    _checking: ClassVar[dict[str, tuple[asyncio.Lock, int]]] = {}

    def __init__(self, store: Store, settings: SessionSettings | None = None, refusals: Refusals | None = None) -> None:
        self.store = store
        self.settings = settings or SessionSettings()
        self.refusals = refusals  # if given, throttled attempts are audited within its budget

    # -- signing in and out ---------------------------------------------------------------

    async def sign_in(self, name: str, password: str, address: str) -> ConsoleSession:
        """Check a name and password under the failure limits: a new session, or an audited refusal."""
        user = await self.check_password(name, password, address)
        if user.role == "feed":  # a platform's user: TAXII and STIX exports only, no console
            raise Forbidden(f"user {user.name!r} is a feed: it has no console")
        return await self.open(user, address)

    async def open(self, user: User, address: str) -> ConsoleSession:
        """A new session for `user` (a fresh secret on every sign-in, so no fixation); audited."""
        secret = secrets.token_urlsafe(32)
        now = utc_now()
        stamp, expires = timestamp(now), timestamp(now + self.settings.session_max)

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            await conn.execute(sa.delete(console_sessions).where(console_sessions.c.expires < stamp))
            # Only this address's failures for this name: a guesser elsewhere keeps what it earned.
            await conn.execute(
                sa.delete(signin_failures).where(
                    signin_failures.c.user == user.name, signin_failures.c.address == client_key(address)
                )
            )
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
            audit.add(ev.ConsoleSignedIn(event=ev.CONSOLE_SIGNED_IN, at=stamp, user=user.name, address=address))

        await self.store.write(job)
        return ConsoleSession(user, secret, expires)

    async def find(self, secret: str | None, *, use: bool = True) -> ConsoleSession | None:
        """The live session behind a secret, or None if it is unknown, expired or idle too long.

        A request the person made is a use (`use`): the idle time starts again. A check the
        console makes by itself, such as the live inbox's event stream every few seconds and at each
        reconnection, passes `use=False`; otherwise a tab left open on an unattended
        workstation would keep its session alive until `session_max`.
        """
        if not secret or len(secret) > 100:
            return None
        id_hash = hash_token(secret)
        async with self.store.read() as conn:
            row = (await conn.execute(sa.select(console_sessions).where(console_sessions.c.id_hash == id_hash))).first()
        if row is None:
            return None
        now = utc_now()
        if row.expires <= timestamp(now) or row.last_seen <= timestamp(now - self.settings.session_idle):
            await self._delete(id_hash)
            return None
        try:
            user = await get_user(self.store, row.user)
        except NotFound:  # the user was disabled since
            await self._delete(id_hash)
            return None
        if use and row.last_seen <= timestamp(now - self.settings.touch_every):

            async def touch(conn: AsyncConnection, audit: AuditBuffer) -> None:
                await conn.execute(
                    sa.update(console_sessions)
                    .where(console_sessions.c.id_hash == id_hash)
                    .values(last_seen=timestamp(now))
                )

            await self.store.write(touch)
        return ConsoleSession(user, secret, row.expires)

    async def close(self, session: ConsoleSession, address: str) -> None:
        """Sign out: the session ends; audited."""

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            await conn.execute(
                sa.delete(console_sessions).where(console_sessions.c.id_hash == hash_token(session.secret))
            )
            audit.add(
                ev.ConsoleSignedOut(
                    event=ev.CONSOLE_SIGNED_OUT, at=timestamp(), user=session.user.name, address=address
                )
            )

        await self.store.write(job)

    async def _delete(self, id_hash: str) -> None:
        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            await conn.execute(sa.delete(console_sessions).where(console_sessions.c.id_hash == id_hash))

        await self.store.write(job)

    # -- throttling -------------------------------------------------------------------------

    async def check_password(self, name: str, password: str, address: str) -> User:
        """The user these credentials belong to, under the sign-in throttle; refusals are audited.

        While a delay runs, the password is not checked at all, so guessing gets no answer.
        """
        key = client_key(address)
        lock, users_ = self._checking.get(key, (asyncio.Lock(), 0))
        self._checking[key] = (lock, users_ + 1)
        try:
            async with lock:
                return await self._check_password(name, password, address, key)
        finally:
            lock, users_ = self._checking[key]
            if users_ == 1:
                del self._checking[key]
            else:
                self._checking[key] = (lock, users_ - 1)

    async def _check_password(self, name: str, password: str, address: str, key: str) -> User:
        settings, now = self.settings, utc_now()
        since = timestamp(now - settings.failure_window)
        recent = sa.select(sa.func.count(), sa.func.max(signin_failures.c.at)).where(
            signin_failures.c.address == key, signin_failures.c.at > since
        )
        async with self.store.read() as conn:
            count, last = (await conn.execute(recent.where(signin_failures.c.user == name[:64]))).one()
            by_user = (int(count), last)
            count, last = (await conn.execute(recent)).one()
            by_address = (int(count), last)
            known = await conn.scalar(sa.select(users.c.name).where(users.c.name == name)) is not None
        waits = {
            "user": self._wait(by_user, settings.max_failures_per_user, now),
            "address": self._wait(by_address, settings.max_failures_per_address, now),
        }
        if any(waits.values()):
            limit: Literal["user", "address"] = "user" if waits["user"] else "address"
            await self._throttled(name if known else None, address, key, limit)
            retry = math.ceil(max(waits.values()))
            what = "for this user from this address" if limit == "user" else "from this address"
            raise TooManyFailures(f"Too many failed sign-ins {what}. Try again in {_duration(retry)}.", retry)
        try:
            return await verify_password(self.store, name, password)
        except Unauthorized:
            await self._record_failure(name, address, known, since)
            raise

    def _wait(self, failures: tuple[int, str | None], free: int, now: dt.datetime) -> float:
        """Seconds until the next attempt may be checked, after `failures` (their count and latest time)."""
        count, last = failures
        if not count or last is None:
            return 0.0
        due = dt.datetime.fromisoformat(last) + self.settings.delay(int(count), free)
        return max(0.0, (due - now).total_seconds())

    async def _throttled(self, user: str | None, address: str, key: str, limit: Literal["user", "address"]) -> None:
        """Audit a throttled attempt: an entry of its own within the refusals' budget, else counted."""
        if self.refusals is not None and not self.refusals.take_exact(key):
            self.refusals.count(address, 429, "sign-in throttled", "POST sign-in")
            return
        entry = ev.ConsoleSigninThrottled(
            event=ev.CONSOLE_SIGNIN_THROTTLED, at=timestamp(), limit=limit, address=address
        )
        if user is not None:
            entry["user"] = user
        await self.store.audit(entry)

    async def _record_failure(self, name: str, address: str, known: bool, window_start: str) -> None:
        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            now = timestamp()
            await conn.execute(sa.delete(signin_failures).where(signin_failures.c.at <= window_start))
            await conn.execute(sa.insert(signin_failures).values(user=name[:64], address=client_key(address), at=now))
            entry = ev.ConsoleSigninFailed(event=ev.CONSOLE_SIGNIN_FAILED, at=now, address=address)
            # A name that is no user may be a password typed in the wrong field: it is not logged.
            if known:
                entry["user"] = name
            else:
                entry["unknown_user"] = True
            audit.add(entry)

        await self.store.write(job)

    # -- passwords and accounts -------------------------------------------------------------

    async def change_own_password(self, session: ConsoleSession, current: str, new: str, address: str) -> None:
        """A person changes their own password: the current one is checked under the sign-in
        limits, and their other sessions end."""
        name = session.user.name
        await self.check_password(name, current, address)
        await set_password(self.store, name, new, actor=name, keep=hash_token(session.secret))

    async def set_password(self, actor: User, name: str, password: str, keep: ConsoleSession | None = None) -> None:
        """An administrator sets someone's password; that person's sessions end (but `keep`)."""
        actor.require("admin")
        kept = hash_token(keep.secret) if keep is not None and keep.user.name == name else None
        await set_password(self.store, name, password, actor=actor.name, keep=kept)

    async def add_person(self, actor: User, name: str, role: str, password: str) -> None:
        """An administrator adds a user with a console password (its API token: `exchange users token`)."""
        actor.require("admin")
        if not name or len(name) > 64 or not name.replace("-", "").replace(".", "").replace("_", "").isalnum():
            raise InvalidInput("a user name has letters, digits, dots, dashes or underscores, at most 64")
        try:
            check_strength(password)  # before the user exists, so no user is left without one
        except WeakPassword as exc:
            raise InvalidInput(exc.detail) from exc
        await add_user(self.store, name, role, actor=actor.name, password=password)  # one transaction

    async def set_disabled(self, actor: User, name: str, *, disabled: bool) -> None:
        """An administrator locks a user out (`disable_user`: token, password and sessions end; the
        last enabled admin is refused) or lets it in again (`enable_user`; its new API token is not
        shown here, `exchange users token` gives one; the console needs a new password)."""
        actor.require("admin")
        if disabled:
            await disable_user(self.store, name, actor=actor.name)
        else:
            await enable_user(self.store, name, actor=actor.name)

    async def people(self, actor: User) -> list[Person]:
        """Every local user with their channels, whether they have a password and are signed in now."""
        actor.require("admin")
        everyone = await list_users(self.store)
        now = utc_now()
        idle_since = timestamp(now - self.settings.session_idle)
        async with self.store.read() as conn:
            with_password = set(await conn.scalars(sa.select(user_passwords.c.user)))
            online = set(
                await conn.scalars(
                    sa.select(console_sessions.c.user)
                    .where(console_sessions.c.expires > timestamp(now), console_sessions.c.last_seen > idle_since)
                    .distinct()
                )
            )
        return [
            Person(
                name=p.name,
                role=p.role,
                channels=sorted(p.channels),
                password=p.name in with_password,
                online=p.name in online,
                disabled_since=p.disabled_at,
            )
            for p in everyone
        ]


def _duration(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} seconds"
    return f"{math.ceil(seconds / 60)} minutes"


__all__ = ["ConsoleSession", "Person", "SessionSettings", "Sessions"]
