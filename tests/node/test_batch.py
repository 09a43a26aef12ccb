"""Batch posts (issue 17): 1,000 bulletins in one request at the client API, each delivered and
seen once by a follower at the other node across reconnects; items refused on their own; a retry
with the same Idempotency-Key posts nothing twice (real nodes, SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from exchange.store import bulletins
from tests.conftest import Federation, MakeFederation, Member

BATCH = "/api/v1/channels/c2c/bulletins/batch"


def item(i: int, **extra: Any) -> dict[str, Any]:
    awb = f"176-{i % 10**7:07d}{i % 10**7 % 7}"
    return {"kind": "alert", "title": f"batch {i}", "indicators": {"air_waybills": [awb]}, **extra}


async def stored(member: Member) -> int:
    async with member.service.store.read() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(bulletins)) or 0)


async def call(fed: Federation, body: Any, key: str | None = None, user: str = "officer") -> tuple[int, Any]:
    member = fed["nl-customs"]
    if key is None:
        status, answer, _ = await member.api("POST", BATCH, body=body, user=user)
        return status, answer
    import aiohttp

    from exchange.keystore import read_file
    from exchange.node.tls import client_context

    ctx = client_context(read_file(member.config.keys_dir / "tls.crt").decode())
    headers = {"Authorization": f"Bearer {member.tokens[user]}", "Idempotency-Key": key}
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.post(member.config.endpoint + BATCH, json=body, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def test_a_thousand_in_one_request_delivered_and_followed_once(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    ke = fed["ke-customs"]
    _, start = (await ke.api("GET", "/api/v1/follow?wait=0"))[:2]
    status, answer = await call(fed, {"bulletins": [item(i) for i in range(1000)]})
    assert status == 200, answer
    assert answer["posted"] == 1000 and answer["refused"] == 0
    assert [a["index"] for a in answer["items"]] == list(range(1000))
    posted = [a["posted"]["id"] for a in answer["items"]]
    seen: list[str] = []
    cursor = start["next"]
    deadline = time.monotonic() + 180
    while len(seen) < 1000 and time.monotonic() < deadline:
        # each long poll is a new request from the last cursor: a reconnect every time
        status, page, _ = await ke.api("GET", f"/api/v1/follow?channel=c2c&after={cursor}&wait=5")
        assert status == 200, page
        seen += [i["id"] for i in page["items"]]
        cursor = page["next"]
    assert sorted(seen) == sorted(posted) and len(set(seen)) == 1000
    assert await stored(ke) == 1000


async def test_items_fail_alone_and_a_retry_posts_nothing_twice(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    nl = fed["nl-customs"]
    body = {
        "bulletins": [
            item(1),
            item(2) | {"indicators": {"air_waybills": ["176-12345678"]}},  # wrong check digit
            item(3, due="2027-01-31"),  # a due date on an alert
            item(4) | {"indicators": {"airports": ["ZZZ"]}},  # no such airport
            item(5),
        ]
    }
    key = "batch-retry-0123456789abcdef"
    status, first = await call(fed, body, key)
    assert status == 200, first
    assert [a["status"] for a in first["items"]] == [201, 422, 422, 422, 201]
    assert "check digit" in first["items"][1]["detail"] and first["items"][1]["error"] == "InvalidInput"
    assert await stored(nl) == 2
    status, again = await call(fed, body, key)
    assert status == 200
    assert [a.get("posted", {}).get("id") for a in again["items"]] == [
        a.get("posted", {}).get("id") for a in first["items"]
    ]
    assert await stored(nl) == 2  # nothing posted twice


async def test_batch_shapes_and_rights_are_checked(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    malformed = {"bulletins": [item(0), {"kind": "alert"}]}  # an item without a title: refused whole
    body: Any
    for body in (
        {},
        {"bulletins": []},
        {"bulletins": [item(0)] * 1001},
        {"bulletins": [item(0)], "x": 1},
        [item(0)],
        malformed,
    ):
        status, problem = await call(fed, body)
        assert status == 422, (body if not isinstance(body, dict) else list(body), problem)
    status, _ = await call(fed, {"bulletins": [item(0)]}, user="auditor")
    assert status == 403
    assert await stored(fed["nl-customs"]) == 0
