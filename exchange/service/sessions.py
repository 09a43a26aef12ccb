"""Console sessions and accounts: server-side sessions, sign-in throttling, console passwords.

- A session is a 256-bit secret held by the browser; the store keeps only its SHA-256, so a
  copy of the database opens no session. A new secret is made at every sign-in (no fixation).
  A session ends after `session_idle` without use or `session_max` in all, at sign-out, when
  its user is gone, or when the user's password is set.
- Failed sign-ins are counted per user name and per client address over `failure_window`;
  past either limit, sign-in is refused without checking the password. Sign-ins, sign-outs,
  failures and refusals are audited.

The console (`exchange.web`) is the adapter: cookies, CSRF and pages are its business, the
rules and the queries are here.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit import events as ev
from exchange.clock import timestamp, utc_now
from exchange.crypto import hash_token
from exchange.crypto.passwords import check_strength
from exchange.errors import InvalidInput, NotFound, TooManyFailures, Unauthorized, WeakPassword
from exchange.service.users import User, add_user, get_user, list_users, set_password, verify_password
from exchange.service.views import View
from exchange.store import AuditBuffer, Store, console_sessions, signin_failures, user_passwords, users


@dataclass(frozen=True)
class SessionSettings:
    """Session lifetime and sign-in limits (the defaults follow OWASP's session guidance)."""

    session_idle: dt.timedelta = dt.timedelta(minutes=30)
    session_max: dt.timedelta = dt.timedelta(hours=8)
    touch_every: dt.timedelta = dt.timedelta(minutes=1)  # how stale last_seen may get before a write
    failure_window: dt.timedelta = dt.timedelta(minutes=15)
    max_failures_per_user: int = 5
    max_failures_per_address: int = 20


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


class Sessions:
    """Console sessions, sign-in under the failure limits, and console accounts of one node."""

    def __init__(self, store: Store, settings: SessionSettings | None = None) -> None:
        self.store = store
        self.settings = settings or SessionSettings()

    # -- signing in and out ---------------------------------------------------------------

    async def sign_in(self, name: str, password: str, address: str) -> ConsoleSession:
        """Check a name and password under the failure limits: a new session, or an audited refusal."""
        user = await self.check_password(name, password, address)
        return await self.open(user, address)

    async def open(self, user: User, address: str) -> ConsoleSession:
        """A new session for `user` (a fresh secret on every sign-in, so no fixation); audited."""
        secret = secrets.token_urlsafe(32)
        now = utc_now()
        stamp, expires = timestamp(now), timestamp(now + self.settings.session_max)

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
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
            audit.add(ev.ConsoleSignedIn(event=ev.CONSOLE_SIGNED_IN, at=stamp, user=user.name, address=address))

        await self.store.write(job)
        return ConsoleSession(user, secret, expires)

    async def find(self, secret: str | None) -> ConsoleSession | None:
        """The live session behind a secret, or None if it is unknown, expired or idle too long."""
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
        except NotFound:  # the user was removed since
            await self._delete(id_hash)
            return None
        if row.last_seen <= timestamp(now - self.settings.touch_every):

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

    async def end_all(self, user: str, keep: ConsoleSession | None = None) -> None:
        """End every session of `user` (but `keep`): after a password change, old ones must not live on."""

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            query = sa.delete(console_sessions).where(console_sessions.c.user == user)
            if keep is not None:
                query = query.where(console_sessions.c.id_hash != hash_token(keep.secret))
            await conn.execute(query)

        await self.store.write(job)

    async def _delete(self, id_hash: str) -> None:
        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            await conn.execute(sa.delete(console_sessions).where(console_sessions.c.id_hash == id_hash))

        await self.store.write(job)

    # -- throttling -------------------------------------------------------------------------

    async def check_password(self, name: str, password: str, address: str) -> User:
        """The user these credentials belong to, under the failure limits; refusals are audited.

        Past a limit the password is not checked at all, so guessing gets no answer while it lasts.
        """
        settings = self.settings
        since = timestamp(utc_now() - settings.failure_window)
        async with self.store.read() as conn:
            by_user = await conn.scalar(
                sa.select(sa.func.count()).where(signin_failures.c.user == name, signin_failures.c.at > since)
            )
            by_address = await conn.scalar(
                sa.select(sa.func.count()).where(signin_failures.c.address == address, signin_failures.c.at > since)
            )
            known = await conn.scalar(sa.select(users.c.name).where(users.c.name == name)) is not None
        limit: Literal["user", "address"] | None = None
        if int(by_user or 0) >= settings.max_failures_per_user:
            limit = "user"
        elif int(by_address or 0) >= settings.max_failures_per_address:
            limit = "address"
        if limit is not None:
            entry = ev.ConsoleSigninThrottled(
                event=ev.CONSOLE_SIGNIN_THROTTLED, at=timestamp(), limit=limit, address=address
            )
            if known:
                entry["user"] = name
            await self.store.audit(entry)
            minutes = int(settings.failure_window.total_seconds() // 60)
            what = "for this user" if limit == "user" else "from this address"
            raise TooManyFailures(f"Too many failed sign-ins {what}. Try again in {minutes} minutes.")
        try:
            return await verify_password(self.store, name, password)
        except Unauthorized:
            await self._record_failure(name, address, known, since)
            raise

    async def _record_failure(self, name: str, address: str, known: bool, window_start: str) -> None:
        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            now = timestamp()
            await conn.execute(sa.delete(signin_failures).where(signin_failures.c.at <= window_start))
            await conn.execute(sa.insert(signin_failures).values(user=name[:64], address=address, at=now))
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
        await set_password(self.store, name, new, actor=name)
        await self.end_all(name, keep=session)

    async def set_password(self, actor: User, name: str, password: str, keep: ConsoleSession | None = None) -> None:
        """An administrator sets someone's password; that person's sessions end (but `keep`)."""
        actor.require("admin")
        await set_password(self.store, name, password, actor=actor.name)
        await self.end_all(name, keep=keep if keep is not None and keep.user.name == name else None)

    async def add_person(self, actor: User, name: str, role: str, password: str) -> None:
        """An administrator adds a user with a console password (its API token: `exchange users token`)."""
        actor.require("admin")
        if not name or len(name) > 64 or not name.replace("-", "").replace(".", "").replace("_", "").isalnum():
            raise InvalidInput("a user name has letters, digits, dots, dashes or underscores, at most 64")
        try:
            check_strength(password)  # before the user exists, so no user is left without one
        except WeakPassword as exc:
            raise InvalidInput(exc.detail) from exc
        await add_user(self.store, name, role, actor=actor.name)
        await set_password(self.store, name, password, actor=actor.name)

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
            )
            for p in everyone
        ]


__all__ = ["ConsoleSession", "Person", "SessionSettings", "Sessions"]
