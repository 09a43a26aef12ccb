"""Webhooks from the attacker's side (found by a read-only review), on real nodes over mutual TLS,
SQLite and PostgreSQL: a receiver that has failed for a week, one that answers with gigabytes,
bulletins that may not leave the node, and a forged signature header at a receiver."""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web

from exchange.errors import PeerError
from exchange.node.webhook_client import HttpWebhookSender, ReachableOnly
from exchange.service import webhooks as webhooks_service
from exchange.service.webhooks import signature, verify_signature
from exchange.store import Store, audit_log, bulletins
from exchange.store.tables import webhooks
from tests.conftest import Federation, MakeFederation, eventually, free_port
from tests.node.test_webhooks import Receiver


async def register(fed: Federation, url: str, channel: str = "c2c") -> int:
    status, answer, _ = await fed["nl-customs"].api(
        "POST", f"/api/v1/channels/{channel}/webhooks", user="admin", body={"url": url}
    )
    assert status == 201, answer
    return int(answer["webhook"]["id"])


async def post(fed: Federation, title: str, **handling: Any) -> str:
    body: dict[str, Any] = {"kind": "alert", "title": title}
    if handling:
        body["handling"] = {"tlp": "AMBER", **handling}
    status, posted, _ = await fed["nl-customs"].api("POST", "/api/v1/channels/c2c/bulletins", body=body)
    assert status == 201, posted
    return str(posted["id"])


async def hook_row(fed: Federation, hook: int) -> Any:
    async with fed["nl-customs"].service.store.read() as conn:
        return (await conn.execute(sa.select(webhooks).where(webhooks.c.id == hook))).one()


async def test_a_week_of_failures_neither_overflows_nor_stops_the_other_webhooks(
    make_federation: MakeFederation,
) -> None:
    """The backoff computed 2.0 ** (failures - 1) before capping it: at the 1,025th failure in a
    row (about a week at the 10-minute cap) it overflowed, the row was never updated (so it was
    tried at every pass) and the exception ended the pass, so no webhook after it got anything.
    The two webhooks are written while the node is stopped, the failing one first, with its
    1,024 failures (a running node's pass could otherwise overwrite the count)."""
    fed = await make_federation()
    receiver = Receiver(free_port())
    await receiver.start()
    try:
        bid = await post(fed, "a week on")  # there when the node starts again: both webhooks' first pass has it
        await fed.stop("nl-customs")
        nl = fed["nl-customs"]
        store = await Store.open(nl.config.database_url, node=nl.config.id)
        try:

            async def a_week(conn: Any, audit: Any) -> None:
                base = {"channel": "c2c", "secret": "0" * 64, "cursor": 0, "created_by": "admin"}
                base["created_at"] = "2026-12-01T00:00:00.000Z"
                dead = f"http://127.0.0.1:{free_port()}/nobody"
                await conn.execute(sa.insert(webhooks).values(url=dead, failures=1024, **base))
                await conn.execute(sa.insert(webhooks).values(url=f"http://127.0.0.1:{receiver.port}/hook", **base))

            await store.write(a_week)
        finally:
            await store.close()
        await fed.start("nl-customs")

        async def arrived() -> bool:
            return bid in receiver.ids()

        await eventually(arrived, 30, "the healthy webhook's notification")

        async def backed_off() -> bool:
            row = await hook_row(fed, 1)
            return int(row.failures) == 1025 and row.next_try_at is not None

        await eventually(backed_off, 30, "the failing webhook's backoff to be recorded")
    finally:
        await receiver.stop()


