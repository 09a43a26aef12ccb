"""A roster version installed between a batch's checks and its store (docs/protocol.md 9.8, rule
18): the key conditions of rule 4 are judged again where the batch is stored.

Found by a read-only review. The signature was checked where a batch was screened, under the
roster held then, and only rule 15 (the author still posts) was judged again where it was stored.
A catch-up page is screened while the page before it is stored, and a batch waits for its gap to
be filled by a partner that may answer as slowly as it likes: a version installed meanwhile that
marked the author's key compromised, or revoked the author, did not refuse what was already
screened. It was stored and receipted; a revoked author's bulletin was then shown as verified
(its key verify-only, which checks what is stored), and it took the author's seq, so that the
author's own bulletin of that seq would have been refused as an equivocation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from exchange.crypto import SigningKey, b64d, b64e
from exchange.errors import InvalidEnvelope, UnknownPeer
from exchange.model import Bulletin, NodeId
from exchange.protocol.roster import Federation, FormerKeys
from exchange.provision import init_federation
from exchange.service.node import NodeService
from tests.conftest import DEFAULT_NODES, write_federation
from tests.service.lone_node import joined
from tests.service.test_gap_refused import Direct, envelope_of, held
from tests.test_delivery import BULLETIN

A, B = "nl-customs", "ke-customs"  # the author and a reader
OWNER, R, C = "nl-customs", "ke-customs", "wco-rilo"  # an owner that relays, an author, a reader


def compromised(fed: Federation, node: str) -> Federation:
    """The next version: `node` on a new signing key, its old one marked compromised (6a.7)."""
    old = fed.node(node)
    new = SigningKey.generate()
    nodes = [
        n.model_copy(update={"signing_key": b64e(new.verify_key.raw), "signing_kid": new.kid}) if n.id == node else n
        for n in fed.roster.nodes
    ]
    roster = fed.roster.model_copy(update={"version": fed.roster.version + 1, "nodes": nodes})
    former = FormerKeys({(node, old.signing_kid): ("compromised", b64d(old.signing_key))}, frozenset())
    return Federation.index(roster, former)


def revoked(fed: Federation, node: str) -> Federation:
    """The next version: `node` revoked, its signing key verify-only (what it signed before verifies)."""
    gone = fed.node(node)
    roster = fed.roster.model_copy(
        update={"version": fed.roster.version + 1, "nodes": [n for n in fed.roster.nodes if n.id != node]}
    )
    former = FormerKeys(
        {(node, gone.signing_kid): ("verify-only", b64d(gone.signing_key))}, frozenset(), {node: gone.name}
    )
    return Federation.index(roster, former)


async def _joined(
    tmp_path: Path, database: Callable[[str], Awaitable[str]], members: dict[str, list[str]]
) -> AsyncIterator[dict[str, NodeService]]:
    folder = tmp_path / "nodes"
    owner = next(iter(members))
    channel = {"id": "c2c", "owner": owner, "agencies": ["customs", "international"], "members": members}
    urls = {n: await database(n) for n in members}
    write_federation(folder, {n: DEFAULT_NODES[n] for n in members}, [channel], {n: u for n, u in urls.items() if u})
    await init_federation(folder)
    async with joined(folder, {n: Direct(n) for n in members}) as services:
        yield services


@pytest.fixture
async def pair(tmp_path: Path, database: Callable[[str], Awaitable[str]]) -> AsyncIterator[dict[str, NodeService]]:
    async for services in _joined(tmp_path, database, {A: ["read", "post", "admin"], B: ["read"]}):
        yield services


@pytest.fixture
async def trio(tmp_path: Path, database: Callable[[str], Awaitable[str]]) -> AsyncIterator[dict[str, NodeService]]:
    members = {OWNER: ["read", "post", "admin"], R: ["read", "post"], C: ["read"]}
    async for services in _joined(tmp_path, database, members):
        yield services


async def posted(node: NodeService, *titles: str) -> list[str]:
    officer = await node.users.get("officer")
    return [(await node.post(officer, "c2c", Bulletin.model_validate({**BULLETIN, "title": t}))).id for t in titles]


async def test_a_push_screened_before_its_key_is_marked_compromised_is_refused_where_it_is_stored(
    pair: dict[str, NodeService],
) -> None:
    a, b = pair[A], pair[B]
    first, second = await posted(a, "one", "two")
    # The good case: screened and stored under one version, it is taken.
    screened = await b.receiving.screen(NodeId(A), [await envelope_of(a, first)])
    assert [r.bulletin for r in await b.receiving.ingest_screened(screened)] == [first]
    # The bad one: a version that marks the key compromised is installed in between.
    screened = await b.receiving.screen(NodeId(A), [await envelope_of(a, second)])
    b.fed.install(compromised(b.fed, A))
    with pytest.raises(InvalidEnvelope, match="which the roster marks compromised"):
        await b.receiving.ingest_screened(screened)
    assert await held(b) == [first]  # nothing stored, nothing receipted
    # Pushed again, it is refused for the same reason at the first check.
    with pytest.raises(InvalidEnvelope, match="which the roster marks compromised"):
        await b.receive(NodeId(A), [], [await envelope_of(a, second)])
    assert await held(b) == [first]


async def test_a_catch_up_page_screened_before_its_key_is_marked_compromised_leaves_it_out(
    pair: dict[str, NodeService],
) -> None:
    a, b = pair[A], pair[B]
    first, second = await posted(a, "one", "two")
    # A page (a list of what it refuses) keeps what passes and leaves out, and names, the rest.
    screened = await b.receiving.screen(NodeId(A), [await envelope_of(a, first), await envelope_of(a, second)])
    b.fed.install(compromised(b.fed, A))
    refused: list[Any] = []
    assert await b.receiving.ingest_screened(screened, refused=refused, audit_as="c2c") == []
    assert sorted((bid, kind) for bid, kind, _ in refused) == sorted(
        [(first, "InvalidEnvelope"), (second, "InvalidEnvelope")]
    )
    assert all("compromised" in why for _, _, why in refused)
    assert await held(b) == []


async def test_a_relayed_batch_whose_author_is_revoked_while_its_gap_is_filled_is_not_stored(
    trio: dict[str, NodeService], monkeypatch: pytest.MonkeyPatch
) -> None:
    o, r, c = trio[OWNER], trio[R], trio[C]
    one, two, three = await posted(r, "1", "2", "3")
    await o.receiving.ingest(NodeId(R), [await envelope_of(r, x) for x in (one, two, three)])
    await c.receiving.ingest(NodeId(OWNER), [await envelope_of(o, one)], relayed=True, refused=[])
    assert await held(c) == [one]
    served = c.receiving.transport.fetch

    async def revoked_meanwhile(node: NodeId, path: str) -> Any:
        c.fed.install(revoked(c.fed, R))  # what NodeService.install does first
        return await served(node, path)

    # Three is checked while R is listed; its gap (two) is fetched from O while R is revoked.
    monkeypatch.setattr(c.receiving.transport, "fetch", revoked_meanwhile)
    refused: list[Any] = []
    assert await c.receiving.ingest(NodeId(OWNER), [await envelope_of(o, three)], relayed=True, refused=refused) == []
    assert {bid: kind for bid, kind, _ in refused} == {two: UnknownPeer.__name__, three: UnknownPeer.__name__}
    assert await held(c) == [one]  # before: three was stored, and shown as verified


async def test_a_relayed_batch_whose_gap_is_filled_under_the_same_version_is_stored(
    trio: dict[str, NodeService],
) -> None:
    """The good case of the test above: the same batch and gap, no version installed between."""
    o, r, c = trio[OWNER], trio[R], trio[C]
    one, two, three = await posted(r, "1", "2", "3")
    await o.receiving.ingest(NodeId(R), [await envelope_of(r, x) for x in (one, two, three)])
    await c.receiving.ingest(NodeId(OWNER), [await envelope_of(o, one)], relayed=True, refused=[])
    refused: list[Any] = []
    await c.receiving.ingest(NodeId(OWNER), [await envelope_of(o, three)], relayed=True, refused=refused)
    assert refused == []
    assert sorted(await held(c)) == sorted([one, two, three])
