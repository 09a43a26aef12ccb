"""Following: `GET /api/v1/follow` long polls over real TLS, between two real nodes (SQLite and
PostgreSQL). A follower sees every bulletin posted at the other node once, across reconnects (each
long poll is its own request, resumed from the last cursor), waits without polling the client, and
is bounded per user."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import sqlalchemy as sa

from exchange.store import bulletins
from tests.conftest import Federation, MakeFederation, eventually


def alert(i: int) -> dict[str, Any]:
    return {"kind": "alert", "title": f"follow {i}", "body": f"alert {i}", "indicators": {"airports": ["NBO"]}}


async def post(fed: Federation, i: int) -> str:
    status, posted, _ = await fed["nl-customs"].api("POST", "/api/v1/channels/c2c/bulletins", body=alert(i))
    assert status == 201, posted
    return str(posted["id"])


async def poll(fed: Federation, query: str, user: str = "officer") -> tuple[int, Any]:
    status, body, _ = await fed["ke-customs"].api("GET", f"/api/v1/follow?{query}", user=user)
    return status, body


async def test_a_long_poll_returns_when_a_bulletin_arrives(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    status, page = await poll(fed, "wait=0")
    assert status == 200 and page["items"] == [] and isinstance(page["next"], int)
    started = time.monotonic()
    waiting = asyncio.create_task(poll(fed, f"after={page['next']}&wait=20"))
    await asyncio.sleep(0.5)
    assert not waiting.done()  # nothing yet: it waits
    bid = await post(fed, 1)
    status, got = await waiting
    assert status == 200 and [i["id"] for i in got["items"]] == [bid]
    assert time.monotonic() - started < 15  # delivered and seen well before the wait ran out
    assert got["next"] == got["items"][-1]["cursor"]


async def test_every_bulletin_once_across_reconnects(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    _, first = await poll(fed, "wait=0&channel=c2c")
    cursor = first["next"]
    posted: list[str] = []

    async def author() -> None:
        for i in range(120):
            posted.append(await post(fed, i))

    writing = asyncio.create_task(author())
    seen: list[str] = []
    deadline = time.monotonic() + 120
    while (not writing.done() or len(seen) < len(posted)) and time.monotonic() < deadline:
        status, page = await poll(fed, f"channel=c2c&after={cursor}&wait=5")  # a new request each time
        assert status == 200, page
        seen += [i["id"] for i in page["items"]]
        cursor = page["next"]
    await writing
    assert sorted(seen) == sorted(posted) and len(seen) == len(set(seen))


async def test_follow_is_bounded_and_checked(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    waits = [asyncio.create_task(poll(fed, "wait=3")) for _ in range(4)]
    await asyncio.sleep(0.5)
    status, problem = await poll(fed, "wait=3")
    assert status == 429, problem
    assert [s for s, _ in await asyncio.gather(*waits)] == [200] * 4
    for bad in ("wait=26", "wait=-1", "after=-1", "after=x", "channel=%00"):
        status, _ = await poll(fed, bad)
        assert status == 422, bad
    status, _ = await poll(fed, "wait=0", user="auditor")
    assert status == 403
    status, _ = await poll(fed, "wait=0&channel=elsewhere")
    assert status in (403, 404)


async def test_inbox_follow_prints_each_bulletin_once_across_a_node_restart(make_federation: MakeFederation) -> None:
    """`exchange inbox --follow --json` as its own process: the node it follows stops and starts
    again while bulletins arrive; every bulletin is printed once, and Ctrl-C ends it with status 0."""
    import json
    import signal
    import subprocess
    import sys

    fed = await make_federation()
    _, first = await poll(fed, "wait=0")
    node_file = str(fed.folder / "ke-customs.toml")
    cmd = [sys.executable, "-m", "exchange.cli", "inbox", "--follow", "--json", "--node", node_file]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        "--after",
        str(first["next"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        # As at a terminal: Ctrl-C's SIGINT is not ignored. A test run started in the background
        # by a non-interactive shell (`pytest &`) ignores SIGINT, the follower would inherit that,
        # and (as any program started so) rightly go on after the SIGINT below.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    printed: list[str] = []

    async def read_until(count: int) -> None:
        assert proc.stdout is not None
        while len(printed) < count:
            raw = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert raw, "the follower ended early"
            printed.append(json.loads(raw)["id"])

    posted = [await post(fed, i) for i in range(3)]
    await read_until(3)
    await fed.stop("ke-customs")
    posted += [await post(fed, i) for i in range(3, 6)]  # queued at the author while the reader is down
    await asyncio.sleep(1.5)  # the follower finds its node gone and backs off
    await fed.start("ke-customs")
    await read_until(6)
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    printed += [json.loads(raw)["id"] for raw in out.decode().splitlines() if raw.strip()]
    assert printed == posted  # each once, in the order stored
    assert b"Traceback" not in err and b"warning:" in err


async def test_from_now_on_says_nothing_of_channels_the_user_cannot_read(make_federation: MakeFederation) -> None:
    """`next` of a follow from now (no `after`) was the store's newest bulletin: a user polling it
    learnt how many bulletins came in channels it cannot read, and when. It is now the newest of
    the user's own channels."""
    channels = [
        {
            "id": c,
            "owner": "nl-customs",
            "agencies": ["customs"],
            "members": {"nl-customs": ["read", "post", "admin"], "ke-customs": ["read", "post"]},
        }
        for c in ("c2c", "c2x")
    ]
    fed = await make_federation(channels=channels)
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    status, body, _ = await ke.api(
        "POST", "/api/v1/channels/c2x/users", user="admin", body={"user": "officer", "assigned": False}
    )
    assert status == 200, body
    await post(fed, 1)  # in c2c, which the officer reads

    async def held(channel: str, n: int) -> bool:
        async with ke.service.store.read() as conn:
            count = await conn.scalar(sa.select(sa.func.count()).where(bulletins.c.channel == channel))
        return count == n

    await eventually(lambda: held("c2c", 1), what="the c2c bulletin at ke")
    status, before = await poll(fed, "wait=0")
    assert status == 200 and before["items"] == [] and before["next"] > 0
    for i in range(3):  # in c2x, which it does not
        status, posted, _ = await nl.api("POST", "/api/v1/channels/c2x/bulletins", body=alert(i))
        assert status == 201, posted
    await eventually(lambda: held("c2x", 3), what="the c2x bulletins at ke")
    for query in ("wait=0", "wait=0&channel=c2c"):
        status, after = await poll(fed, query)
        assert status == 200 and after == {"items": [], "next": before["next"]}, query
