"""A known credential's requests are charged to the user it authenticated (docs/operations.md,
"Request rates"), from the attacker's side: every spelling of one token, and made-up tokens sent
beside a console session, share that user's one bucket (a credential's first request is charged
to its address, and paid back only if its user's bucket has room); a token rotated away is
charged to its address again. Before, the bucket was keyed on the raw `Authorization` header: each spelling,
and each made-up header beside a session, had a burst of its own, and a revoked token kept the
token-sized bucket. Found by a read-only review; SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from exchange.http.appkeys import USER
from exchange.http.limits import Buckets, Rate, RateLimiter, RateSettings
from tests.conftest import MakeFederation, console_session
from tests.node.test_limits import http  # noqa: F401 (the fixture)

PASSWORD = "correct horse battery staple"
BURST = 3


def tight(address_burst: int, token_burst: int) -> dict[str, Any]:
    return {
        "rate_per_address": 0.01,
        "burst_per_address": address_burst,
        "rate_per_token": 0.01,
        "burst_per_token": token_burst,
    }


async def test_one_token_is_held_to_its_burst_however_its_header_is_spelled(
    make_federation: MakeFederation,
    http: Any,  # noqa: F811
) -> None:
    fed = await make_federation(options=tight(BURST, BURST))
    nl = fed["nl-customs"]
    token = nl.tokens["officer"]
    client: aiohttp.ClientSession = http(nl, "127.0.0.2")

    async def status(header: str) -> int:
        async with client.get("/api/v1/whoami", headers={"Authorization": header}) as resp:
            await resp.read()
            return resp.status

    assert [await status(f"Bearer {token}") for _ in range(BURST + 1)] == [200] * BURST + [429]
    spellings = [f"{scheme}{' ' * spaces}{token}" for scheme in ("bearer", "BEARER", "bEARER") for spaces in (1, 3)]
    got = [await status(h) for h in spellings]
    # each new spelling is charged to the address (its burst), never to a bucket of its own
    assert got.count(200) <= BURST and got[-BURST:] == [429] * BURST, got


async def test_a_rotated_token_is_charged_to_its_address_again(make_federation: MakeFederation, http: Any) -> None:  # noqa: F811
    fed = await make_federation(options=tight(BURST, 50))
    nl = fed["nl-customs"]
    old = nl.tokens["officer"]
    client: aiohttp.ClientSession = http(nl, "127.0.0.2")

    async def status(token: str) -> int:
        async with client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {token}"}) as resp:
            await resp.read()
            return resp.status

    assert await status(old) == 200  # a known credential now
    await nl.service.users.rotate_token("officer", actor="test")
    got = [await status(old) for _ in range(10)]
    assert got.count(401) <= BURST + 1 and got.count(429) >= 10 - BURST - 1, got


async def test_made_up_tokens_beside_a_console_session_share_its_users_bucket(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation(options=tight(50, BURST))
    nl = fed["nl-customs"]
    await nl.service.users.set_password("officer", PASSWORD, actor="test")
    async with console_session(nl, "officer", PASSWORD) as console:
        statuses = []
        for i in range(4):
            for _ in range(BURST):
                headers = {"Authorization": f"Bearer made-up-{i}"}
                async with console.get("/console/channels", headers=headers, allow_redirects=False) as resp:
                    await resp.read()
                    statuses.append(resp.status)
    # the session's burst, plus the first request of each made-up header, charged to the address
    assert statuses.count(200) <= BURST + 4, statuses


async def test_an_accountable_callers_refusals_have_entries_of_their_own_within_a_budget() -> None:
    """A user or partner within its rate could add one audit entry per refused request (about
    100 KB/s at the default 200 requests a second): past `exact_per_caller` in an interval, its
    refusals are counted per address as the others' are; another caller keeps its own budget."""
    from exchange.service.rejections import Refusals, RefusalSettings
    from tests.node.test_limits import FlakyStore

    store = FlakyStore()
    refusals = Refusals(store, RefusalSettings(exact_per_caller=2))  # type: ignore[arg-type]
    for user in ("officer",) * 5 + ("auditor",):
        await refusals.record(
            method="POST", path="/x", status=403, reason="no", peer=None, user=user, address="192.0.2.7"
        )
    await refusals.record(method="POST", path="/y", status=403, reason="no", peer="ke-customs", user=None, address=None)
    exact = [e for e in store.entries if e["event"] == "request.rejected"]
    assert [e.get("user") or e.get("peer") for e in exact] == ["officer", "officer", "auditor", "ke-customs"]
    assert refusals.pending() == 3
    await refusals.close()
    (counted,) = [e for e in store.entries if e["event"] == "requests.refused"]
    assert counted["address"] == "192.0.2.7" and counted["count"] == 3, counted


