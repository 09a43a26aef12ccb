"""Local users of a node and their roles; API tokens are stored only as hashes.

A disabled user (`disable_user`: an officer who left) authenticates by no path: its token and
console password are refused as unknown ones are, and `get_user` does not find it, so its console
sessions and followers end at their next check.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit import events as ev
from exchange.clock import timestamp
from exchange.crypto import hash_token, new_token
from exchange.crypto.passwords import WeakPassword, hash_password, password_matches
from exchange.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from exchange.model import ROLES, Role
from exchange.store import AuditBuffer, Store, console_sessions, user_channels, user_passwords, users


@dataclass(frozen=True)
class User:
    name: str
    role: str
    channels: frozenset[str] = frozenset()
    disabled_at: str | None = None  # set only in `list_users`: no other function returns a disabled user

    def require(self, *roles: Role) -> None:
        """Return None if this user has one of `roles`, else raise Forbidden."""
        if self.role not in roles:
            needs = " or ".join(roles)
            raise Forbidden(f"user {self.name!r} ({self.role}) may not do this: it needs the {needs} role")

    def require_channel(self, channel: str) -> None:
        """A contact point works only in the channels assigned to them."""
        self.require("contact-point")
        if channel not in self.channels:
            raise Forbidden(f"user {self.name!r} is not assigned to channel {channel!r}")


# A user's name: what the audit log, the console and TAXII's Basic sign-in (name:password, split on
# the first colon) all carry as it is. An e-mail address fits; spaces, slashes, colons and control
# characters do not, and 64 characters is the column's width on PostgreSQL (SQLite would take more).
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


async def add_user(store: Store, name: str, role: str, *, actor: str = "cli", password: str | None = None) -> str:
    """Create a user and return its new token (shown once, stored hashed); with `password`, its
    console password too, in the same transaction: a password that fails leaves no user behind."""
    if not USER_NAME.fullmatch(name):
        raise InvalidInput(
            "a user name is 1 to 64 letters, digits and . _ @ + - (starting with a letter or a digit), "
            "without spaces, slashes or colons"
        )
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}")
    token = new_token()
    hashed = None if password is None else await _hashed(password)

    async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
        exists = await conn.scalar(sa.select(users.c.name).where(users.c.name == name))
        if exists:
            raise Conflict(f"user {name!r} already exists")
        now = timestamp()
        await conn.execute(sa.insert(users).values(name=name, role=role, token_hash=hash_token(token), created=now))
        audit.add(ev.UserCreated(event=ev.USER_CREATED, at=now, user=name, role=role, actor=actor))
        if hashed is not None:
            await conn.execute(sa.insert(user_passwords).values(user=name, hash=hashed, set_at=now))
            audit.add(ev.UserPasswordSet(event=ev.USER_PASSWORD_SET, at=now, user=name, actor=actor))

    await store.write(job)
    return token


async def _account(conn: AsyncConnection, name: str) -> tuple[str, str | None]:
    """The role of user `name` and when it was disabled (None: enabled); NotFound if there is none."""
    row = (await conn.execute(sa.select(users.c.role, users.c.disabled_at).where(users.c.name == name))).first()
    if row is None:
        raise NotFound(f"no user {name!r}")
    return row.role, row.disabled_at


async def rotate_token(store: Store, name: str, *, actor: str = "cli") -> str:
    """Replace a user's token and return the new one; refused for a disabled user, whom only
    `enable_user` lets in again."""
    token = new_token()

    async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
        if (await _account(conn, name))[1] is not None:
            raise Conflict(f"user {name!r} is disabled; `exchange users enable` gives it a new token")
        await conn.execute(sa.update(users).where(users.c.name == name).values(token_hash=hash_token(token)))
        audit.add(ev.UserTokenRotated(event=ev.USER_TOKEN_ROTATED, at=timestamp(), user=name, actor=actor))

    await store.write(job)
    return token


async def disable_user(store: Store, name: str, *, actor: str) -> None:
    """Lock a user out at once (an officer who left): in one transaction its token is replaced by
    one never shown, its console password deleted and its console sessions ended, on every worker,
    since they live in the database; audited. Refused for the node's last enabled admin."""

    async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
        role, disabled_at = await _account(conn, name)
        if disabled_at is not None:
            raise Conflict(f"user {name!r} is disabled already (since {disabled_at})")
        # Write transactions take turns (the log's lock; SQLite's write lock), so two admins
        # disabled at once cannot both see the other one still enabled.
        enabled_admins = sa.select(sa.func.count()).where(users.c.role == "admin", users.c.disabled_at.is_(None))
        if role == "admin" and not await conn.scalar(enabled_admins.where(users.c.name != name)):
            raise Conflict(f"user {name!r} is the node's last enabled admin: add or enable another admin first")
        now = timestamp()
        # A token and password destroyed, not only refused: a downgrade past revision 0010, which
        # forgets disabled_at, lets no one in with them.
        await conn.execute(
            sa.update(users).where(users.c.name == name).values(disabled_at=now, token_hash=hash_token(new_token()))
        )
        await conn.execute(sa.delete(user_passwords).where(user_passwords.c.user == name))
        await conn.execute(sa.delete(console_sessions).where(console_sessions.c.user == name))
        audit.add(ev.UserDisabled(event=ev.USER_DISABLED, at=now, user=name, actor=actor))

    await store.write(job)


