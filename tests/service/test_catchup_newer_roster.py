"""A catch-up page from a member that runs on a newer roster version than this node waits for this
node to hold that version (docs/protocol.md 11.6).

Found by a read-only review. Only a partner's POSTs waited (RosterBehind, 503); a catch-up page
was judged at once under the older version, so that an envelope signed with a key only the newer
version lists (the author rotated it, or joined) was refused for good, left out and passed over:
the cursor went past it, and once the newer version was installed no sweep asked for it again.
Where only catch-up carries a bulletin (a history grant, an author since unreachable), it was lost.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from exchange.crypto import SigningKey, b64e
from exchange.errors import PeerError, RosterBehind
from exchange.model import Bulletin, NodeId
from exchange.protocol.roster import Federation
from exchange.provision import init_federation
from exchange.service.node import NodeService
from tests.conftest import DEFAULT_NODES, write_federation
from tests.service.lone_node import joined
from tests.service.test_gap_refused import held
from tests.test_delivery import BULLETIN

A, B = "nl-customs", "ke-customs"


class Pages:
    """A transport that serves catch-up pages from the partner's application layer, and names the
    partner's roster version with each answer, as its federation API's header does."""

    def __init__(self, me: str) -> None:
        self.me = NodeId(me)
        self.nodes: dict[str, NodeService] = {}
        self.versions: dict[str, int] = {}  # a partner's version as its answers name it, if not its own

    async def fetch(self, node: NodeId, path: str) -> Any:
        partner = self.nodes[node]
        m = re.fullmatch(r"/fed/v1/channels/([^/]+)/envelopes\?after=(\d+)&limit=(\d+)", path)
        if m is None:
            raise PeerError(f"{path}: not served in this test")
        answer = await partner.served_envelopes(self.me, m[1], after=int(m[2]), limit=int(m[3]))
        named = self.versions.get(node, partner.fed.roster.version)
        self.nodes[self.me].gossip.seen(node, named)  # the answer's header
        return json.loads(answer)

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        raise PeerError("no pushes in this test")


@pytest.fixture
async def pair(
    tmp_path: Path, database: Callable[[str], Awaitable[str]]
) -> AsyncIterator[tuple[dict[str, NodeService], dict[str, Pages]]]:
    folder = tmp_path / "nodes"
    channel = {"id": "c2c", "owner": A, "agencies": ["customs"], "members": {A: ["read", "post", "admin"], B: ["read"]}}
    urls = {n: await database(n) for n in (A, B)}
    write_federation(folder, {n: DEFAULT_NODES[n] for n in (A, B)}, [channel], {n: u for n, u in urls.items() if u})
    await init_federation(folder)
    transports = {n: Pages(n) for n in (A, B)}
    async with joined(folder, transports) as services:
        yield services, transports


def at_version(fed: Federation, version: int, rotated: str | None = None) -> Federation:
    """`fed` as version `version`; with `rotated`, that node on a signing key it has since replaced."""
    old = SigningKey.generate()
    nodes = [
        n.model_copy(update={"signing_key": b64e(old.verify_key.raw), "signing_kid": old.kid}) if n.id == rotated else n
        for n in fed.roster.nodes
    ]
    return Federation.index(fed.roster.model_copy(update={"version": version, "nodes": nodes}))


async def test_a_page_from_a_member_on_a_newer_version_waits_for_it_and_loses_nothing(
    pair: tuple[dict[str, NodeService], dict[str, Pages]], monkeypatch: pytest.MonkeyPatch
) -> None:
    (a, b), transports = (pair[0][A], pair[0][B]), pair[1]
    # B holds a roster chain (versions, 6a), at version 1; A answers as one that runs on version 2,
    # where it rotated its signing key: B does not know A's new key yet.
    monkeypatch.setattr(b.gossip, "roster", SimpleNamespace(held=SimpleNamespace(version=1)))
    newer = at_version(b.fed, 2)
    b.fed.install(at_version(b.fed, 1, rotated=A))
    transports[B].versions[A] = 2
    officer = await a.users.get("officer")
    one = (await a.post(officer, "c2c", Bulletin.model_validate({**BULLETIN, "title": "one"}))).id
    with pytest.raises(RosterBehind):
        await b.catchup.pull(A, "c2c")
    assert await held(b) == [] and await b.catchup.cursor(A, "c2c") == 0  # not passed over
    b.fed.install(newer)  # what the pull that A's header started installs
    assert await b.catchup.pull(A, "c2c") == 1  # before: 0, the bulletin passed over for good
    assert await held(b) == [one]


async def test_a_page_from_a_member_on_the_same_version_is_taken_at_once(
    pair: tuple[dict[str, NodeService], dict[str, Pages]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The good case next to it."""
    a, b = pair[0][A], pair[0][B]
    monkeypatch.setattr(b.gossip, "roster", SimpleNamespace(held=SimpleNamespace(version=1)))
    officer = await a.users.get("officer")
    one = (await a.post(officer, "c2c", Bulletin.model_validate({**BULLETIN, "title": "one"}))).id
    assert await b.catchup.pull(A, "c2c") == 1
    assert await held(b) == [one]
