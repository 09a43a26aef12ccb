"""Sync that loses nothing, over real nodes and mutual TLS: failing receivers, catch-up, gaps, receipts."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web

from exchange.errors import Unavailable
from exchange.model import NodeId
from exchange.service import catchup as catchup_module
from exchange.service.catchup import POSITIONS
from exchange.store import audit_log, bulletins, outbox, receipts, user_reads
from tests.conftest import DEFAULT_NODES, MakeFederation, Member, eventually
from tests.standin import StandIn

THREE = {k: DEFAULT_NODES[k] for k in ("nl-customs", "ke-customs")} | {"de-customs": ("DE", "customs")}
C2C = {
    "id": "c2c",
    "owner": "nl-customs",
    "agencies": ["customs"],
    "members": {
        "nl-customs": ["read", "post", "admin"],
        "ke-customs": ["read", "post"],
        "de-customs": ["read", "post"],
    },
}


async def ids_at(member: Member) -> list[str]:
    async with member.service.store.read() as conn:
        return list((await conn.execute(sa.select(bulletins.c.id).order_by(bulletins.c.n))).scalars())


async def receipts_at(member: Member, node: str, status: str = "received") -> set[str]:
    async with member.service.store.read() as conn:
        rows = await conn.execute(
            sa.select(receipts.c.bulletin_id).where(receipts.c.node == node, receipts.c.status == status)
        )
        return set(rows.scalars())


async def post_many(member: Member, n: int, tag: str) -> list[str]:
    out = []
    for i in range(n):
        status, body, _ = await member.api(
            "POST", "/api/v1/channels/c2c/bulletins", body={"kind": "alert", "title": f"{tag} {i}"}
        )
        assert status == 201, body
        out.append(body["id"])
    return out


async def all_at(member: Member, wanted: list[str], timeout: float = 20) -> None:
    async def check() -> bool:
        return set(wanted) <= set(await ids_at(member))

    await eventually(check, timeout=timeout, what=f"{len(wanted)} bulletins at {member.id}")


class FaultyReceiver(StandIn):
    """Stands in for a node with that node's own TLS identity and answers badly on purpose."""

    def __init__(self, member: Member) -> None:
        super().__init__(member)
        self.mode = "503"
        self.requests = 0
        self.release = asyncio.Event()

    def routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        await request.read()
        if self.mode == "hang":
            await self.release.wait()
        return web.json_response(
            {"type": "about:blank", "title": "down", "status": 503, "detail": "maintenance"},
            status=503,
            content_type="application/problem+json",
        )

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await super().__aexit__(*exc)


async def test_a_failing_or_silent_receiver_loses_nothing_and_delays_no_one(make_federation: MakeFederation) -> None:
    fed = await make_federation(nodes=THREE, channels=[C2C], options={"request_timeout_seconds": 1})
    a, c = fed["nl-customs"], fed["de-customs"]
    await fed.stop("ke-customs")
    async with FaultyReceiver(fed["ke-customs"]) as faulty:
        first = await post_many(a, 20, "during 503s")
        await all_at(c, first, timeout=10)  # the healthy peer is served meanwhile
        await eventually(lambda: _async(faulty.requests >= 2), what="retries against the 503s")
        faulty.mode = "hang"
        second = await post_many(a, 20, "during timeouts")
        await all_at(c, first + second, timeout=10)
        status = a.node.service.outbox.senders["ke-customs"].status  # type: ignore[union-attr]

        async def timed_out() -> bool:
            return "Timeout" in (status.last_error or "")

        await eventually(timed_out, timeout=10, what="a timeout to be recorded")
        _, peers, _ = await a.api("GET", "/api/v1/peers")
        ke_status = next(p for p in peers if p["peer"] == "ke-customs")
        assert ke_status["queued"] == 40 and ke_status["failures"] >= 1 and ke_status["last_error"]
    await fed.start("ke-customs")
    b = fed["ke-customs"]
    await all_at(b, first + second)

    async def receipted() -> bool:
        return await receipts_at(a, "ke-customs") == set(first + second)

    await eventually(receipted, what="B's receipts at A")
    held = await ids_at(b)
    assert len(held) == len(set(held)) == 40  # nothing lost, nothing twice
    assert (await a.service.queued_counts()).get("ke-customs", 0) == 0


