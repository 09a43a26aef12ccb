"""A queued item whose stored row is gone from the database (edited by hand, or lost): the item
is rejected and audited as `send.refused` with that reason, and what is queued behind it is
delivered, on SQLite and PostgreSQL.

Before, a queued envelope whose bulletin row was deleted made every read of its destination's
queue fail (a KeyError): the sender backed off and retried for ever and nothing behind it went,
with nothing in the log. A queued receipt or channel event whose row was deleted was sent as the
text `None`. Found by a read-only review. Two nodes' application layers joined in memory
(tests/service/test_outbox.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exchange.audit import events as ev
from exchange.model import Bulletin, NodeId
from exchange.provision import init_federation
from exchange.service.node import NodeService
from exchange.store import audit_log, bulletins, channel_events, outbox, receipts
from tests.conftest import DEFAULT_NODES, eventually, write_federation
from tests.service.lone_node import joined
from tests.service.test_outbox import MemoryTransport
from tests.test_delivery import BULLETIN

A, B = "nl-customs", "ke-customs"


class Recording(MemoryTransport):
    """Keeps every transaction body pushed."""

    def __init__(self, me: str) -> None:
        super().__init__(me)
        self.bodies: list[bytes] = []

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        self.bodies.append(body)
        return await super().send(node, path, body)


@pytest.fixture
async def pair(
    tmp_path: Path, database: Callable[[str], Awaitable[str]]
) -> AsyncIterator[tuple[NodeService, NodeService]]:
    """The owner A of channels c2c and c2x, and their member B, joined in memory; not started."""
    folder = tmp_path / "nodes"
    channels = [
        {"id": c, "owner": A, "agencies": ["customs"], "members": {A: ["read", "post", "admin"], B: ["read", "post"]}}
        for c in ("c2c", "c2x")
    ]
    write_federation(folder, {n: DEFAULT_NODES[n] for n in (A, B)}, channels, {n: await database(n) for n in (A, B)})
    await init_federation(folder)
    async with joined(folder, {n: Recording(n) for n in (A, B)}) as services:
        yield services[A], services[B]


async def post(service: NodeService, channel: str, title: str) -> str:
    officer = await service.users.get("officer")
    return str((await service.post(officer, channel, Bulletin.model_validate({**BULLETIN, "title": title}))).id)


async def hand_delete(service: NodeService, statement: sa.Delete) -> None:
    """An edit of the database behind the node's back, as an intruder or a careless operator makes it."""
    async with service.store.engine.begin() as conn:
        assert (await conn.execute(statement)).rowcount == 1


async def queue(service: NodeService, dest: str) -> dict[tuple[str, str], str]:
    """Every item ever queued at `service` for `dest`, by kind and ref: its state."""
    async with service.store.read() as conn:
        rows = await conn.execute(sa.select(outbox.c.kind, outbox.c.ref, outbox.c.state).where(outbox.c.dest == dest))
        return {(r.kind, r.ref): r.state for r in rows}


async def refused(service: NodeService) -> list[tuple[str, str, str, str]]:
    async with service.store.read() as conn:
        rows = await conn.execute(sa.select(audit_log.c.entry).order_by(audit_log.c.idx))
        entries = [json.loads(bytes(r.entry)) for r in rows]
    return [(e["kind"], e["ref"], e["to"], e["reason"]) for e in entries if e["event"] == ev.SEND_REFUSED]


async def held(service: NodeService, bid: str) -> bool:
    async with service.store.read() as conn:
        return await conn.scalar(sa.select(bulletins.c.id).where(bulletins.c.id == bid)) is not None


async def settled(service: NodeService, dest: str, item: tuple[str, str], wanted: str) -> None:
    async def done() -> bool:
        return (await queue(service, dest)).get(item) == wanted

    await eventually(done, what=f"{item} {wanted} at {service.config.id}")


async def test_a_queued_bulletin_whose_row_was_deleted_is_rejected_and_the_next_one_is_delivered(
    pair: tuple[NodeService, NodeService],
) -> None:
    """A posts X then Y for B; X's row is deleted from A's database before A sends anything. X is
    rejected with the reason audited, Y reaches B, and A's sender to B has no failure."""
    a, b = pair
    x, y = await post(a, "c2c", "X"), await post(a, "c2c", "Y")
    await hand_delete(a, sa.delete(bulletins).where(bulletins.c.id == x))
    await a.start()

    await settled(a, B, ("envelope", y), "delivered")
    assert await held(b, y) and not await held(b, x)
    assert (await queue(a, B))[("envelope", x)] == "rejected"
    reason = "its stored envelope is missing from this node's database"
    assert await refused(a) == [("envelope", x, B, reason)]
    assert a.outbox.senders[B].status.failures == 0


async def test_a_queued_receipt_or_channel_event_whose_row_was_deleted_is_rejected_not_sent_as_none(
    pair: tuple[NodeService, NodeService],
) -> None:
    """A queues a channel event of c2c for B and its row is deleted; B queues its 'opened' receipt
    of X for A and its row is deleted. Each is rejected with the reason audited, nothing is sent
    for it, and the bulletin queued behind it on each side is delivered."""
    a, b = pair
    await a.channels.change(None, "c2c", {"type": "set-export", "amber_strict": True})
    pos = a.channels.state("c2c").pos
    event = ("event", f"c2c:{pos}")
    assert (await queue(a, B))[event] == "queued"
    await hand_delete(
        a, sa.delete(channel_events).where(channel_events.c.channel == "c2c", channel_events.c.pos == pos)
    )
    x = await post(a, "c2x", "X")
    await a.start()

    await settled(a, B, ("envelope", x), "delivered")
    assert (await queue(a, B))[event] == "rejected"
    assert await refused(a) == [("event", f"c2c:{pos}", B, "its stored event is missing from this node's database")]

    await b.read(await b.users.get("officer"), x)  # B owes A its 'opened' receipt
    receipt = ("receipt", f"{x}:opened")
    assert (await queue(b, A))[receipt] == "queued"
    mine = sa.and_(receipts.c.bulletin_id == x, receipts.c.node == B, receipts.c.status == "opened")
    await hand_delete(b, sa.delete(receipts).where(mine))
    z = await post(b, "c2x", "Z")
    await b.start()

    await settled(b, A, ("envelope", z), "delivered")
    assert (await queue(b, A))[receipt] == "rejected"
    assert await refused(b) == [
        ("receipt", f"{x}:opened", A, "its stored receipt is missing from this node's database")
    ]
    for service in (a, b):
        transport = service.transport
        assert isinstance(transport, Recording)
        assert all(json.loads(body) for body in transport.bodies)  # `None` is no JSON
