"""The application layer without HTTP: two nodes joined by an in-memory `PeerTransport`.

A partner is faked through the transport the service is built with (no TLS server, nothing
patched), and a sender loop lives through a database error and delivers once it is mended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exchange.clock import timestamp
from exchange.errors import AnswersFull, ExchangeError, PeerError, PeerRefused, Unavailable
from exchange.http.problem import status_for
from exchange.model import Bulletin, NodeId
from exchange.provision import init_federation
from exchange.service import sender as sender_module
from exchange.service.node import NodeService
from exchange.store import bulletins, outbox, receipts
from tests.conftest import DEFAULT_NODES, eventually, write_federation
from tests.service.lone_node import joined
from tests.test_delivery import BULLETIN

A, B = "nl-customs", "ke-customs"


class MemoryTransport:
    """Routes the federation calls straight into the partner's application layer."""

    def __init__(self, me: str) -> None:
        self.me = NodeId(me)
        self.nodes: dict[str, NodeService] = {}
        self.sent: list[tuple[str, str]] = []
        self.down: set[str] = set()

    def _partner(self, node: str) -> NodeService:
        if node in self.down or node not in self.nodes:
            raise PeerError(f"{node}: unreachable")
        return self.nodes[node]

    async def fetch(self, node: NodeId, path: str) -> Any:
        partner = self._partner(node)
        events = re.fullmatch(r"/fed/v1/channels/([^/]+)/events\?after=(-?\d+)", path)
        try:
            if events:
                got = partner.channels.events_for_peer(self.me, events[1], int(events[2]))
                return {"events": [e.model_dump(mode="json") for e in got]}
            page = re.fullmatch(r"/fed/v1/channels/([^/]+)/envelopes\?after=(\d+)&limit=(\d+)", path)
            assert page, path
            raw = await partner.served_envelopes(self.me, page[1], after=int(page[2]), limit=int(page[3]))
            return json.loads(raw)
        except ExchangeError as exc:
            raise PeerRefused(exc.detail, status_for(exc)) from exc

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        partner = self._partner(node)
        self.sent.append((node, path))
        assert path == "/fed/v1/envelopes", path
        txn = json.loads(body)
        try:
            got = await partner.receive(self.me, txn["events"], txn["envelopes"], txn["receipts"])
        except ExchangeError as exc:
            raise PeerRefused(exc.detail, status_for(exc)) from exc
        return {"txn": txn["txn"], "receipts": [r.model_dump(mode="json") for r in got]}


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[dict[str, NodeService]]:
    """Two nodes' application layers on SQLite, provisioned as an operator would, not started."""
    folder = tmp_path / "nodes"
    channel = {
        "id": "c2c",
        "owner": A,
        "agencies": ["customs"],
        "members": {A: ["read", "post", "admin"], B: ["read", "post"]},
    }
    write_federation(folder, {n: DEFAULT_NODES[n] for n in (A, B)}, [channel], {})
    await init_federation(folder)
    async with joined(folder, {node: MemoryTransport(node) for node in (A, B)}) as services:
        yield services


async def _is(value: int, wanted: int) -> bool:
    return value == wanted


async def _count(service: NodeService, table: sa.Table) -> int:
    async with service.store.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


async def test_a_peer_faked_through_the_transport_gets_the_bulletin_and_answers_with_a_receipt(
    pair: dict[str, NodeService],
) -> None:
    a, b = pair[A], pair[B]
    await a.start()
    await b.start()
    officer = await a.users.get("officer")
    posted = await a.post(officer, "c2c", Bulletin.model_validate(BULLETIN))

    async def delivered() -> bool:
        return await a.queued_counts() == {}

    await eventually(delivered, what="delivery through the memory transport")
    reader = await b.users.get("officer")
    shown = await b.read(reader, posted.id)
    assert shown.bulletin["title"] == BULLETIN["title"] and shown.author == A
    async with a.store.read() as conn:
        held = (await conn.execute(sa.select(receipts.c.node).where(receipts.c.bulletin_id == posted.id))).all()
    assert [r.node for r in held] == [B]
    statuses = {s.peer: s for s in await a.peer_statuses()}
    assert statuses[B].delivered == 1 and statuses[B].failures == 0


