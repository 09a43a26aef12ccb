"""A pushed stream's gap is filled as a catch-up page of its own (docs/protocol.md 11.2): an
envelope of the gap this node refuses for good is left out and audited, and the push is taken.

Found by a read-only review: the gap was filled as a transaction, all or nothing, so one
refusable envelope in it refused the push (422, naming "envelope 0", an index in the gap, not in
the push). The author then split its batch, got a 422 for each bulletin alone, and took every
later bulletin of the stream for refused for good (`send.refused`), though the receiver would
have taken each of them.
"""

from __future__ import annotations

import json
import re
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exchange.errors import ExchangeError, InvalidEnvelope, PeerError, PeerRefused
from exchange.model import Bulletin, NodeId
from exchange.provision import init_federation
from exchange.service.node import NodeService
from exchange.store import audit_log, bulletins
from tests.conftest import DEFAULT_NODES, write_federation
from tests.service.lone_node import joined
from tests.test_delivery import BULLETIN

A, B = "nl-customs", "ke-customs"


class Direct:
    """A transport that answers a fetch from the partner's application layer, as its
    federation API would; this test's pushes are made by hand (`receive`)."""

    def __init__(self, me: str) -> None:
        self.me = NodeId(me)
        self.nodes: dict[str, NodeService] = {}

    async def fetch(self, node: NodeId, path: str) -> Any:
        partner = self.nodes[node]
        m = re.fullmatch(r"/fed/v1/channels/([^/]+)/envelopes\?author=([^&]+)&after_seq=(\d+)&limit=(\d+)", path)
        if m is None:
            raise PeerError(f"{path}: not served in this test")
        try:
            raw = await partner.served_envelopes(self.me, m[1], author=m[2], after_seq=int(m[3]), limit=int(m[4]))
        except ExchangeError as exc:
            raise PeerRefused(exc.detail, 422) from exc
        return json.loads(raw)

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        raise PeerError("pushes are made by hand in this test")


@pytest.fixture
async def pair(
    tmp_path: Path, database: Callable[[str], Awaitable[str]]
) -> AsyncIterator[tuple[NodeService, NodeService]]:
    folder = tmp_path / "nodes"
    channel = {"id": "c2c", "owner": A, "agencies": ["customs"], "members": {A: ["read", "post", "admin"], B: ["read"]}}
    urls = {n: await database(n) for n in (A, B)}
    write_federation(folder, {n: DEFAULT_NODES[n] for n in (A, B)}, [channel], {n: u for n, u in urls.items() if u})
    await init_federation(folder)
    async with joined(folder, {n: Direct(n) for n in (A, B)}) as services:
        yield services[A], services[B]


async def envelope_of(node: NodeService, bid: str) -> Any:
    async with node.store.read() as conn:
        raw = await conn.scalar(sa.select(bulletins.c.envelope).where(bulletins.c.id == bid))
    assert raw is not None, bid
    return json.loads(bytes(raw))


async def held(node: NodeService) -> list[str]:
    async with node.store.read() as conn:
        return list((await conn.execute(sa.select(bulletins.c.id).order_by(bulletins.c.n))).scalars())


async def audited(node: NodeService, event: str) -> list[dict[str, Any]]:
    async with node.store.read() as conn:
        entries = [json.loads(e) for e in (await conn.execute(sa.select(audit_log.c.entry))).scalars()]
    return [e for e in entries if e["event"] == event]


async def test_a_refused_envelope_in_a_pushed_streams_gap_is_left_out_and_the_push_taken(pair: Any) -> None:
    a, b = pair
    officer = await a.users.get("officer")
    one, two, three = [
        (await a.post(officer, "c2c", Bulletin.model_validate({**BULLETIN, "title": t}))).id
        for t in ("One", "Two", "Three")
    ]
    await b.receive(NodeId(A), [], [await envelope_of(a, one)])
    # Seq 2, as the author serves it, is one the reader refuses for good: its signature changed.
    two_served = await envelope_of(a, two)
    signature = two_served["signature"]
    two_served["signature"] = ("B" if signature[0] != "B" else "C") + signature[1:]
    async with a.store.engine.begin() as conn:
        changed = json.dumps(two_served).encode()
        await conn.execute(sa.update(bulletins).where(bulletins.c.id == two).values(envelope=changed))

    got = await b.receive(NodeId(A), [], [await envelope_of(a, three)])  # before: EnvelopeRejected, 422
    assert [r.bulletin for r in got] == [three]
    assert await held(b) == [one, three]
    (entry,) = await audited(b, "catchup.refused")
    assert (entry["peer"], entry["channel"], entry["count"], entry["bulletins"]) == (A, "c2c", 1, [two]), entry
    assert entry["reasons"] == {"BadSignature": 1}, entry


async def test_a_stream_pushed_with_a_huge_jump_in_its_numbers_is_taken_without_listing_the_gap(pair: Any) -> None:
    """Found by a read-only review: the gap between the highest number held and the highest
    pushed was made as a set of every number between. A member whose stream this node holds
    could push one signed envelope at seq 2**31 - 1 and have the reader build a set of two
    billion numbers on its event loop (about 200 GB), at every sweep of every member."""
    a, b = pair
    officer = await a.users.get("officer")
    one = (await a.post(officer, "c2c", Bulletin.model_validate({**BULLETIN, "title": "One"}))).id
    await b.receive(NodeId(A), [], [await envelope_of(a, one)])
    # The author's own node numbers its next bulletin 2**31 - 1 (an attacker controls its node).
    async with a.store.engine.begin() as conn:
        await conn.execute(sa.update(bulletins).where(bulletins.c.id == one).values(seq=2**31 - 2))
    a.posting._seqs.pop("c2c", None)
    far = await a.post(officer, "c2c", Bulletin.model_validate({**BULLETIN, "title": "Far"}))
    assert far.seq == 2**31 - 1

    tracemalloc.start()
    try:
        got = await b.receive(NodeId(A), [], [await envelope_of(a, far.id)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r.bulletin for r in got] == [far.id]
    assert await held(b) == [one, far.id]
    assert peak < 50 * 2**20, peak  # the old code ran out of memory here


async def test_a_push_that_waited_for_its_gap_is_refused_if_the_author_may_no_longer_post(
    pair: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The author's right to post (9.8 rule 15) was checked before the push's gap was filled, and
    not again: a partner answering the fill slowly on purpose had its batch stored after this node
    had taken in the channel's closing, or the author's removal (found by a read-only review).
    The rule is checked again where the batch is stored."""
    a, b = pair
    officer = await a.users.get("officer")
    one, _, three = [
        (await a.post(officer, "c2c", Bulletin.model_validate({**BULLETIN, "title": t}))).id
        for t in ("One", "Two", "Three")
    ]
    await b.receive(NodeId(A), [], [await envelope_of(a, one)])
    served = b.receiving.transport.fetch

    async def closed_while_asked(node: NodeId, path: str) -> Any:
        await a.channels.change(None, "c2c", {"type": "close"})
        await b.channels.import_events(a.channels.events("c2c"))
        return await served(node, path)

    monkeypatch.setattr(b.receiving.transport, "fetch", closed_while_asked)
    with pytest.raises(InvalidEnvelope, match="no longer holds the post right"):
        await b.receive(NodeId(A), [], [await envelope_of(a, three)])  # before: stored
    assert await held(b) == [one]
