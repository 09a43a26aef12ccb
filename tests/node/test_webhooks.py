"""Webhooks (issue 17, must-show 5): a receiver on this machine's loopback gets each new bulletin's
signed metadata once, in order, and never its content; a wrong secret is detectable; a receiver
that was down gets what it missed after it returns; registration is for administrators and
audited (real nodes over mutual TLS, SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from exchange.service import webhooks
from exchange.service.catchup import POSITIONS
from exchange.service.webhooks import verify_signature
from exchange.store import audit_log
from tests.conftest import Federation, MakeFederation, eventually, free_port


class Receiver:
    """An administration's own system: records what it is sent."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.got: list[tuple[bytes, str]] = []
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def hook(request: web.Request) -> web.Response:
            self.got.append((await request.read(), request.headers.get("Exchange-Signature", "")))
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/hook", hook)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def ids(self) -> list[str]:
        return [json.loads(body)["bulletin"]["id"] for body, _ in self.got]


async def post(fed: Federation, node: str, i: int) -> str:
    body = {"kind": "alert", "title": f"secret title {i}", "body": "content that must not leave"}
    status, posted, _ = await fed[node].api("POST", "/api/v1/channels/c2c/bulletins", body=body)
    assert status == 201, posted
    return str(posted["id"])


async def events(fed: Federation) -> list[dict[str, Any]]:
    async with fed["nl-customs"].service.store.read() as conn:
        rows = await conn.execute(sa.select(audit_log.c.entry).order_by(audit_log.c.idx))
        return [e for e in (json.loads(bytes(r.entry)) for r in rows) if e["event"].startswith("webhook.")]


