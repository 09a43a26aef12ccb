"""Answers in the batch form between two nodes' application layers (docs/protocol.md 10.4).

The reader answers a push as its HTTP route does for a sender that asks for the batch form
(`batch_form`); the author stores the receipts it makes of it, the same bytes the reader stored,
and refuses an altered batch with nothing stored, delivered or audited.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exchange.crypto import strict_loads
from exchange.errors import PeerError
from exchange.model import NodeId
from exchange.protocol.receipt import parse_receipt, verify_receipt
from exchange.protocol.receipt_batches import batch_form
from exchange.provision import init_federation
from exchange.service.held_receipts import checked_receipts
from exchange.service.node import NodeService
from exchange.store import bulletins, outbox, receipt_batches, receipts
from tests.conftest import DEFAULT_NODES, eventually, write_federation
from tests.service.lone_node import joined
from tests.service.test_outbox import MemoryTransport
from tests.service.test_receipt_batches import delivered_entries, post, rows

A, B = "nl-customs", "ke-customs"


class BatchFormTransport(MemoryTransport):
    """The partner's answer in the batch form, then passed through `alter` (which may also raise)."""

    def __init__(self, me: str) -> None:
        super().__init__(me)
        self.alter: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self.answers: list[dict[str, Any]] = []

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        answer: dict[str, Any] = await super().send(node, path, body)
        full, batches = batch_form([parse_receipt(r) for r in answer["receipts"]])
        answer = {"txn": answer["txn"], "receipts": [r.model_dump(mode="json") for r in full], "batches": batches}
        self.answers.append(json.loads(json.dumps(answer)))
        return self.alter(answer) if self.alter else answer


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[NodeService, NodeService, BatchFormTransport]]:
    folder = tmp_path / "nodes"
    channel = {"id": "c2c", "owner": A, "agencies": ["customs"], "members": {A: ["read", "post", "admin"], B: ["read"]}}
    write_federation(folder, {n: DEFAULT_NODES[n] for n in (A, B)}, [channel], {})
    await init_federation(folder)
    transport = BatchFormTransport(A)
    async with joined(folder, {A: transport, B: MemoryTransport(B)}) as services:
        yield services[A], services[B], transport


async def held_texts(service: NodeService) -> dict[str, str]:
    """Each receipted bulletin's 'received' receipt text as the node shows it (made from its batch
    where it was taken in the batch form), by bulletin."""
    async with service.store.read() as conn:
        bids = {r.bulletin_id for r in await conn.execute(sa.select(receipts.c.bulletin_id))}
        return {
            b: h.receipt for b in bids for h in await checked_receipts(conn, service.fed, b) if h.status == "received"
        }


async def delivered(a: NodeService) -> bool:
    return await a.queued_counts() == {}


async def test_a_batch_form_answer_gives_the_author_the_readers_receipts_byte_for_byte(
    pair: tuple[NodeService, NodeService, BatchFormTransport],
) -> None:
    a, b, transport = pair
    sent = [await post(a, f"Alert {i}") for i in range(3)]
    await a.start()
    await eventually(lambda: delivered(a), what="delivery")
    (answer,) = transport.answers
    assert answer["receipts"] == [] and len(answer["batches"]) == 1
    assert sorted(answer["batches"][0]["bulletins"]) == sorted(sent)
    at_a = await held_texts(a)
    assert at_a == {r.bulletin_id: r.receipt for r in await rows(b, receipts)} and len(at_a) == 3
    for text in at_a.values():
        verify_receipt(parse_receipt(strict_loads(text)), a.fed)
    # kept as leaves of one batch statement: no text in their rows
    assert {(r.receipt, r.idx) for r in await rows(a, receipts)} == {("", 0), ("", 1), ("", 2)}
    assert len(await rows(a, receipt_batches)) == 1
    assert await delivered_entries(a) == 3


def _root_of_another(answer: dict[str, Any]) -> dict[str, Any]:
    (one,) = answer["batches"]
    st = one["statement"]
    return {**answer, "batches": [{**one, "statement": {**st, "root": st["root"][::-1]}}]}


def _one_left_out(answer: dict[str, Any]) -> dict[str, Any]:
    (one,) = answer["batches"]
    return {**answer, "batches": [{**one, "bulletins": one["bulletins"][:-1]}]}


def _twice(answer: dict[str, Any]) -> dict[str, Any]:
    """The batch, and one of its receipts in full besides."""
    (one,) = answer["batches"]
    leaf = {"bulletin": one["bulletins"][0], "index": 0, "proof": [], "signature": one["signature"]}
    first = {**one["statement"], **leaf}
    return {**answer, "receipts": [first]}


@pytest.mark.parametrize(
    ("alter", "error"),
    [(_root_of_another, "ProofError"), (_one_left_out, "ProofError"), (_twice, "InvalidEnvelope")],
)
async def test_an_altered_batch_leaves_nothing_stored_delivered_or_audited(
    pair: tuple[NodeService, NodeService, BatchFormTransport], alter: Callable[..., Any], error: str
) -> None:
    a, _, transport = pair
    for i in range(3):
        await post(a, f"Alert {i}")
    transport.alter = alter
    await a.start()
    sender = a.outbox.senders[B]

    async def refused() -> bool:
        return sender.status.failures >= 1

    await eventually(refused, what="the author to refuse the answer")
    assert error in (sender.status.last_error or "")
    assert await rows(a, receipts) == [] and await rows(a, receipt_batches) == []
    assert await delivered_entries(a) == 0
    assert {r.state for r in await rows(a, outbox, outbox.c.dest == B)} == {"queued"}
    transport.alter = None
    sender.peer_seen()
    await eventually(lambda: delivered(a), what="delivery once the answer is honest")
    assert len(await rows(a, receipts)) == 3 and await delivered_entries(a) == 3


async def test_a_retried_push_gets_the_receipt_given_before_and_new_ones_under_a_new_statement(
    pair: tuple[NodeService, NodeService, BatchFormTransport],
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
    second, third = await post(a, "Second"), await post(a, "Third")
    start = len(transport.answers)
    transport.alter = None
    sender.peer_seen()
    await eventually(lambda: delivered(a), what="delivery once answers get through")
    # The first's receipt is the whole batch of one it was given in; the others, a batch of their
    # own. Over every answer that got through: the sender may push the three in more than one
    # transaction (CI: the last answer held only the third).
    got = transport.answers[start:]
    kept = {x["signature"]: x for answer in got for x in answer["batches"]}  # a statement given again is one
    named = sorted(sorted(x["bulletins"]) for x in kept.values())
    assert (
        all(answer["receipts"] == [] for answer in got)
        and [first] in named
        and sorted(b for x in named for b in x) == sorted([first, second, third])
    )
    assert all(len({x["signature"] for x in answer["batches"]}) == len(answer["batches"]) for answer in got)
    at_a = await held_texts(a)
    assert at_a == {r.bulletin_id: r.receipt for r in await rows(b, receipts)} and len(at_a) == 3
