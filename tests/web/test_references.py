"""A reference is no probe: a contact point is told the same of a referenced bulletin that this node
holds in a channel they do not read as of one it does not hold at all, as opening either gives the
same 404 (`Inbox.load`). On a real node over TLS, SQLite and PostgreSQL; the console in English
and in French.

Before, the bulletin page said "outside your channels" for the first and "not held at this node"
for the second, so any id could be tested for existence by referring to it. Found by a read-only
review.
"""

from __future__ import annotations

import re

import pytest

from exchange.errors import NotFound
from exchange.service.node import NodeService
from tests.conftest import DEFAULT_NODES, MakeFederation, Member, console_session
from tests.service.lone_node import bulletin

NL = "nl-customs"
PASSWORD = "a long passphrase for tests"
MADE_UP = "ab" * 32


@pytest.fixture
async def nl(make_federation: MakeFederation) -> Member:
    """One node owning c2c and c2x; contact point `alice` works in c2c only, `bob` in c2x only."""
    channels = [
        {"id": c, "owner": NL, "agencies": ["customs"], "members": {NL: ["read", "post", "admin"]}}
        for c in ("c2c", "c2x")
    ]
    member = (await make_federation(nodes={NL: DEFAULT_NODES[NL]}, channels=channels))[NL]
    users = member.service.users
    for name, channel in (("alice", "c2c"), ("bob", "c2x")):
        await users.add(name, "contact-point", actor="test")
        await users.assign(name, channel, assigned=True, actor="test")
        await users.set_password(name, PASSWORD, actor="test")
    return member


def said_of(page: str, bid: str) -> str:
    """What the bulletin page says of a reference it does not show."""
    found = re.search(re.escape(f"<code>{bid[:12]}…</code>") + r' <span class="sub">([^<]*)</span>', page)
    assert found, f"{bid[:12]} is not among the references"
    return found.group(1)


async def test_a_bulletin_in_a_channel_one_does_not_read_and_one_not_held_are_referred_to_alike(nl: Member) -> None:
    service: NodeService = nl.service
    alice, bob = await service.users.get("alice"), await service.users.get("bob")
    x = (await service.post(bob, "c2x", bulletin("Bob's, in c2x only"))).id
    for bid in (x, MADE_UP):  # opening either: one answer
        with pytest.raises(NotFound, match=f"^no bulletin {bid} in your channels$"):
            await service.inbox.load(alice, bid)
    probe = (await service.post(alice, "c2c", bulletin("Refers to both", references=[x, MADE_UP]))).id

    held, unknown = await service.inbox.references(alice, [x, MADE_UP])
    assert (held.id, unknown.id) == (x, MADE_UP)
    assert held.as_json() | {"id": ""} == unknown.as_json() | {"id": ""}
    assert (held.visible, held.why, held.title, held.channel) == (False, "not available to you", "", "")

    for language, words in (("en", "not available to you"), ("fr", "non disponible pour vous")):
        async with (
            console_session(nl, "alice", PASSWORD) as http,
            http.get(f"/console/bulletins/{probe}", headers={"Accept-Language": language}) as resp,
        ):
            assert resp.status == 200
            page = await resp.text()
        assert said_of(page, x) == said_of(page, MADE_UP) == words, language
        assert "Bob's" not in page
