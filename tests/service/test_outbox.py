"""The application layer without HTTP: two nodes joined by an in-memory `PeerTransport`.

A partner is faked through the transport the service is built with (no TLS server, nothing
patched), and a sender loop lives through a database error and delivers once it is mended.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exchange.errors import ExchangeError, PeerError, PeerRefused, Unavailable
from exchange.http.problem import status_for
from exchange.model import Bulletin, NodeId
from exchange.provision import init_federation
from exchange.service.node import NodeService
from exchange.store import bulletins, receipts
from tests.conftest import DEFAULT_NODES, eventually, write_federation
from tests.service.lone_node import node_service
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
    services: dict[str, NodeService] = {}
    transports: dict[str, MemoryTransport] = {}
    for node in (A, B):
        transports[node] = MemoryTransport(node)
        services[node] = await node_service(folder / f"{node}.toml", transports[node])
    for transport in transports.values():
        transport.nodes = services
    try:
        yield services
    finally:
        for service in services.values():
            await service.stop()
            await service.store.close()


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