async def enable_user(store: Store, name: str, *, actor: str) -> str:
    """Let a disabled user in again: its new token is returned (shown once, stored hashed); it has
    no console password until one is set. Audited."""
    token = new_token()

    async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
        if (await _account(conn, name))[1] is None:
            raise Conflict(f"user {name!r} is not disabled; `exchange users token` replaces its token")
        await conn.execute(
            sa.update(users).where(users.c.name == name).values(disabled_at=None, token_hash=hash_token(token))
        )
        audit.add(ev.UserEnabled(event=ev.USER_ENABLED, at=timestamp(), user=name, actor=actor))

    await store.write(job)
    return token


async def list_users(store: Store) -> list[User]:
    """Every local user, disabled ones included (with `disabled_at`)."""
    query = sa.select(users.c.name, users.c.role, users.c.disabled_at).order_by(users.c.name)
    async with store.read() as conn:
        rows = (await conn.execute(query)).all()
        assigned = (await conn.execute(sa.select(user_channels.c.user, user_channels.c.channel))).all()
    return [User(r.name, r.role, frozenset(c for u, c in assigned if u == r.name), r.disabled_at) for r in rows]


async def assign(store: Store, name: str, channel: str, *, assigned: bool, actor: str) -> None:
    """Give a contact point a channel to work in, or take it away; audited either way."""

    async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
        role = await conn.scalar(sa.select(users.c.role).where(users.c.name == name))
        if role is None:
            raise NotFound(f"no user {name!r}")
        if role not in ("contact-point", "feed"):
            raise InvalidInput("only contact points and feeds are assigned to channels")
        where = sa.and_(user_channels.c.user == name, user_channels.c.channel == channel)
        present = await conn.scalar(sa.select(user_channels.c.user).where(where))
        if assigned and present is None:
            await conn.execute(sa.insert(user_channels).values(user=name, channel=channel))
        elif not assigned and present is not None:
            await conn.execute(sa.delete(user_channels).where(where))
        else:
            return
        if assigned:
            audit.add(ev.UserAssigned(event=ev.USER_ASSIGNED, at=timestamp(), user=name, channel=channel, actor=actor))
        else:
            audit.add(
                ev.UserUnassigned(event=ev.USER_UNASSIGNED, at=timestamp(), user=name, channel=channel, actor=actor)
            )

    await store.write(job)


async def authenticate(store: Store, token: str | None) -> User:
    """The enabled user a bearer token belongs to; Unauthorized if none."""
    if not token:
        raise Unauthorized("a bearer token is required")
    # One statement (every request makes it): the user and, a row each, the channels assigned.
    query = (
        sa.select(users.c.name, users.c.role, user_channels.c.channel)
        .select_from(users.outerjoin(user_channels, user_channels.c.user == users.c.name))
        .where(users.c.token_hash == hash_token(token), users.c.disabled_at.is_(None))
    )
    async with store.read() as conn:
        rows = (await conn.execute(query)).all()
    if not rows:
        raise Unauthorized("unknown token")
    return User(rows[0].name, rows[0].role, frozenset(r.channel for r in rows if r.channel is not None))