async def _async(value: bool) -> bool:
    return value


async def test_a_node_that_was_down_catches_up_from_another_member_while_the_author_is_down(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation(nodes=THREE, channels=[C2C])
    a, b = fed["nl-customs"], fed["ke-customs"]
    await fed.stop("de-customs")
    posted = await post_many(a, 25, "while de is down")
    await all_at(b, posted)
    await fed.stop("nl-customs")  # the author is gone too
    await fed.start("de-customs")
    c = fed["de-customs"]
    await all_at(c, posted)  # pulled from ke-customs
    async with c.service.store.read() as conn:
        entries = [json.loads(e) for e in (await conn.execute(sa.select(audit_log.c.entry))).scalars()]
    relayed = [e for e in entries if e["event"] == "bulletin.received" and e.get("relayed")]
    assert {e["bulletin"] for e in relayed} == set(posted) and {e["from"] for e in relayed} == {"ke-customs"}
    await fed.start("nl-customs")
    a = fed["nl-customs"]

    async def receipted() -> bool:
        return await receipts_at(a, "de-customs") == set(posted)

    await eventually(receipted, what="de's receipts at the author")
    held = await ids_at(c)
    assert len(held) == len(set(held)) == 25


async def test_catch_up_pages_and_cursors(make_federation: MakeFederation) -> None:
    fed = await make_federation(nodes=THREE, channels=[C2C])
    a, b = fed["nl-customs"], fed["ke-customs"]
    posted = await post_many(a, 450, "page")  # more than two pages of 200
    await all_at(b, posted)
    page = await b.service.served_envelopes("de-customs", "c2c", after=0, limit=200)
    body = json.loads(page)
    assert len(body["items"]) == 200 and body["more"] is True
    catchup = fed["de-customs"].node.service.catchup  # type: ignore[union-attr]
    await catchup.pull("ke-customs", "c2c")
    assert await fed["de-customs"].service.cursor("ke-customs", "c2c") == body["items"][-1]["n"] + 250


async def test_a_hole_in_a_stream_is_filled_from_the_author_first(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    a, b = fed["nl-customs"], fed["ke-customs"]
    [first] = await post_many(a, 1, "first")
    await all_at(b, [first])
    await fed.stop("ke-customs")
    later = await post_many(a, 3, "later")
    # A's outbox loses track of them (as if it crashed after sending), so only a gap can bring 2 and 3.
    async with a.service.store.engine.begin() as conn:
        await conn.execute(sa.update(outbox).where(outbox.c.dest == "ke-customs").values(state="delivered"))
        last = (await conn.execute(sa.select(bulletins.c.envelope).where(bulletins.c.id == later[-1]))).scalar_one()
    txn = b'{"txn":"gap","envelopes":[' + bytes(last) + b"]}"
    # The author is down when B comes back, so B's start-up catch-up cannot fetch them either.
    await fed.stop("nl-customs")
    await fed.start("ke-customs")
    b = fed["ke-customs"]
    status, problem, ctype = await b.fed_post(a, txn)
    assert status in (502, 503) and ctype == "application/problem+json", problem  # author unreachable: retry later
    assert await ids_at(b) == [first]
    await fed.start("nl-customs")
    status, body, _ = await b.fed_post(fed["nl-customs"], txn)
    assert status == 200, body
    assert await ids_at(b) == [first, *later]  # stored in stream order
    _, page, _ = await b.api("GET", "/api/v1/bulletins?channel=c2c")
    assert [i["seq"] for i in page["items"]] == [1, 2, 3, 4]


async def test_an_open_is_receipted_back_to_the_author(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    a, b = fed["nl-customs"], fed["ke-customs"]
    [bid] = await post_many(a, 1, "to be opened")
    await all_at(b, [bid])
    status, _, _ = await b.api("GET", f"/api/v1/bulletins/{bid}")
    assert status == 200

    async def opened() -> bool:
        return bid in await receipts_at(a, "ke-customs", "opened")

    await eventually(opened, what="the opened receipt at the author")
    async with b.service.store.read() as conn:  # read through the API: no longer unread in the console
        assert await conn.scalar(sa.select(user_reads.c.at).where(user_reads.c.bulletin_id == bid)) is not None
    _, shown, _ = await a.api("GET", f"/api/v1/bulletins/{bid}")
    assert {(r["node"], r["status"]) for r in shown["receipts"]} >= {
        ("ke-customs", "received"),
        ("ke-customs", "opened"),
    }


async def test_a_request_from_a_peer_in_backoff_makes_the_sender_retry_at_once(make_federation: MakeFederation) -> None:
    fed = await make_federation(options={"retry_base_seconds": 30, "retry_max_seconds": 60})
    a = fed["nl-customs"]
    await fed.stop("ke-customs")
    [bid] = await post_many(a, 1, "while ke is down")
    sender = a.node.service.outbox.senders["ke-customs"]  # type: ignore[union-attr]

    async def backing_off() -> bool:
        return sender.status.backoff_until is not None

    await eventually(backing_off, what="the sender to back off (15 to 60 s)")
    await fed.start("ke-customs")  # its start-up catch-up calls A: that contact ends A's backoff

    async def pushed() -> bool:
        return sender.status.last_success is not None

    await eventually(pushed, timeout=10, what="A's own push to succeed long before its backoff ends")
    assert bid in await receipts_at(a, "ke-customs")


async def test_an_admin_command_writing_next_to_a_running_node_does_not_wedge_its_audit_log(
    make_federation: MakeFederation,
) -> None:
    from exchange.service.users import add_user
    from exchange.store import Store

    fed = await make_federation()
    a = fed["nl-customs"]
    other = await Store.open(a.config.database_url)  # what `exchange users add` does, in another process
    try:
        await add_user(other, "clerk", "contact-point")
    finally:
        await other.close()
    await post_many(a, 2, "after the admin command")  # audited writes at the node still work
    async with a.service.store.read() as conn:
        idx = list((await conn.execute(sa.select(audit_log.c.idx).order_by(audit_log.c.idx))).scalars())
    assert idx == list(range(len(idx)))  # one log, no gaps, no clashes
    await a.service.store.close()
    with pytest.raises(Unavailable):
        await a.service.store.audit({"event": "late"})  # type: ignore[arg-type]


async def test_a_node_that_is_not_a_member_now_is_served_no_markers(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A removed member may still ask for catch-up pages (the log names it, so that it can learn of
    its removal), and is served what was addressed to it. It was also served a marker of every
    later bulletin (its id, author and seq): who posts, and how much, after it left. Now a node
    that is not a member of the channel's current state, removed or invited and not yet accepted,
    is served no markers; once it is a member again, it is."""
    fed = await make_federation(nodes=THREE, channels=[C2C])
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    before = await post_many(nl, 2, "before")
    await all_at(de, before)
    status, body, _ = await nl.api("POST", "/api/v1/channels/c2c/remove", user="admin", body={"node": de.id})
    assert status == 200, body
    after = await post_many(nl, 3, "after")
    await all_at(ke, after)

    async def served(query: str) -> list[tuple[str, bool]]:
        page = await de.service.transport.fetch(NodeId(nl.id), f"/fed/v1/channels/c2c/envelopes?{query}")
        return [(i["id"], i["envelope"] is not None) for i in page["items"]]

    mine = [(b, True) for b in before]
    assert await served("after=0&limit=200") == mine
    assert await served("author=nl-customs&after_seq=0&limit=10") == mine
    # Nor do `next` and `more` count what it is not served: an empty page saying `more` would tell
    # it that the author posted past seq 2, and `next` how many bulletins the channel holds.
    probe = await de.service.transport.fetch(
        NodeId(nl.id), "/fed/v1/channels/c2c/envelopes?author=nl-customs&after_seq=2&limit=1"
    )
    assert probe == {"items": [], "next": 0, "more": False}
    whole = await de.service.transport.fetch(NodeId(nl.id), "/fed/v1/channels/c2c/envelopes?after=0&limit=2")
    assert whole["next"] == POSITIONS + 2 and whole["more"] is True  # its own two, a full page
    rest = await de.service.transport.fetch(NodeId(nl.id), f"/fed/v1/channels/c2c/envelopes?after={POSITIONS + 2}")
    assert rest == {"items": [], "next": POSITIONS + 2, "more": False}
    # It is looked for among the next NON_MEMBER_SCAN bulletins past its cursor only: a bounded read.
    monkeypatch.setattr(catchup_module, "NON_MEMBER_SCAN", 1)
    assert await served("after=0&limit=200") == mine[:1]
    monkeypatch.undo()
    status, body, _ = await nl.api(
        "POST", "/api/v1/channels/c2c/invite", user="admin", body={"node": de.id, "rights": ["read"]}
    )
    assert status == 200, body
    assert await served("after=0&limit=200") == mine  # invited, not a member yet

    async def invited() -> bool:
        return NodeId(de.id) in de.service.channels.state("c2c").invited

    await eventually(invited, what="the invitation at de-customs")
    status, body, _ = await de.api("POST", "/api/v1/channels/c2c/accept", user="admin")
    assert status == 200, body

    async def member_again() -> bool:
        return NodeId(de.id) in nl.service.channels.state("c2c").members

    await eventually(member_again, what="de-customs a member again at nl-customs")
    assert await served("after=0&limit=200") == [*mine, *((a, False) for a in after)]


async def test_catch_up_numbers_count_one_channel_and_old_cursors_tell_nothing(make_federation: MakeFederation) -> None:
    """A page's numbers and cursor were `bulletins.n`, which counts every channel the server holds:
    between two items of one channel a member learnt how many bulletins the server had stored in
    channels it is not in. They are now positions in the channel (revision 0012). A cursor served
    before (an `n`) is served as the channel's start, whatever its value: honoured, it let a member
    find each bulletin's `n` by trying cursors (found by a read-only review)."""
    other = {**C2C, "id": "c2c-other", "members": {"nl-customs": ["read", "post", "admin"], "ke-customs": ["read"]}}
    fed = await make_federation(nodes=THREE, channels=[C2C, other])
    nl, de = fed["nl-customs"], fed["de-customs"]
    [first] = await post_many(nl, 1, "first")
    for i in range(5):  # five bulletins de is not told about, in a channel it is not in
        status, body, _ = await nl.api(
            "POST", "/api/v1/channels/c2c-other/bulletins", body={"kind": "alert", "title": f"other {i}"}
        )
        assert status == 201, body
    [second] = await post_many(nl, 1, "second")

    async def page(after: int) -> dict[str, Any]:
        got = await de.service.transport.fetch(NodeId(nl.id), f"/fed/v1/channels/c2c/envelopes?after={after}&limit=10")
        assert isinstance(got, dict)
        return got

    served = await page(0)
    numbers = [i["n"] for i in served["items"]]
    assert [i["id"] for i in served["items"]] == [first, second]
    assert numbers == [POSITIONS + 1, POSITIONS + 2] and served["next"] == POSITIONS + 2
    assert (await page(POSITIONS + 1))["items"][0]["id"] == second
    assert (await page(POSITIONS + 2))["items"] == []
    async with nl.service.store.read() as conn:
        old = await conn.scalar(sa.select(bulletins.c.n).where(bulletins.c.id == first))
    assert old is not None and old < POSITIONS
    whole = await page(0)
    for cursor in (old, old + 1, old + 6, POSITIONS - 1):  # cursors this node served before revision 0012
        assert await page(cursor) == whole
