"""A reader's receipts at the author, on SQLite and PostgreSQL. A push's answer that the author
refuses (docs/protocol.md 10.3, 11.2): no receipt of it is stored, no delivery audited, and what
was sent stays queued; the honest answer to the same push is then taken. A receipt held from a
reader since suspended or revoked is still shown (6a.7), and a new one from it refused."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exchange.audit import events as ev
from exchange.errors import ExchangeError, UnknownPeer
from exchange.model import Bulletin, NodeId
from exchange.protocol.receipt import make_receipt, make_receipts, receipt_json
from exchange.protocol.roster import Federation, FormerKeys
from exchange.provision import init_federation
from exchange.service.held_receipts import checked_receipts
from exchange.service.node import NodeService
from exchange.store import audit_log, outbox, receipts
from tests.conftest import DEFAULT_NODES, write_federation
from tests.service.lone_node import joined
from tests.service.test_outbox import MemoryTransport
from tests.test_delivery import BULLETIN

A, B = "nl-customs", "ke-customs"
AT = "2026-12-01T10:00:00.000Z"


@pytest.fixture
async def pair(
    tmp_path: Path, database: Callable[[str], Awaitable[str]]
) -> AsyncIterator[tuple[NodeService, NodeService]]:
    """Author A and reader B's application layers, joined in memory; not started."""
    folder = tmp_path / "nodes"
    channel = {"id": "c2c", "owner": A, "agencies": ["customs"], "members": {A: ["read", "post", "admin"], B: ["read"]}}
    urls = {n: await database(n) for n in (A, B)}
    write_federation(folder, {n: DEFAULT_NODES[n] for n in (A, B)}, [channel], {n: u for n, u in urls.items() if u})
    await init_federation(folder)
    async with joined(folder, {n: MemoryTransport(n) for n in (A, B)}) as services:
        yield services[A], services[B]


async def nothing_delivered(a: NodeService) -> bool:
    async with a.store.read() as conn:
        held = (await conn.execute(sa.select(sa.func.count()).select_from(receipts))).scalar_one()
        states = set((await conn.execute(sa.select(outbox.c.state).where(outbox.c.dest == B))).scalars())
        entries = [json.loads(bytes(e)) for e in (await conn.execute(sa.select(audit_log.c.entry))).scalars()]
    return held == 0 and states == {"queued"} and not [e for e in entries if e["event"] == ev.BULLETIN_DELIVERED_TO]


def as_json(receipt: Any) -> dict[str, Any]:
    return dict(json.loads(receipt_json(receipt)))


@pytest.mark.parametrize("version", [True, 1.0], ids=["true", "1.0"])
async def test_a_receipt_whose_version_is_not_a_json_integer_is_refused(
    pair: tuple[NodeService, NodeService], version: Any
) -> None:
    """A sender parses the answer with `json.loads`: `"v": 1.0` and `"v": true` reached the
    schema, whose Literal[1] took both for 1, and the receipt was stored as a v1 receipt."""
    a, b = pair
    officer = await a.users.get("officer")
    bid = (await a.post(officer, "c2c", Bulletin.model_validate(BULLETIN))).id
    assert await a.outbox.leases.claim(B)
    sent = await a.outbox.pending(B, 10)
    honest = as_json(make_receipt(bid, NodeId(B), "received", AT, b.keys.signing))
    with pytest.raises(ExchangeError, match="schema: v"):
        await a.outbox.accept_receipts(B, sent, [{**honest, "v": version}])
    assert await nothing_delivered(a)
    assert await a.outbox.accept_receipts(B, sent, [honest]) == 1
    assert not await nothing_delivered(a)


async def test_a_batch_receipt_whose_version_is_a_float_is_refused(pair: tuple[NodeService, NodeService]) -> None:
    a, b = pair
    officer = await a.users.get("officer")
    bids = [(await a.post(officer, "c2c", Bulletin.model_validate({**BULLETIN, "title": t}))).id for t in "xyz"]
    assert await a.outbox.leases.claim(B)
    sent = await a.outbox.pending(B, 10)
    honest = [as_json(r) for r in make_receipts(bids, NodeId(B), "received", AT, b.keys.signing)]
    with pytest.raises(ExchangeError, match="schema: v"):
        await a.outbox.accept_receipts(B, sent, [honest[0], {**honest[1], "v": 2.0}, honest[2]])
    assert await nothing_delivered(a)
    assert await a.outbox.accept_receipts(B, sent, honest) == 3


async def test_a_departed_readers_held_receipts_are_still_shown_and_its_new_ones_refused(
    pair: tuple[NodeService, NodeService],
) -> None:
    """They were left out of the bulletin's receipts, as rows that do not verify, once the roster
    suspended or revoked the reader: its key was looked up among active nodes only."""
    a, b = pair
    officer = await a.users.get("officer")
    first = (await a.post(officer, "c2c", Bulletin.model_validate({**BULLETIN, "title": "First"}))).id
    assert await a.outbox.leases.claim(B)
    sent = await a.outbox.pending(B, 10)
    assert (
        await a.outbox.accept_receipts(
            B, sent, [as_json(make_receipt(first, NodeId(B), "received", AT, b.keys.signing))]
        )
        == 1
    )
    second = (await a.post(officer, "c2c", Bulletin.model_validate({**BULLETIN, "title": "Second"}))).id
    later = await a.outbox.pending(B, 10)

    key = b.keys.signing.verify_key
    roster = a.fed.roster.model_copy(update={"nodes": [n for n in a.fed.roster.nodes if n.id != B]})
    a.fed.install(
        Federation.index(roster, FormerKeys({(B, key.kid): ("verify-only", key.raw)}, frozenset(), {B: "KE"}))
    )
    async with a.store.read() as conn:
        assert [r.node for r in await checked_receipts(conn, a.fed, first)] == [B]
    with pytest.raises(UnknownPeer):
        await a.outbox.accept_receipts(
            B, later, [as_json(make_receipt(second, NodeId(B), "received", AT, b.keys.signing))]
        )
    async with a.store.read() as conn:
        assert await checked_receipts(conn, a.fed, second) == []
        assert set((await conn.execute(sa.select(outbox.c.state).where(outbox.c.ref == second))).scalars()) == {
            "queued"
        }

    # Its key compromised: nothing it signed is shown any more.
    a.fed.install(Federation.index(roster, FormerKeys({}, frozenset(), {B: "KE"})))
    async with a.store.read() as conn:
        assert await checked_receipts(conn, a.fed, first) == []
