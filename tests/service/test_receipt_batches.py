"""Batch receipts between two nodes' application layers (docs/protocol.md, section 10).

The reader signs one statement per stored batch; the author checks each receipt's inclusion
proof and one signature per statement. The partner is reached through a stand-in transport,
which here also plays a dishonest or unlucky network.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exchange.audit import events as ev
from exchange.crypto import canonical_json, strict_loads
from exchange.errors import PeerError
from exchange.model import Bulletin, NodeId
from exchange.protocol.receipt import parse_receipt, verify_receipt
from exchange.provision import init_federation
from exchange.service.node import NodeService
from exchange.store import audit_log, bulletins, outbox, receipts
from tests.conftest import DEFAULT_NODES, eventually, write_federation
from tests.service.lone_node import joined
from tests.service.test_outbox import MemoryTransport
from tests.test_delivery import BULLETIN

A, B = "nl-customs", "ke-customs"


class ShiftyTransport(MemoryTransport):
    """The partner's real answer, then passed through `alter` (which may also raise)."""

    def __init__(self, me: str) -> None:
        super().__init__(me)
        self.alter: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.answers: list[dict[str, Any]] = []

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        answer: dict[str, Any] = await super().send(node, path, body)
        self.answers.append(answer)
        return self.alter(answer) if self.alter else answer


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[NodeService, NodeService, ShiftyTransport]]:
    """Author A and reader B, provisioned as an operator would, not started; A's transport is shifty."""
    folder = tmp_path / "nodes"
    channel = {"id": "c2c", "owner": A, "agencies": ["customs"], "members": {A: ["read", "post", "admin"], B: ["read"]}}
    write_federation(folder, {n: DEFAULT_NODES[n] for n in (A, B)}, [channel], {})
    await init_federation(folder)
    shifty = ShiftyTransport(A)
    async with joined(folder, {A: shifty, B: MemoryTransport(B)}) as services:
        yield services[A], services[B], shifty


async def post(a: NodeService, title: str) -> str:
    officer = await a.users.get("officer")
    return (await a.post(officer, "c2c", Bulletin.model_validate({**BULLETIN, "title": title}))).id


async def rows(service: NodeService, table: sa.Table, *where: Any) -> list[Any]:
    async with service.store.read() as conn:
        return list((await conn.execute(sa.select(table).where(*where))).all())


async def delivered_entries(service: NodeService) -> int:
    """How many (bulletin, recipient) deliveries the audit log records."""
    async with service.store.read() as conn:
        entries = (await conn.execute(sa.select(audit_log.c.entry))).scalars().all()
    return sum(len(ev.delivered_to(json.loads(bytes(e)))) for e in entries)


async def test_a_receipt_whose_proof_belongs_to_another_bulletin_leaves_nothing_stored_or_audited(
    pair: tuple[NodeService, NodeService, ShiftyTransport],
) -> None:
    a, _, transport = pair
    first, second = await post(a, "First"), await post(a, "Second")

    def steal(answer: dict[str, Any]) -> dict[str, Any]:
        """B's receipt of one bulletin made to carry the proof of the other's."""
        one, two = answer["receipts"]
        return {**answer, "receipts": [one, {**two, "index": one["index"], "proof": one["proof"]}]}

    transport.alter = steal
    await a.start()
    sender = a.outbox.senders[B]

    async def refused() -> bool:
        return sender.status.failures >= 1

    await eventually(refused, what="the author to refuse the answer")
    assert "ProofError" in (sender.status.last_error or "")
    honest = transport.answers[0]["receipts"]
    assert {r["bulletin"] for r in honest} == {first, second} and len({r["signature"] for r in honest}) == 1
    assert await rows(a, receipts) == []
    assert await delivered_entries(a) == 0
    assert {r.state for r in await rows(a, outbox, outbox.c.dest == B)} == {"queued"}

    transport.alter = None
    sender.peer_seen()

    async def delivered() -> bool:
        return await a.queued_counts() == {}

    await eventually(delivered, what="delivery once the answer is honest")
    held = await rows(a, receipts)
    assert sorted(r.bulletin_id for r in held) == sorted([first, second])
    for row in held:
        receipt = parse_receipt(strict_loads(row.receipt))
        assert receipt.v == 2 and receipt.size == 2
        verify_receipt(receipt, a.fed)  # each one provable on its own
    assert await delivered_entries(a) == 2


async def test_a_retried_envelope_gets_its_first_receipt_and_an_answer_may_mix_batches(
    pair: tuple[NodeService, NodeService, ShiftyTransport],
) -> None:
    a, b, transport = pair

    def lose(answer: dict[str, Any]) -> dict[str, Any]:
        raise PeerError("the answer was lost on the way back")

    transport.alter = lose
    first = await post(a, "First")
    await a.start()
    sender = a.outbox.senders[B]

    async def b_holds_first() -> bool:
        return len(await rows(b, bulletins)) == 1 and sender.status.failures >= 1

    await eventually(b_holds_first, what="the reader to store the first bulletin while its answer is lost")
    second = await post(a, "Second")

    async def b_holds_both() -> bool:
        return len(await rows(b, bulletins)) == 2

    sender.peer_seen()
    await eventually(b_holds_both, what="the reader to store the second bulletin in a batch of its own")
    transport.alter = None
    sender.peer_seen()

    async def delivered() -> bool:
        return await a.queued_counts() == {}

    await eventually(delivered, what="delivery once answers get through")
    at_b = {r.bulletin_id: r.receipt for r in await rows(b, receipts)}
    at_a = {r.bulletin_id: r.receipt for r in await rows(a, receipts)}
    assert at_a == at_b  # byte for byte: a retry never gets a new receipt
    one, two = (parse_receipt(strict_loads(at_a[bid])) for bid in (first, second))
    assert one.signature != two.signature and one.size == two.size == 1
    first_answer = transport.answers[0]["receipts"]
    assert [canonical_json(r).decode() for r in first_answer] == [at_b[first]]
    assert await delivered_entries(a) == 2
