"""A sender's pipelined push cycle: the next batch is read and audited as sent while the last one's
receipts are stored, and still goes out only after that, with its "sent" entry already durable.

Two nodes' application layers joined by the in-memory transport of tests/service/test_outbox.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exchange.audit import events as ev
from exchange.model import Bulletin, NodeId
from exchange.protocol.envelope import bulletin_id, parse_envelope
from exchange.provision import init_federation
from exchange.service.node import NodeService
from exchange.store import audit_log
from tests.conftest import DEFAULT_NODES, eventually, write_federation
from tests.service.lone_node import joined
from tests.service.test_outbox import MemoryTransport
from tests.test_delivery import BULLETIN

A, B = "nl-customs", "ke-customs"
BATCH = 3


async def audit_entries(service: NodeService) -> list[dict[str, Any]]:
    async with service.store.read() as conn:
        rows = await conn.execute(sa.select(audit_log.c.entry).order_by(audit_log.c.idx))
        return [json.loads(bytes(r.entry)) for r in rows]


class CheckingTransport(MemoryTransport):
    """Records each transaction sent, and what the sender's audit log held when it went out."""

    def __init__(self, me: str) -> None:
        super().__init__(me)
        self.pushes: list[tuple[str, list[str], set[str]]] = []  # txn, its envelopes' ids, ids audited as sent

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        txn = json.loads(body)
        ids: list[str] = [bulletin_id(parse_envelope(e).header) for e in txn["envelopes"]]
        sent = {e["bulletin"] for e in await audit_entries(self.nodes[self.me]) if ev.sent_to(e)}
        self.pushes.append((txn["txn"], ids, sent))
        return await super().send(node, path, body)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[dict[str, NodeService], CheckingTransport]]:
    """A and B on SQLite, A pushing at most BATCH envelopes per transaction; not started."""
    folder = tmp_path / "nodes"
    channel = {
        "id": "c2c",
        "owner": A,
        "agencies": ["customs"],
        "members": {A: ["read", "post", "admin"], B: ["read", "post"]},
    }
    write_federation(folder, {n: DEFAULT_NODES[n] for n in (A, B)}, [channel], {}, {"batch_size": BATCH})
    await init_federation(folder)
    checking = CheckingTransport(A)
    async with joined(folder, {A: checking, B: MemoryTransport(B)}) as services:
        yield services, checking


async def test_each_batch_is_audited_as_sent_before_it_goes_out_and_once(
    pair: tuple[dict[str, NodeService], CheckingTransport],
) -> None:
    services, transport = pair
    a, b = services[A], services[B]
    officer = await a.users.get("officer")
    posted = [
        (await a.post(officer, "c2c", Bulletin.model_validate({**BULLETIN, "title": f"Report {i}"}))).id
        for i in range(8)
    ]
    await a.start()
    await b.start()

    async def delivered() -> bool:
        return await a.queued_counts() == {}

    await eventually(delivered, what="delivery of every batch")
    # Three pushes of at most three: the second and third were read and marked sent while the
    # receipts of the one before were stored.
    assert [ids for _, ids, _ in transport.pushes] == [posted[0:3], posted[3:6], posted[6:8]]
    for _, ids, audited in transport.pushes:
        assert set(ids) <= audited, "a batch went out before its 'sent' entries were durable"
    entries = await audit_entries(a)
    txns = {bid: txn for txn, ids, _ in transport.pushes for bid in ids}
    for bid in posted:
        chain = [e for e in entries if e.get("bulletin") == bid]
        assert [e["event"] for e in chain] == ["bulletin.posted", "bulletin.sent_to", "bulletin.delivered_to"]
        assert chain[1]["to"] == {B: txns[bid]} and list(chain[2]["to"]) == [B]
    reader = await b.users.get("officer")
    assert [(await b.read(reader, bid)).bulletin["title"] for bid in posted] == [f"Report {i}" for i in range(8)]