# -- console passwords (exchange.web) ---------------------------------------------------------


async def get_user(store: Store, name: str) -> User:
    """An enabled user by name, with the channels assigned now; NotFound if there is none or it
    is disabled (a console session of a disabled user ends at its next request)."""
    async with store.read() as conn:
        role = await conn.scalar(sa.select(users.c.role).where(users.c.name == name, users.c.disabled_at.is_(None)))
        if role is None:
            raise NotFound(f"no user {name!r}")
        channels = await conn.scalars(sa.select(user_channels.c.channel).where(user_channels.c.user == name))
        return User(name, role, frozenset(channels))


async def _hashed(password: str) -> str:
    """A password's argon2id hash, made off the event loop; InvalidInput if it is too weak."""
    try:
        return await asyncio.to_thread(hash_password, password)
    except WeakPassword as exc:
        raise InvalidInput(str(exc)) from exc


async def set_password(store: Store, name: str, password: str, *, actor: str, keep: str | None = None) -> None:
    """Give a user a console password (stored as an argon2id hash); audited, never the password.
    The user's console sessions end in the same transaction, whoever sets it (the console, the
    CLI, provisioning), but the one whose id hash is `keep` (the person changing their own).
    Refused for a disabled user: it holds no credential until `enable_user`."""
    hashed = await _hashed(password)

    async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
        if (await _account(conn, name))[1] is not None:
            raise Conflict(f"user {name!r} is disabled; `exchange users enable` first")
        now = timestamp()
        done = await conn.execute(
            sa.update(user_passwords).where(user_passwords.c.user == name).values(hash=hashed, set_at=now)
        )
        if done.rowcount == 0:
            await conn.execute(sa.insert(user_passwords).values(user=name, hash=hashed, set_at=now))
        ended = sa.delete(console_sessions).where(console_sessions.c.user == name)
        if keep is not None:
            ended = ended.where(console_sessions.c.id_hash != keep)
        await conn.execute(ended)
        audit.add(ev.UserPasswordSet(event=ev.USER_PASSWORD_SET, at=now, user=name, actor=actor))

    await store.write(job)


async def verify_password(store: Store, name: str, password: str) -> User:
    """The user whose name and password these are; Unauthorized, after the same work, if not."""
    async with store.read() as conn:
        stored = await conn.scalar(sa.select(user_passwords.c.hash).where(user_passwords.c.user == name))
    # argon2 releases the GIL: a sign-in costs a worker thread, not the event loop.
    if not await asyncio.to_thread(password_matches, stored, password):
        raise Unauthorized("wrong user name or password")
    try:
        return await get_user(store, name)
    except NotFound as exc:
        raise Unauthorized("wrong user name or password") from exc


class Users:
    """The node's users, as adapters reach them: the functions above over this node's store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def add(self, name: str, role: str, *, actor: str) -> str:
        return await add_user(self.store, name, role, actor=actor)

    async def rotate_token(self, name: str, *, actor: str) -> str:
        return await rotate_token(self.store, name, actor=actor)

    async def disable(self, name: str, *, actor: str) -> None:
        await disable_user(self.store, name, actor=actor)

    async def enable(self, name: str, *, actor: str) -> str:
        return await enable_user(self.store, name, actor=actor)

    async def list(self) -> list[User]:
        return await list_users(self.store)

    async def get(self, name: str) -> User:
        return await get_user(self.store, name)

    async def assign(self, name: str, channel: str, *, assigned: bool, actor: str) -> None:
        await assign(self.store, name, channel, assigned=assigned, actor=actor)

    async def authenticate(self, token: str | None) -> User:
        return await authenticate(self.store, token)

    async def set_password(self, name: str, password: str, *, actor: str) -> None:
        await set_password(self.store, name, password, actor=actor)

    async def verify_password(self, name: str, password: str) -> User:
        return await verify_password(self.store, name, password)
