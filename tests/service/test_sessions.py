"""Console sessions and accounts in the application layer (no HTTP): sign-in under the failure
limits, expiry, sign-out, password changes that end other sessions, and the administrators' list."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exchange.errors import Forbidden, InvalidInput, NotFound, TooManyFailures, Unauthorized
from exchange.service.node import NodeService
from exchange.service.sessions import Sessions, SessionSettings
from exchange.store import audit_log, console_sessions
from tests.service.lone_node import PASSWORD, lone_node

ADDRESS = "192.0.2.7"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[NodeService]:
    async for svc in lone_node(tmp_path / "nodes"):
        await svc.users.set_password("officer", PASSWORD, actor="test")
        await svc.users.set_password("admin", PASSWORD, actor="test")
        yield svc


async def console_events(service: NodeService) -> list[dict[str, Any]]:
    async with service.store.read() as conn:
        entries = [json.loads(e) for e in await conn.scalars(sa.select(audit_log.c.entry).order_by(audit_log.c.idx))]
    return [
        {k: v for k, v in e.items() if k not in ("idx", "at")} for e in entries if e["event"].startswith("console.")
    ]


async def stored_sessions(service: NodeService) -> list[str]:
    async with service.store.read() as conn:
        return list(await conn.scalars(sa.select(console_sessions.c.id_hash)))


async def test_sign_in_find_and_sign_out(service: NodeService) -> None:
    sessions = Sessions(service.store)
    session = await sessions.sign_in("officer", PASSWORD, ADDRESS)
    assert session.user.name == "officer" and session.user.role == "contact-point"
    assert session.secret not in await stored_sessions(service)  # only its hash is kept
    found = await sessions.find(session.secret)
    assert found is not None and found.user == session.user
    assert await sessions.find("not a session") is None and await sessions.find(None) is None
    await sessions.close(session, ADDRESS)
    assert await sessions.find(session.secret) is None
    assert await console_events(service) == [
        {"event": "console.signed_in", "user": "officer", "address": ADDRESS},
        {"event": "console.signed_out", "user": "officer", "address": ADDRESS},
    ]


async def test_failures_are_counted_then_sign_in_is_refused_unchecked(service: NodeService) -> None:
    sessions = Sessions(service.store, SessionSettings(max_failures_per_user=2, max_failures_per_address=3))
    for _ in range(2):
        with pytest.raises(Unauthorized):
            await sessions.sign_in("officer", "not the password", ADDRESS)
    with pytest.raises(TooManyFailures, match="for this user"):
        await sessions.sign_in("officer", PASSWORD, ADDRESS)  # even the right one
    with pytest.raises(Unauthorized):
        await sessions.sign_in("my secret password", "typed in the wrong field", ADDRESS)
    with pytest.raises(TooManyFailures, match="from this address"):
        await sessions.sign_in("admin", PASSWORD, ADDRESS)
    assert await sessions.sign_in("admin", PASSWORD, "198.51.100.1")  # elsewhere, admin is fine
    assert await console_events(service) == [
        {"event": "console.signin_failed", "user": "officer", "address": ADDRESS},
        {"event": "console.signin_failed", "user": "officer", "address": ADDRESS},
        {"event": "console.signin_throttled", "limit": "user", "user": "officer", "address": ADDRESS},
        {"event": "console.signin_failed", "unknown_user": True, "address": ADDRESS},  # the name is not logged
        {"event": "console.signin_throttled", "limit": "address", "user": "admin", "address": ADDRESS},
        {"event": "console.signed_in", "user": "admin", "address": "198.51.100.1"},
    ]


async def test_idle_and_too_old_sessions_end(service: NodeService) -> None:
    for settings in (SessionSettings(session_idle=dt.timedelta(0)), SessionSettings(session_max=dt.timedelta(0))):
        sessions = Sessions(service.store, settings)
        session = await sessions.sign_in("officer", PASSWORD, ADDRESS)
        assert await sessions.find(session.secret) is None
        assert await stored_sessions(service) == []  # and it is deleted


async def test_a_password_change_ends_the_other_sessions(service: NodeService) -> None:
    sessions = Sessions(service.store)
    here = await sessions.sign_in("officer", PASSWORD, ADDRESS)
    there = await sessions.sign_in("officer", PASSWORD, "198.51.100.1")
    with pytest.raises(Unauthorized):
        await sessions.change_own_password(here, "not the current one", "a new long passphrase", ADDRESS)
    await sessions.change_own_password(here, PASSWORD, "a new long passphrase", ADDRESS)
    assert await sessions.find(here.secret) is not None
    assert await sessions.find(there.secret) is None
    assert (await service.users.verify_password("officer", "a new long passphrase")).name == "officer"

    # An administrator's reset ends all of that person's sessions.
    admin = await sessions.sign_in("admin", PASSWORD, ADDRESS)
    await sessions.set_password(admin.user, "officer", "yet another passphrase", keep=admin)
    assert await sessions.find(here.secret) is None
    assert await sessions.find(admin.secret) is not None
    with pytest.raises(Forbidden):
        await sessions.set_password(here.user, "admin", "a takeover passphrase")


async def test_the_administrators_list_and_adding_people(service: NodeService) -> None:
    sessions = Sessions(service.store)
    admin = await sessions.sign_in("admin", PASSWORD, ADDRESS)
    people = {p.name: (p.role, p.channels, p.password, p.online) for p in await sessions.people(admin.user)}
    assert people == {
        "admin": ("admin", [], True, True),
        "auditor": ("auditor", [], False, False),
        "clerk": ("contact-point", ["c2c"], False, False),
        "officer": ("contact-point", ["c2c", "c2x"], True, False),
    }
    with pytest.raises(Forbidden):
        await sessions.people(await service.users.get("officer"))

    with pytest.raises(InvalidInput, match="user name"):
        await sessions.add_person(admin.user, "no spaces allowed", "auditor", PASSWORD)
    with pytest.raises(InvalidInput, match="at least 12"):
        await sessions.add_person(admin.user, "newcomer", "auditor", "short")
    with pytest.raises(NotFound):
        await service.users.get("newcomer")  # no user is left without a password
    await sessions.add_person(admin.user, "newcomer", "auditor", PASSWORD)
    assert (await sessions.sign_in("newcomer", PASSWORD, ADDRESS)).user.role == "auditor"
