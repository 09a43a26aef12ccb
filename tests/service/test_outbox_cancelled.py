"""What is cancelled in the outbox goes nowhere, even when a sender had already read it: the owner
removes a member ("nothing more goes to a removed member, including what was queued for it") or
a revocation is applied while a batch for that member is read, or read ahead while the batch
before it travels. The batch goes without the cancelled items, its transaction id is that of
what goes, no `bulletin.sent_to` names them, and a cancelled row that was on its way already (sent
before the cancel) stays cancelled when its receipt comes back.

Before, the batch went as it was read, and each of its rows became 'delivered': the audit log
read `send.refused` followed by `bulletin.sent_to` for the same item. Found by a read-only review.
Two nodes' application layers joined in memory (tests/service/test_outbox.py), on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exchange.audit import events as ev
from exchange.model import Bulletin, NodeId
from exchange.protocol.receipt import make_receipts
from exchange.provision import init_federation
from exchange.service.node import NodeService
from exchange.service.outbox import transaction_id
from exchange.service.revocation import cancel_queued
from exchange.store import audit_log, bulletins, outbox
from tests.conftest import DEFAULT_NODES, eventually, write_federation
from tests.service.lone_node import node_service
from tests.service.test_outbox import MemoryTransport
from tests.test_delivery import BULLETIN

A, B = "nl-customs", "ke-customs"


class Held(MemoryTransport):
    """Holds each push before it reaches the partner until `release` is set: batches stay in flight."""

    def __init__(self, me: str) -> None:
        super().__init__(me)
        self.release = asyncio.Event()
        self.waiting = 0

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        self.waiting += 1
        await self.release.wait()
        return await super().send(node, path, body)


@pytest.fixture
async def pair(
    tmp_path: Path, database: Callable[[str], Awaitable[str]]
) -> AsyncIterator[tuple[NodeService, NodeService, Held]]:
    """The owner A of channels c2c and c2x, and their member B, joined in memory; batches of two
    (full ones are read ahead); not started."""
    folder = tmp_path / "nodes"
    channels = [
        {"id": c, "owner": A, "agencies": ["customs"], "members": {A: ["read", "post", "admin"], B: ["read", "post"]}}
        for c in ("c2c", "c2x")
    ]
    write_federation(
        folder,
        {n: DEFAULT_NODES[n] for n in (A, B)},
        channels,
        {n: await database(n) for n in (A, B)},
        {"batch_size": 2},
    )
    await init_federation(folder)
    held, plain = Held(A), MemoryTransport(B)
    services = {A: await node_service(folder / f"{A}.toml", held), B: await node_service(folder / f"{B}.toml", plain)}
    held.nodes = plain.nodes = services
    try:
        yield services[A], services[B], held
    finally:
        held.release.set()
        for service in services.values():
            with contextlib.suppress(Exception):
                await service.stop()
            await service.store.close()


async def post(service: NodeService, channel: str, title: str) -> str:
    officer = await service.users.get("officer")
    return str((await service.post(officer, channel, Bulletin.model_validate({**BULLETIN, "title": title}))).id)


async def states(service: NodeService, dest: str) -> dict[str, str]:
    """Each envelope queued for `dest` at `service`, by bulletin: the state of its outbox row."""
    async with service.store.read() as conn:
        rows = await conn.execute(
            sa.select(outbox.c.ref, outbox.c.state).where(outbox.c.dest == dest, outbox.c.kind == "envelope")
        )
        return {r.ref: r.state for r in rows}


async def log(service: NodeService, event: str) -> list[dict[str, Any]]:
    async with service.store.read() as conn:
        rows = await conn.execute(sa.select(audit_log.c.entry).order_by(audit_log.c.idx))
        return [e for e in (json.loads(bytes(r.entry)) for r in rows) if e["event"] == event]


async def sent_to(service: NodeService, dest: str) -> dict[str, str]:
    """The bulletins whose send to `dest` the log records, with the transaction id recorded."""
    return {e["bulletin"]: e["to"][dest] for e in await log(service, ev.BULLETIN_SENT_TO) if dest in e["to"]}


async def held_at(service: NodeService, ids: list[str]) -> list[str]:
    async with service.store.read() as conn:
        return sorted(await conn.scalars(sa.select(bulletins.c.id).where(bulletins.c.id.in_(ids))))


async def test_a_batch_read_ahead_for_a_member_removed_meanwhile_is_not_sent(
    pair: tuple[NodeService, NodeService, Held],
) -> None:
    """Six bulletins for B, in batches of two: the first two batches are in flight (held) and the
    third has been read ahead when the owner removes B. The third never reaches B; the six rows
    stay cancelled, the four that were on their way included, whose receipts B still returns."""
    a, b, held = pair
    posted = [await post(a, "c2c", f"Report {i}") for i in range(6)]
    await a.start()  # B is not: it holds what was pushed to it, and pulls nothing itself

    async def two_in_flight() -> bool:
        return held.waiting == 2

    await eventually(two_in_flight, what="two batches in flight to B")
    # Gathered with the sender's read-ahead of the third batch, or after it: once this read is
    # answered, that batch has been read.
    await a.outbox.queued(B, 1)
    await a.channels.change(None, "c2c", {"type": "remove", "node": B})
    held.release.set()

    async def all_done() -> bool:
        return await a.queued_counts() == {} and a.outbox.senders[B].status.in_flight == 0

    await eventually(all_done, what="the removal delivered to B")
    assert await held_at(b, posted) == sorted(posted[:4])  # sent before the removal; the third batch never
    assert await states(a, B) == dict.fromkeys(posted, "cancelled")
    assert sorted(await sent_to(a, B)) == sorted(posted[:4])


async def test_an_item_removed_or_revoked_after_its_batch_was_read_is_dropped_from_it(
    pair: tuple[NodeService, NodeService, Held],
) -> None:
    """A batch of X (c2x) and Y (c2c) is read for B; the owner then removes B from c2x. Marking
    the batch sent answers Y alone, and the 'sent' entry names Y with the id of a transaction of
    Y alone; X, should it have gone anyway, stays cancelled when B's receipt of it comes back.
    Then a batch read before a revocation is applied: nothing of it goes, and the log records
    the cancellation, not a send."""
    a, b, _ = pair
    x, y = await post(a, "c2x", "X"), await post(a, "c2c", "Y")
    assert await a.outbox.leases.claim(B)  # with workers (PostgreSQL), one marks under its lease
    batch = await a.outbox.queued(B, 10)
    assert [i.ref.encode() for i in batch] == [x, y]
    await a.channels.change(None, "c2x", {"type": "remove", "node": B})

    going = await a.outbox.mark_sent(B, batch)
    assert [i.ref.encode() for i in going] == [y]
    assert await sent_to(a, B) == {y: transaction_id([i.key for i in going])}
    at = "2026-12-01T10:00:00.000Z"
    await a.outbox.accept_receipts(B, batch, make_receipts([x, y], NodeId(B), "received", at, b.keys.signing))
    assert await states(a, B) == {x: "cancelled", y: "delivered"}

    z = await post(a, "c2c", "Z")
    batch = await a.outbox.queued(B, 10)
    assert [i.ref.encode() for i in batch if i.kind == "envelope"] == [z]
    assert await cancel_queued(a.store, {B: "cancelled: revoked in roster version 2"})  # Z, and c2x's event
    assert await a.outbox.mark_sent(B, batch) == []
    assert z not in await sent_to(a, B)
    assert [e["ref"] for e in await log(a, ev.SEND_REFUSED) if e["kind"] == "envelope"] == [z]
    assert (await states(a, B))[z] == "cancelled"


async def test_a_refusal_of_an_item_delivered_or_cancelled_meanwhile_changes_nothing(
    pair: tuple[NodeService, NodeService, Held],
) -> None:
    """The partner refuses an item for good (a 4xx to a batch of one) after the item was delivered
    another way (its receipt came with a pull) or cancelled (the partner removed from the
    channel): the row keeps its state and no `send.refused` is audited for it; an item still
    queued is rejected and audited, as before."""
    a, b, _ = pair
    x, y, z = await post(a, "c2x", "X"), await post(a, "c2c", "Y"), await post(a, "c2c", "Z")
    assert await a.outbox.leases.claim(B)
    batch = {i.ref.encode(): i for i in await a.outbox.queued(B, 10) if i.kind == "envelope"}
    assert sorted(batch) == sorted([x, y, z])
    await a.channels.change(None, "c2x", {"type": "remove", "node": B})  # X cancelled
    at = "2026-12-01T10:00:00.000Z"
    await a.outbox.accept_receipts(B, [batch[y]], make_receipts([y], NodeId(B), "received", at, b.keys.signing))
    refused_before = await log(a, ev.SEND_REFUSED)
    for item in (batch[x], batch[y], batch[z]):
        await a.outbox.reject_queued(B, item, "422: refused for good")
    assert await states(a, B) == {x: "cancelled", y: "delivered", z: "rejected"}
    fresh = (await log(a, ev.SEND_REFUSED))[len(refused_before) :]
    assert [(e["ref"], e["reason"]) for e in fresh] == [(z, "422: refused for good")]