async def test_signed_metadata_once_in_order_and_after_an_outage(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    receiver = Receiver(free_port())
    await receiver.start()
    try:
        url = f"http://127.0.0.1:{receiver.port}/hook"
        nl = fed["nl-customs"]
        status, answer, _ = await nl.api("POST", "/api/v1/channels/c2c/webhooks", user="admin", body={"url": url})
        assert status == 201, answer
        secret = answer["secret"]
        posted = [await post(fed, "ke-customs", 0), await post(fed, "nl-customs", 1), await post(fed, "ke-customs", 2)]

        async def arrived(n: int) -> bool:
            return len(receiver.got) >= n

        await eventually(lambda: arrived(3), 30, "three notifications")
        assert sorted(receiver.ids()) == sorted(posted)  # each once
        cursors = [json.loads(body)["bulletin"]["cursor"] for body, _ in receiver.got]
        assert cursors == sorted(set(cursors))  # in the order nl-customs stored them
        for body, header in receiver.got:
            assert verify_signature(secret, body, header, int(time.time()))
            assert not verify_signature("0" * 64, body, header, int(time.time()))  # a wrong secret shows
            assert b"secret title" not in body and b"content that must not leave" not in body
            meta = json.loads(body)
            assert meta["node"] == "nl-customs" and meta["channel"] == "c2c"
            assert set(meta["bulletin"]) == {"id", "cursor", "author", "seq", "kind", "tlp", "created"}
        assert not verify_signature(secret, receiver.got[0][0] + b" ", receiver.got[0][1], int(time.time()))

        await receiver.stop()  # the administration's system is down
        missed = [await post(fed, "ke-customs", 3), await post(fed, "nl-customs", 4)]

        async def failing() -> bool:
            return any(e["event"] == "webhook.failing" for e in await events(fed))

        await eventually(failing, 30, "the failure to be noticed")
        await receiver.start()
        await eventually(lambda: arrived(5), 60, "the missed notifications")
        assert sorted(receiver.ids()) == sorted(posted + missed) and len(set(receiver.ids())) == 5
        kinds = [e["event"] for e in await events(fed)]
        assert kinds[0] == "webhook.changed" and kinds.count("webhook.failing") == 1

        async def delivered() -> int:  # audited once the answer is in: after the receiver has it
            return sum(e["count"] for e in await events(fed) if e["event"] == "webhook.delivered")

        async def all_audited() -> bool:
            return await delivered() >= 5

        await eventually(all_audited, 30, "the deliveries to be audited")
        assert await delivered() == 5
        status, hooks, _ = await nl.api("GET", "/api/v1/webhooks", user="admin")
        assert status == 200 and hooks[0]["delivered"] == 5 and hooks[0]["failures"] == 0
        assert "secret" not in json.dumps(hooks)
        status, _, _ = await nl.api("DELETE", f"/api/v1/webhooks/{hooks[0]['id']}", user="admin")
        assert status == 200
        await post(fed, "nl-customs", 5)
        await eventually(lambda: _quiet(), 3, "a pause")
        assert len(receiver.got) == 5  # removed: nothing more
    finally:
        await receiver.stop()


async def _quiet() -> bool:
    import asyncio

    await asyncio.sleep(2.5)
    return True


async def test_registration_is_for_administrators_and_checked(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    nl = fed["nl-customs"]
    path = "/api/v1/channels/c2c/webhooks"
    assert (await nl.api("POST", path, user="officer", body={"url": "https://example.org/x"}))[0] == 403
    bad: tuple[str, ...] = (
        "http://example.org/hook",
        "ftp://example.org/x",
        "https:///nohost",
        "https://exa mple.org/x",
    )
    bad += ("https://user:secret@example.org/x", "https://token@example.org/x", "http://evil\\@127.0.0.1/x")
    unsplittable = ("https://[oops", "https://example.org:99999/x", "https://example.org:x/")  # urllib raises
    for url in bad + unsplittable:
        status, problem, ctype = await nl.api("POST", path, user="admin", body={"url": url})
        assert (status, ctype) == (422, "application/problem+json"), (url, problem)
    assert (
        await nl.api("POST", "/api/v1/channels/nowhere/webhooks", user="admin", body={"url": "https://example.org/x"})
    )[0] == 404
    assert (await nl.api("DELETE", "/api/v1/webhooks/99", user="admin"))[0] == 404
    assert (await nl.api("GET", "/api/v1/webhooks", user="admin"))[1] == []
    assert await events(fed) == []


async def test_a_node_without_webhooks_says_so_and_its_loop_looks_rarely(make_federation: MakeFederation) -> None:
    """An idle node's cost: with no webhook a pass finds none (the loop then waits IDLE_INTERVAL,
    not INTERVAL); a registration wakes it, and passes come every INTERVAL again."""
    fed = await make_federation()
    nl = fed["nl-customs"]
    assert await nl.service.webhooks.deliver_due() is None
    body = {"url": "http://127.0.0.1:9/hook"}
    status, answer, _ = await nl.api("POST", "/api/v1/channels/c2c/webhooks", user="admin", body=body)
    assert status == 201, answer
    assert await nl.service.webhooks.deliver_due() == 0
    assert webhooks.IDLE_INTERVAL > webhooks.INTERVAL


async def test_a_removed_webhooks_last_pass_does_not_land_on_the_next_one(make_federation: MakeFederation) -> None:
    """Remove and add is how a secret is changed: the outcome of a delivery pass of the removed
    one, ending after that, is not recorded on the new one (on SQLite before revision 0009 the
    new one got the removed one's id). Found by a read-only review; SQLite and PostgreSQL."""
    import sqlalchemy as sa

    from exchange.store.tables import webhooks

    fed = await make_federation()
    nl = fed["nl-customs"]
    path, url = "/api/v1/channels/c2c/webhooks", "http://127.0.0.1:9/hook"
    status, first, _ = await nl.api("POST", path, user="admin", body={"url": url})
    assert status == 201, first
    async with nl.service.store.read() as conn:
        removed = (await conn.execute(sa.select(webhooks).where(webhooks.c.id == first["webhook"]["id"]))).one()
    assert (await nl.api("DELETE", f"/api/v1/webhooks/{first['webhook']['id']}", user="admin"))[0] == 200
    assert (await nl.api("POST", path, user="admin", body={"url": url + "2"}))[0] == 201
    await nl.service.webhooks._record(removed, 0, 3, None)  # the removed one's pass ends now
    status, hooks, _ = await nl.api("GET", "/api/v1/webhooks", user="admin")
    assert [h["delivered"] for h in hooks] == [0], hooks


async def test_a_removed_webhooks_id_is_not_given_to_the_next_one(make_federation: MakeFederation) -> None:
    """Register two, remove the second, register a third: the third has an id of its own, so the
    audit log's entries about the removed one name no other webhook (revision 0009 on SQLite,
    where the third got the removed one's id before; SQLite and PostgreSQL)."""
    fed = await make_federation()
    nl = fed["nl-customs"]
    path = "/api/v1/channels/c2c/webhooks"
    ids = []
    for i in range(2):
        status, answer, _ = await nl.api("POST", path, user="admin", body={"url": f"http://127.0.0.1:9/{i}"})
        assert status == 201, answer
        ids.append(answer["webhook"]["id"])
    assert (await nl.api("DELETE", f"/api/v1/webhooks/{ids[1]}", user="admin"))[0] == 200
    status, answer, _ = await nl.api("POST", path, user="admin", body={"url": "http://127.0.0.1:9/2"})
    assert status == 201, answer
    assert answer["webhook"]["id"] not in ids
    named = [(e["webhook"], e["url"]) for e in await events(fed) if e["event"] == "webhook.changed"]
    assert len({webhook for webhook, _ in named}) == len({url for _, url in named}) == 3, named


async def test_the_cursor_counts_the_channels_own_bulletins_only(make_federation: MakeFederation) -> None:
    """A notification's `cursor` was the node's storage position, one count for every channel: a
    receiver of one channel's webhook learnt how many bulletins the node stored meanwhile in the
    others (found by a read-only review). It is now the bulletin's position in the channel, above
    every cursor sent before (2^30 + position, as catch-up numbers its pages)."""
    fed = await make_federation()
    nl = fed["nl-customs"]
    other = {
        "id": "c2c-other",
        "title": "Another channel",
        "policy": {"agencies": ["customs"]},
        "default_handling": {"tlp": "AMBER", "no_onward_sharing": False},
    }
    assert (await nl.api("POST", "/api/v1/channels", user="admin", body=other))[0] == 201
    assert (await nl.api("POST", "/api/v1/channels/c2c-other/users", user="admin", body={"user": "officer"}))[0] == 200
    receiver = Receiver(free_port())
    await receiver.start()
    try:
        url = f"http://127.0.0.1:{receiver.port}/hook"
        assert (await nl.api("POST", "/api/v1/channels/c2c/webhooks", user="admin", body={"url": url}))[0] == 201
        await post(fed, "nl-customs", 0)
        for i in range(3):
            body = {"kind": "alert", "title": f"elsewhere {i}"}
            assert (await nl.api("POST", "/api/v1/channels/c2c-other/bulletins", body=body))[0] == 201
        await post(fed, "nl-customs", 1)

        async def arrived() -> bool:
            return len(receiver.got) >= 2

        await eventually(arrived, 30, "two notifications")
        cursors = [json.loads(body)["bulletin"]["cursor"] for body, _ in receiver.got]
        assert cursors == [POSITIONS + 1, POSITIONS + 2]
    finally:
        await receiver.stop()