async def test_a_sender_loop_survives_a_database_error_and_delivers_once_it_is_mended(
    pair: dict[str, NodeService],
) -> None:
    a, b = pair[A], pair[B]
    officer = await a.users.get("officer")
    await a.post(officer, "c2c", Bulletin.model_validate(BULLETIN))
    # Hand-edit the database under the running node: the sender's next read fails.
    async with a.store.engine.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE outbox RENAME TO outbox_away"))
    await a.start()
    sender = a.outbox.senders[B]

    async def failed_twice() -> bool:
        return sender.status.failures >= 2

    await eventually(failed_twice, what="the sender to fail on the database and retry")
    assert "OperationalError" in (sender.status.last_error or "")
    assert not any(t.done() for t in a._tasks), "a background loop ended"
    async with a.store.engine.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE outbox_away RENAME TO outbox"))
    sender.peer_seen()  # as a request from the partner would: retry now, not after the backoff

    async def delivered() -> bool:
        return await _count(b, bulletins) == 1 and await a.queued_counts() == {}

    await eventually(delivered, what="delivery after the database is mended")
    with contextlib.suppress(Exception):
        await a.stop()
    assert a._tasks == []


async def test_a_busy_store_here_is_not_counted_against_the_partner(pair: dict[str, NodeService]) -> None:
    """A sender whose own store is busy (every pooled connection taken: Unavailable) retries after
    the base delay and leaves the partner's failures and backoff as they were; a failure of the
    partner's (PeerError) still backs off exponentially. Seen at 200 nodes: a busy store backed
    senders off their partners for up to a minute (bench/README.md, simulate.py)."""
    a = pair[A]
    sender = a.outbox.senders[B]
    await sender._back_off(PeerError(f"{B}: unreachable"), 1)
    assert sender.status.failures == 1 and "unreachable" in (sender.status.last_error or "")
    await sender._back_off(Unavailable("the database is busy; try again shortly"), 1)
    assert sender.status.failures == 1 and "busy" in (sender.status.last_error or "")  # as it was
    # This node holds as much of all partners' answers as it may (exchange.node.peers.Answers)
    full = AnswersFull(f"{B}: its answer would take this node past ...: asked again later")
    for _ in range(sender_module.BUSY_RETRIES):
        await sender._back_off(full, 1)
    assert sender.status.failures == 1 and "AnswersFull" in (sender.status.last_error or "")  # as it was
    # A budget kept full (partners colluding) does not have the batch sent again every base delay for ever.
    await sender._back_off(full, 1)
    assert sender.status.failures == 2


async def _held_back_by_a_full_page(pair: dict[str, NodeService]) -> tuple[MemoryTransport, int]:
    """A has 3 bulletins queued for B (B unreachable until now) and has just served B a full
    catch-up page; B is reachable again and has been in touch. Returns A's transport and the
    page's cursor."""
    a = pair[A]
    transport = a.transport  # the adapter; the outbox holds it gated on the roster
    assert isinstance(transport, MemoryTransport)
    transport.down.add(B)
    await a.start()
    officer = await a.users.get("officer")
    for i in range(3):
        await a.post(officer, "c2c", Bulletin.model_validate({**BULLETIN, "title": f"queued {i}"}))
    sender = a.outbox.senders[B]

    async def tried() -> bool:
        return sender.status.failures >= 1

    await eventually(tried, what="a push to the unreachable partner")
    page = json.loads(await a.served_envelopes(B, "c2c", after=0, limit=2))
    assert page["more"] is True and len(page["items"]) == 2  # B is behind by more than a page
    transport.down.clear()
    sender.peer_seen()  # as B's page request did: without the hold, the sender would push now
    return transport, page["next"]