async def test_a_receivers_huge_answer_is_not_read(make_federation: MakeFederation) -> None:
    """The node read a receiver's whole answer into memory (only the 10 s timeout bounded it): a
    receiver streaming 64 MiB made the node hold 64 MiB or more. Only the status is needed."""
    fed = await make_federation()
    port, got = free_port(), asyncio.Event()

    async def flood(request: web.Request) -> web.StreamResponse:
        await request.read()
        got.set()
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        chunk = b"x" * 65536
        try:
            for _ in range(1024):  # 64 MiB, as fast as the node takes it
                await response.write(chunk)
        except (ConnectionError, RuntimeError):
            pass  # the node hung up: what this test wants
        return response

    app = web.Application()
    app.router.add_post("/hook", flood)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    tracemalloc.start()
    try:
        hook = await register(fed, f"http://127.0.0.1:{port}/hook")
        await post(fed, "a flood in answer")
        await asyncio.wait_for(got.wait(), 30)

        async def delivered() -> bool:
            return int((await hook_row(fed, hook)).delivered) == 1

        await eventually(delivered, 30, "the delivery to count")
        _, peak = tracemalloc.get_traced_memory()
        assert peak < 32 * 1024 * 1024, peak
    finally:
        tracemalloc.stop()
        await runner.cleanup()


async def test_bulletins_that_may_not_leave_the_node_are_not_announced(make_federation: MakeFederation) -> None:
    """A webhook POSTed every bulletin's id, author, kind and TLP to its URL, TLP:RED and those
    marked no-onward-sharing included, while TAXII serves neither. The same rule now applies: the
    webhook's cursor passes over them."""
    fed = await make_federation()
    receiver = Receiver(free_port())
    await receiver.start()
    try:
        hook = await register(fed, f"http://127.0.0.1:{receiver.port}/hook")
        red = await post(fed, "red", tlp="RED")
        strict = await post(fed, "amber strict", tlp="AMBER+STRICT")
        no_onward = await post(fed, "no onward", no_onward_sharing=True)
        last = await post(fed, "green", tlp="GREEN")

        async def arrived() -> bool:
            return last in receiver.ids()

        await eventually(arrived, 30, "the GREEN bulletin's notification")
        assert receiver.ids() == [last], (red, strict, no_onward)

        async def counted() -> bool:  # recorded once the pass is over, after the receiver has it
            return int((await hook_row(fed, hook)).delivered) == 1 and int((await hook_row(fed, hook)).cursor) > 0

        await eventually(counted, 30, "the delivery to be recorded")
        await post(fed, "red again", no_onward_sharing=True)  # passed over, and the cursor moves past it
        # A TLP:RED one at the end too: it was left out in SQL, so the cursor stayed before it and each
        # pass (every second) walked the channel's withheld tail again, for ever (a read-only review).
        await post(fed, "red at the end", tlp="RED")

        async def passed_over() -> bool:
            async with fed["nl-customs"].service.store.read() as conn:
                newest = await conn.scalar(sa.select(sa.func.max(bulletins.c.n)))
            row = await hook_row(fed, hook)
            return int(row.cursor) == int(newest or 0) and int(row.delivered) == 1

        await eventually(passed_over, 30, "the cursor to pass over a bulletin it does not announce")
        assert receiver.ids() == [last]
    finally:
        await receiver.stop()


def test_a_forged_signature_header_is_refused_not_an_error() -> None:
    """`verify_signature` (the helper docs/operations.md points receivers to) raised TypeError on a
    MAC that was not ASCII, so a receiver using it answered a forged request with a 500."""
    body, secret, now = b'{"a":1}', "s" * 64, int(time.time())
    good = signature(secret, body, now)
    assert verify_signature(secret, body, good, now)
    for forged in (f"t={now},v1=é", f"t={now},v1=", f"t={now}", "t=x,v1=00", "", "v1=" + "0" * 64, f"t={now},v1=\x00"):
        assert not verify_signature(secret, body, forged, now), forged
    assert json.loads(body) == {"a": 1}


