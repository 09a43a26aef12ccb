"""A known credential's requests are charged to the user it authenticated (docs/operations.md,
"Request rates"), from the attacker's side: every spelling of one token, and made-up tokens sent
beside a console session, share that user's one bucket (a credential's first request is charged
to its address, and paid back only if its user's bucket has room); a token rotated away is
charged to its address again. Before, the bucket was keyed on the raw `Authorization` header: each spelling,
and each made-up header beside a session, had a burst of its own, and a revoked token kept the
token-sized bucket. Found by a read-only review; SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

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
    client = http(nl, "127.0.0.2")

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
    client = http(nl, "127.0.0.2")

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
