"""Console sign-in is throttled per client address with growing delays, and never locks the real
user out (exchange.service.sessions). Must show 5, second half: an officer whose password was
tried 100 times by someone at another address can still sign in.

Real nodes over TLS, the console through plain HTTP requests; the guesser connects from a
loopback alias (127.0.0.2, 127.0.0.3), the officer from 127.0.0.1. Time passing is simulated by
moving the stored failure times back, never by sleeping.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from exchange.keystore import read_file
from exchange.node.tls import client_context
from exchange.store import audit_log, signin_failures
from tests.conftest import DEFAULT_NODES, MakeFederation, Member

PASSWORD = "a long passphrase for tests"
NL = "nl-customs"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')

pytestmark = pytest.mark.parametrize("database", ["sqlite", "postgres"], indirect=True)


@dataclass
class Attempt:
    status: int
    location: str
    retry_after: int | None
    page: str


@dataclass
class Browser:
    """Someone at one client address with a cookie jar, as a browser would be."""

    http: aiohttp.ClientSession
    url: str
    csrf: str = ""

    async def sign_in(self, user: str, password: str) -> Attempt:
        if not self.csrf:
            async with self.http.get(self.url + "/console/sign-in") as resp:
                found = CSRF.search(await resp.text())
                assert found is not None
                self.csrf = found.group(1)
        form = {"csrf": self.csrf, "user": user, "password": password, "next": ""}
        async with self.http.post(self.url + "/console/sign-in", data=form, allow_redirects=False) as resp:
            retry = resp.headers.get("Retry-After")
            return Attempt(
                resp.status, resp.headers.get("Location", ""), int(retry) if retry else None, await resp.text()
            )


@pytest.fixture
async def node(make_federation: MakeFederation) -> Member:
    fed = await make_federation(nodes={NL: DEFAULT_NODES[NL]})
    nl = fed[NL]
    for user in ("officer", "admin"):
        await nl.service.users.set_password(user, PASSWORD, actor="test")
    return nl


@pytest.fixture
async def browser(node: Member) -> AsyncIterator[Callable[[str], Browser]]:
    """browser(address) -> someone at that loopback address."""
    sessions: list[aiohttp.ClientSession] = []
    ctx = client_context(read_file(node.config.keys_dir / "tls.crt").decode())

    def make(address: str) -> Browser:
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, local_addr=(address, 0)),
            cookie_jar=aiohttp.CookieJar(unsafe=True),  # the node is an IP address
        )
        sessions.append(http)
        return Browser(http, node.config.endpoint)

    yield make
    for http in sessions:
        await http.close()


async def console_events(node: Member) -> list[dict[str, Any]]:
    async with node.service.store.read() as conn:
        entries = [json.loads(e) for e in await conn.scalars(sa.select(audit_log.c.entry).order_by(audit_log.c.idx))]
    return [e for e in entries if e["event"].startswith("console.") or e["event"] == "requests.refused"]


async def time_passes(node: Member, seconds: float) -> None:
    """As if `seconds` had passed since every recorded failure."""
    async with node.service.store.read() as conn:
        rows = (await conn.execute(sa.select(signin_failures.c.n, signin_failures.c.at))).all()

    async def job(conn: Any, audit: Any) -> None:
        for n, at in rows:
            earlier = dt.datetime.fromisoformat(at) - dt.timedelta(seconds=seconds)
            stamp = earlier.strftime("%Y-%m-%dT%H:%M:%S.") + f"{earlier.microsecond // 1000:03d}Z"
            await conn.execute(sa.update(signin_failures).where(signin_failures.c.n == n).values(at=stamp))

    await node.service.store.write(job)


async def test_an_officer_whose_password_was_tried_100_times_from_elsewhere_still_signs_in(
    node: Member, browser: Callable[[str], Browser]
) -> None:
    guesser, officer = browser("127.0.0.2"), browser("127.0.0.1")
    attempts = [await guesser.sign_in("officer", f"guess number {i}") for i in range(100)]
    statuses = [a.status for a in attempts]
    assert statuses == [401] * 5 + [429] * 95  # five are checked, then the guesser waits
    assert all(a.retry_after is not None and 1 <= a.retry_after <= 30 for a in attempts[5:])
    assert "Too many failed sign-ins for this user from this address" in attempts[-1].page
    # Even the right password gets no answer from there while the delay runs ...
    assert (await guesser.sign_in("officer", PASSWORD)).status == 429
    # ... but the officer, at another address, signs in at once.
    signed_in = await officer.sign_in("officer", PASSWORD)
    assert (signed_in.status, signed_in.location) == (303, "/console/channels")
    print(
        f"\n100 guesses from 127.0.0.2: {statuses.count(401)} checked, {statuses.count(429)} refused unchecked "
        f"(Retry-After {attempts[5].retry_after}-{attempts[-1].retry_after} s); the officer signed in from 127.0.0.1"
    )

    # Audited within bounds: every checked failure, the first throttled attempts, then a count.
    await node.service.refusals.flush()
    events = await console_events(node)
    kinds = [e["event"] for e in events]
    assert kinds.count("console.signin_failed") == 5
    assert kinds.count("console.signin_throttled") == node.config.refusals_exact_per_address
    counted = [e for e in events if e["event"] == "requests.refused"]
    assert [(e["address"], e["reasons"]) for e in counted] == [
        ("127.0.0.2", {"429 sign-in throttled": 96 - node.config.refusals_exact_per_address})
    ]
    assert events[-2]["event"] == "console.signed_in" and events[-2]["address"] == "127.0.0.1"


async def test_delays_double_with_each_failure_and_the_wait_ends(
    node: Member, browser: Callable[[str], Browser]
) -> None:
    guesser = browser("127.0.0.2")
    for _ in range(5):
        assert (await guesser.sign_in("officer", "wrong")).status == 401
    waits = []
    for delay in (30, 60, 120):
        refused = await guesser.sign_in("officer", "wrong")
        assert refused.status == 429 and refused.retry_after is not None
        waits.append(refused.retry_after)
        assert delay / 2 < refused.retry_after <= delay
        await time_passes(node, delay)  # the wait is over: one more guess is checked, and fails
        assert (await guesser.sign_in("officer", "wrong")).status == 401
    print(f"\nRetry-After after 5, 6 and 7 failures: {waits} s")
    assert (await guesser.sign_in("officer", PASSWORD)).status == 429  # 8 failures: 240 s now
    await time_passes(node, 240)
    after_wait = await guesser.sign_in("officer", PASSWORD)  # the real user, at that address, gets in after it
    assert (after_wait.status, after_wait.location) == (303, "/console/channels")


async def test_an_address_that_guesses_many_names_waits_and_others_do_not(
    node: Member, browser: Callable[[str], Browser]
) -> None:
    guesser, officer = browser("127.0.0.3"), browser("127.0.0.1")
    free = 20  # SessionSettings.max_failures_per_address
    for i in range(free):
        assert (await guesser.sign_in(f"name-{i}", "wrong")).status == 401
    refused = await guesser.sign_in("admin", PASSWORD)
    assert refused.status == 429 and refused.retry_after is not None
    assert "Too many failed sign-ins from this address" in refused.page
    assert (await officer.sign_in("officer", PASSWORD)).status == 303
    assert (await browser("127.0.0.1").sign_in("admin", PASSWORD)).status == 303


async def test_guesses_sent_at_once_are_held_to_the_limit(browser: Callable[[str], Browser]) -> None:
    """Each check used to read the failures before any of the others had failed: 30 guesses sent
    at once all had their passwords checked. Now the checks from one address take turns: the
    allowance (5 for a user from an address) is checked, the rest wait (429)."""
    guessers = [browser("127.0.0.1") for _ in range(30)]
    for g in guessers:  # each with its sign-in form loaded (a GET: nothing counted)
        async with g.http.get(g.url + "/console/sign-in") as resp:
            found = CSRF.search(await resp.text())
            assert found is not None
            g.csrf = found.group(1)
    attempts = await asyncio.gather(*(g.sign_in("officer", f"guess number {i}") for i, g in enumerate(guessers)))
    statuses = sorted(a.status for a in attempts)
    assert statuses == [401] * 5 + [429] * 25, statuses