async def test_a_partner_served_full_catch_up_pages_is_not_pushed_what_it_pulls(
    pair: dict[str, NodeService],
) -> None:
    """While a partner is served full catch-up pages it is behind and pulls what is queued for it,
    so its sender holds back (pushing too would make it receive and drop each envelope twice,
    bench/catchup.py); a page that is not full ends the hold, and what is left is pushed."""
    a, b = pair[A], pair[B]
    transport, cursor = await _held_back_by_a_full_page(pair)
    officer = await a.users.get("officer")
    await a.post(officer, "c2c", Bulletin.model_validate({**BULLETIN, "title": "posted while it pulls"}))
    await asyncio.sleep(0.5)
    assert [path for node, path in transport.sent if node == B] == []
    assert (await a.queued_counts())[B] == 4
    shown = {s.peer: s for s in await a.peer_statuses()}[B]  # what `exchange peers` and the console show
    assert shown.pull_hold_until is not None and shown.pull_hold_until > timestamp()
    [figures] = [p for p in (await a.metrics.snapshot([B])).peers if p.peer == B]
    assert 0 < figures.pull_hold_seconds <= sender_module.PULL_HOLD_SECONDS
    last = json.loads(await a.served_envelopes(B, "c2c", after=cursor, limit=1000))
    assert last["more"] is False  # caught up: the sender pushes again, at once

    async def delivered() -> bool:
        return await a.queued_counts() == {} and await _count(b, bulletins) == 4

    await eventually(delivered, timeout=5, what="the rest pushed once the partner's pages were not full")
    assert {s.peer: s for s in await a.peer_statuses()}[B].pull_hold_until is None