async def test_a_webhook_never_reaches_a_link_local_address(make_federation: MakeFederation) -> None:
    """An administrator could register https://169.254.169.254/... (where cloud platforms serve
    instance credentials) or a name resolving there, and read from `last_error` whether it answered.
    Link-local, unspecified and multicast addresses are refused at registration, and a name is
    judged by each address it resolves to when the request is made. (Private networks stay
    allowed: an administration's own systems live there.)"""
    fed = await make_federation()
    link_local = (
        "https://169.254.169.254/latest/meta-data/",
        "https://[fe80::1]/hook",
        "https://[::ffff:169.254.169.254]/hook",
        "https://0.0.0.0/hook",
        "https://224.0.0.1/hook",
        # The same address embedded in IPv6 otherwise (a read-only review): IPv4-compatible, NAT64, 6to4.
        "https://[::a9fe:a9fe]/hook",
        "https://[64:ff9b::a9fe:a9fe]/hook",
        "https://[2002:a9fe:a9fe::1]/hook",
    )
    # Forms of an IPv4 address that some parsers take and others do not: refused, whatever they name.
    unusual = (
        "https://2852039166/hook",
        "https://0251.0376.0251.0376/hook",
        "https://169.254.43518/",
        "https://0xa9fea9fe/",
    )
    for urls, why in ((link_local, "link-local"), (unusual, "usual form")):
        for url in urls:
            status, body, _ = await fed["nl-customs"].api(
                "POST", "/api/v1/channels/c2c/webhooks", user="admin", body={"url": url}
            )
            assert status == 422 and why in body["detail"], (url, body)
    with pytest.raises(PeerError, match="no webhook may reach"):  # a URL stored before this check
        await HttpWebhookSender().post("https://169.254.169.254/hook", b"{}", {})

    class Points:  # the system's resolver, as a DNS that answers a link-local address would
        def __init__(self, *addresses: str) -> None:
            self.addresses = addresses

        async def resolve(self, host: str, port: int = 0, family: Any = 0) -> list[dict[str, Any]]:
            return [
                {"hostname": host, "host": a, "port": port, "family": family, "proto": 0, "flags": 0}
                for a in self.addresses
            ]

        async def close(self) -> None:
            return None

    resolver = ReachableOnly()
    resolver._resolver = Points("169.254.169.254")  # type: ignore[assignment]
    with pytest.raises(OSError, match="no webhook may reach"):
        await resolver.resolve("metadata.example", 443)
    resolver._resolver = Points("169.254.169.254", "10.0.0.5")  # type: ignore[assignment]
    assert [r["host"] for r in await resolver.resolve("siem.example", 443)] == ["10.0.0.5"]
    # Plain http is taken for localhost only, and reaches loopback addresses only, whatever the
    # name resolves to here (a container without localhost in /etc/hosts asks the DNS; a review).
    local = ReachableOnly(loopback_only=True)
    local._resolver = Points("10.0.0.5")  # type: ignore[assignment]
    with pytest.raises(OSError, match="not loopback"):
        await local.resolve("localhost", 80)
    local._resolver = Points("10.0.0.5", "127.0.0.1", "::1")  # type: ignore[assignment]
    assert [r["host"] for r in await local.resolve("localhost", 80)] == ["127.0.0.1", "::1"]