async def test_an_old_tokens_concurrent_requests_never_spend_its_former_users_budget(
    make_federation: MakeFederation,
    http: Any,  # noqa: F811
) -> None:
    """Whoever holds a token rotated away sends many requests at once: each was admitted against
    the user it used to authenticate until the first of them was refused, and drained that user's
    bucket. Now they are paid back to the user and charged to their address when they settle."""
    burst, at_once = 20, 16
    fed = await make_federation(options={**tight(100, burst)})
    nl = fed["nl-customs"]
    old = nl.tokens["officer"]
    holder, officer = http(nl, "127.0.0.3"), http(nl, "127.0.0.2")

    async def status(client: Any, token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with client.get("/api/v1/whoami", headers=headers) as resp:
            await resp.read()
            return int(resp.status)

    assert await status(holder, old) == 200  # known: the officer's (1 of its burst)
    new = await nl.service.users.rotate_token("officer", actor="test")
    assert await asyncio.gather(*(status(holder, None) for _ in range(at_once))) == [401] * at_once  # connections
    assert await asyncio.gather(*(status(holder, old) for _ in range(at_once))) == [401] * at_once
    got = [await status(officer, new) for _ in range(burst)]
    assert got == [200] * (burst - 1) + [429], got  # all the officer's but the first request's


class Transport:
    """A client connection without a certificate, from 192.0.2.7."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("192.0.2.7", 40000) if name == "peername" else default


def request(authorization: str) -> web.Request:
    return make_mocked_request("GET", "/api/v1/whoami", {"Authorization": authorization}, transport=Transport())


def served(limiter: RateLimiter, requests: list[web.Request], user: str | None) -> None:
    """`requests` all admitted before any is answered, then answered as `user` (None: refused)."""
    tickets = [limiter.admit(r) for r in requests]
    for r, ticket in zip(requests, tickets, strict=True):
        if user is not None:
            r[USER] = user
        limiter.settle(r, ticket)


def test_a_credential_that_moved_is_paid_back_to_its_former_user() -> None:
    """The same, request by request and without a server: a known token's requests admitted before
    any is answered (what concurrency does), then refused (rotated away) or answered as another
    user (reassigned). Each is paid back to the former user and charged where it belongs now."""
    limiter = RateLimiter(RateSettings(token=Rate(0.001, 5), address=Rate(0.001, 50)), clock=lambda: 0.0)

    def level(buckets: Buckets) -> Callable[[str], float]:
        def read(key: str) -> float:
            tokens = buckets._level(key)
            buckets._store(key, tokens)  # _level takes the bucket out: put it back as it was
            return tokens

        return read

    levels = level(limiter.tokens), level(limiter.addresses)
    served(limiter, [request("Bearer old")], "officer")  # new: the address's, moved to the officer
    assert (levels[0]("officer"), levels[1]("192.0.2.7")) == (4, 50)

    served(limiter, [request("Bearer old") for _ in range(3)], None)  # rotated away
    assert (levels[0]("officer"), levels[1]("192.0.2.7")) == (4, 47)

    served(limiter, [request("Bearer old")], "officer")  # known to be the officer's again
    assert (levels[0]("officer"), levels[1]("192.0.2.7")) == (3, 47)
    served(limiter, [request("Bearer old") for _ in range(3)], "auditor")  # now the auditor's
    assert (levels[0]("officer"), levels[0]("auditor"), levels[1]("192.0.2.7")) == (3, 2, 47)