async def test_a_partner_that_stops_pulling_midway_is_pushed_after_the_hold(
    pair: dict[str, NodeService], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partner that was served a full page and asks for no more is pushed what is queued once
    the hold runs out (held first: nothing goes out at once)."""
    monkeypatch.setattr(sender_module, "PULL_HOLD_SECONDS", 1.0)
    a, b = pair[A], pair[B]
    transport, _ = await _held_back_by_a_full_page(pair)  # and B asks for no more pages
    await asyncio.sleep(0.3)
    assert [path for node, path in transport.sent if node == B] == []

    async def delivered() -> bool:
        return await a.queued_counts() == {} and await _count(b, bulletins) == 3

    await eventually(delivered, timeout=5, what="the queue pushed once the hold ran out")


async def test_what_a_partner_pulled_and_receipted_is_delivered_and_a_finished_item_keeps_its_state(
    pair: dict[str, NodeService],
) -> None:
    """The 'received' receipts a partner sends for what it pulled mark those queued items
    delivered (and count in its delivery status), found by their unique key (not by seeking
    every item queued for the partner); an item already finished otherwise (here cancelled)
    keeps its state."""
    a, b = pair[A], pair[B]
    transport = a.transport
    assert isinstance(transport, MemoryTransport)
    transport.down.add(B)
    await a.start()
    await b.start()
    officer = await a.users.get("officer")
    posted = [
        (await a.post(officer, "c2c", Bulletin.model_validate({**BULLETIN, "title": f"pulled {i}"}))).id
        for i in range(5)  # SQLite seeks by a short IN list (2) either way: by 3 or more, not so
    ]
    async with a.store.engine.begin() as conn:
        await conn.execute(sa.update(outbox).where(outbox.c.ref == posted[1]).values(state="cancelled"))
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if re.search(r"\boutbox\.(ref|n) IN", statement):
            seen.append((statement, parameters))

    engine = a.store.engine.sync_engine
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        assert await b.catchup.pull(A, "c2c") >= 5

        async def receipted() -> bool:
            async with a.store.read() as conn:
                got = await conn.scalars(sa.select(receipts.c.bulletin_id).where(receipts.c.node == B))
                return set(got) == set(posted)

        await eventually(receipted, what="B's receipts for what it pulled, at A")
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    async with a.store.read() as conn:
        states = dict((await conn.execute(sa.select(outbox.c.ref, outbox.c.state).where(outbox.c.dest == B))).all())
        assert states == {bid: "cancelled" if bid == posted[1] else "delivered" for bid in posted}
        assert seen, "no statement found the receipted items"
        for statement, parameters in seen:  # SQLite has no statistics: it must not pick a state index
            rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            plan = " ".join(str(r[-1]) for r in rows)
            assert "ix_outbox_queued" not in plan and "ix_outbox_finished" not in plan, (statement, plan)
    # what the operator's status and /metrics count delivered: the four, though none was pushed
    # (counted once the receipts' job returns, a moment after its commit shows them)
    await eventually(lambda: _is(a.outbox.senders[B].status.delivered, 4), what="four delivered in B's status")


async def test_a_backlog_is_read_one_requests_worth_at_a_time(
    pair: dict[str, NodeService], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queue of large envelopes: a sender's read takes the head that fits in one request, by
    the stored sizes, and reads only those envelopes, not `batch_size` of them (up to 8 MiB each)."""
    from exchange.service import outbox as outbox_module

    author = pair[A]
    user = await author.users.get("officer")
    for i in range(5):
        await author.posting.post(user, "c2c", Bulletin.model_validate({**BULLETIN, "title": f"backlog {i}"}))
    async with author.store.read() as conn:
        sizes = [int(s) for s in (await conn.execute(sa.select(sa.func.length(bulletins.c.envelope)))).scalars()]
    monkeypatch.setattr(outbox_module, "MAX_TRANSACTION_BYTES", sizes[0] * 2 + 2)
    monkeypatch.setattr(outbox_module, "SMALL_ENVELOPE", 0)  # each counts as large: read only if kept
    read: list[int] = []
    wire_bytes = author.outbox._wire_bytes

    async def counted(conn: Any, refs: Any) -> Any:
        read.append(len(refs))
        return await wire_bytes(conn, refs)

    monkeypatch.setattr(author.outbox, "_wire_bytes", counted)
    head = await author.outbox.pending(B, 100)
    assert [i.n for i in head] == sorted(i.n for i in head) and len(head) == 2, head
    assert read == [2]  # two envelopes read, not five


async def test_a_partner_served_a_full_page_during_a_push_is_not_pushed_the_batch_read_ahead(
    pair: dict[str, NodeService], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender reads its next batch while the last is in flight. A partner served a full catch-up
    page meanwhile pulls what is queued: the batch read ahead is not pushed to it, but stays queued
    (seen in bench/catchup.py: every envelope of a long catch-up received twice, pulled and pushed)."""
    a = pair[A]
    transport, _ = await _held_back_by_a_full_page(pair)
    monkeypatch.setattr(a.outbox, "config", a.outbox.config.model_copy(update={"batch_size": 1}))
    sender = a.outbox.senders[B]
    sender._pulling_until = 0.0  # the hold over: the sender pushes one at a time
    read = a.outbox.queued

    async def read_ahead(dest: str, limit: int, *, after: int = 0) -> list[Any]:
        got = await read(dest, limit, after=after)
        if after:  # the read ahead, with a push in flight: the partner is served a full page now
            a.outbox.peer_pulled(B, more=True)
        return got

    monkeypatch.setattr(a.outbox, "queued", read_ahead)
    sender.wake()

    async def one_pushed() -> bool:
        return len([path for node, path in transport.sent if node == B]) >= 1

    await eventually(one_pushed, what="the first push")
    await asyncio.sleep(0.5)
    assert len([path for node, path in transport.sent if node == B]) == 1
    assert (await a.queued_counts())[B] == 2