async def test_a_slow_receiver_holds_the_other_webhooks_for_one_run_at_most(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery pass waits for every webhook's run, and a run went on through its whole batch: a
    receiver answering each POST just inside its timeout held every other webhook's next delivery
    for up to 100 of them, about 16 minutes (a read-only review). A run now starts no POST after
    RUN_SECONDS, and the rest go at the next pass."""
    fed = await make_federation()
    nl = fed["nl-customs"]
    port = free_port()
    answered: list[float] = []

    async def slow(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(0.5)
        answered.append(asyncio.get_running_loop().time())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    monkeypatch.setattr(webhooks_service, "RUN_SECONDS", 0.2, raising=False)
    try:
        hook = await register(fed, f"http://127.0.0.1:{port}/hook")
        await nl.service.webhooks.close()  # passes only when this test asks for one
        for i in range(4):
            await post(fed, f"queued {i}")
        assert await nl.service.webhooks.deliver_due() == 1  # before: 4, the pass as long as all four
        assert int((await hook_row(fed, hook)).delivered) == 1
        for _ in range(3):
            assert await nl.service.webhooks.deliver_due() == 1
        assert await nl.service.webhooks.deliver_due() == 0 and len(answered) == 4
    finally:
        await runner.cleanup()


async def test_a_failing_run_backs_off_and_a_recorded_cursor_never_goes_back(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that failed inside the node (a stored row it cannot read, say) was logged and tried
    again at the next pass, each second, for ever; and a pass recorded its cursor as it was, so a
    worker that lost its role midway (PostgreSQL) could set back what another recorded since,
    which sends bulletins again (a read-only review). The failure now backs off as a receiver's
    does, and a cursor is only ever moved forward."""
    fed = await make_federation()
    nl = fed["nl-customs"]
    hook = await register(fed, "https://siem.example/hook")
    await nl.service.webhooks.close()  # passes only when this test asks for one
    runs = 0

    async def broken(row: Any) -> int:
        nonlocal runs
        runs += 1
        raise ValueError("a stored row this node cannot read")

    monkeypatch.setattr(nl.service.webhooks, "_deliver", broken)
    assert await nl.service.webhooks.deliver_due() == 0
    row = await hook_row(fed, hook)
    assert int(row.failures) == 1 and row.next_try_at is not None and "ValueError" in row.last_error
    assert await nl.service.webhooks.deliver_due() == 0 and runs == 1  # backing off: not run again yet

    async with nl.service.store.engine.begin() as conn:
        await conn.execute(sa.update(webhooks).where(webhooks.c.id == hook).values(cursor=10))
    await nl.service.webhooks._record(row, 3, 1, None)  # a pass that began before the cursor moved to 10
    assert int((await hook_row(fed, hook)).cursor) == 10


async def test_a_token_in_a_webhooks_url_is_shown_nowhere(make_federation: MakeFederation) -> None:
    """Many receivers take their token in the URL's path or query (`/services/T0/B0/<token>`). The
    whole URL was kept in the audit log (which auditors and trace answers read), shown by the list
    to every administrator, and named by the errors a failing receiver left. Each now shows its
    scheme, host and port and a digest of the whole URL; the node still posts to the whole URL."""
    fed = await make_federation()
    nl = fed["nl-customs"]
    url = f"http://127.0.0.1:{free_port()}/relay/T0/B0/tok3nPATH?key=s3cr3tQUERY"  # nothing listens there
    shown = webhooks_service.shown_url(url)
    assert shown.startswith("http://127.0.0.1:") and "tok3n" not in shown and "s3cr3t" not in shown
    status, answer, _ = await nl.api("POST", "/api/v1/channels/c2c/webhooks", user="admin", body={"url": url})
    assert status == 201 and answer["webhook"]["url"] == shown, answer
    hook = int(answer["webhook"]["id"])
    await post(fed, "an alert to announce")
    await eventually(lambda: _failed(fed, hook))
    status, listed, _ = await nl.api("GET", "/api/v1/webhooks", user="admin")
    assert status == 200 and [w["url"] for w in listed] == [shown], listed
    # an error recorded before this release named the URL, cut at 200 characters: shown without it
    async with nl.service.store.engine.begin() as conn:
        old = f"PeerError: webhook {url[:200]} unreachable: ClientConnectorError"
        await conn.execute(sa.update(webhooks).where(webhooks.c.id == hook).values(last_error=old))
    status, listed, _ = await nl.api("GET", "/api/v1/webhooks", user="admin")
    assert "tok3n" not in str(listed) and "s3cr3t" not in str(listed) and "unreachable" in str(listed), listed
    assert (await nl.api("DELETE", f"/api/v1/webhooks/{hook}", user="admin"))[0] == 200
    async with nl.service.store.read() as conn:
        log = [bytes(r.entry).decode() for r in await conn.execute(sa.select(audit_log.c.entry))]
    changed = [json.loads(e) for e in log if '"webhook.changed"' in e]
    assert [e["url"] for e in changed] == [shown, shown], changed
    assert not [e for e in log if "tok3n" in e or "s3cr3t" in e]
    # a URL without a path or query is shown whole; two URLs differing in their token differ as shown
    assert webhooks_service.shown_url("https://siem.example") == "https://siem.example"
    assert shown != webhooks_service.shown_url(url.replace("s3cr3t", "other"))
    longer = url + "&more=" + "x" * 200
    assert "tok3n" not in webhooks_service.redacted(f"failed at {longer[:200]}", longer)


async def _failed(fed: Federation, hook: int) -> bool:
    row = await hook_row(fed, hook)
    if row.last_error is None:
        return False
    assert "tok3n" not in row.last_error and "s3cr3t" not in row.last_error, row.last_error
    return True
