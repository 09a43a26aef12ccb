"""An envelope a member cannot take, served in catch-up, is left out and audited; the rest of the
page is kept and the cursor moves past it (docs/protocol.md 11.6; docs/audit.md `catchup.refused`),
on real nodes over mutual TLS, on SQLite and PostgreSQL.

Found by a read-only review: a catch-up page was all or nothing, like a pushed transaction. One
envelope a member could never take (an author put junk in that member's wrap and signed it; the
others, who check only the length of other readers' wraps, stored and relayed it) stopped that
member's catch-up of the channel at that page for good, from every member, and the honest
bulletins on the same page and after it never came.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import sqlalchemy as sa

from exchange.crypto import b64d, b64e
from exchange.errors import InvalidInput
from exchange.model import Bulletin, NodeId
from exchange.protocol.envelope import envelope_bytes, sign_envelope
from exchange.service.catchup import MAX_REFUSING_PAGES, CatchUp
from exchange.store import bulletins
from tests.conftest import DEFAULT_NODES, MakeFederation, Member, authored, eventually
from tests.test_catchup_hostile import Hostile
from tests.test_roster_gossip import audited

THREE = {k: DEFAULT_NODES[k] for k in ("nl-customs", "ke-customs", "wco-rilo")}
CHANNEL = {
    "id": "c2c",
    "owner": "nl-customs",
    "agencies": ["customs", "international"],
    "members": {"nl-customs": ["read", "post", "admin"], "ke-customs": ["read", "post"], "wco-rilo": ["read", "post"]},
}
NOTE = {"kind": "alert", "title": "Honest", "body": "b"}


async def held(member: Member) -> set[str]:
    async with member.service.store.read() as conn:
        return set((await conn.execute(sa.select(bulletins.c.id))).scalars())


async def test_an_envelope_a_member_cannot_open_is_left_out_and_the_rest_caught_up(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation(nodes=THREE, channels=[CHANNEL])
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    await fed.stop("wco-rilo")  # down: it catches up later, from nl-customs
    status, honest, _ = await ke.api("POST", "/api/v1/channels/c2c/bulletins", body=NOTE)
    assert status == 201, honest

    async def at_nl() -> bool:
        return honest["id"] in await held(nl)

    await eventually(at_nl, what="the honest bulletin at nl-customs")
    status, after, _ = await ke.api("POST", "/api/v1/channels/c2c/bulletins", body={**NOTE, "title": "Second"})
    assert status == 201, after
    # ke-customs signs a third bulletin whose wrap for wco-rilo is junk of the right length;
    # nl-customs, which checks only its own wrap among the others' lengths, takes it.
    env = authored(ke, Bulletin.model_validate({**NOTE, "handling": {"tlp": "AMBER"}, "title": "Junk wrap"}), seq=3)
    wraps = list(env.wraps)
    i = [r.node for r in env.header.recipients].index("wco-rilo")
    wraps[i] = b64e(os.urandom(len(b64d(wraps[i]))))
    bad = sign_envelope(env.header, wraps, b64d(env.ciphertext), ke.service.keys.signing)

    async def second_at_nl() -> bool:
        return after["id"] in await held(nl)

    await eventually(second_at_nl, what="the second bulletin at nl-customs")
    status, answer, _ = await nl.fed_post(ke, b'{"txn":"t-junk","envelopes":[%s]}' % envelope_bytes(bad))
    assert status == 200, answer
    await fed.stop("ke-customs")  # its pushes cannot reach wco-rilo: only catch-up can

    await fed.start("wco-rilo")
    wco = fed["wco-rilo"]

    async def swept() -> bool:  # the sweep a node makes as it starts
        return wco.service.catchup.sweeps >= 1

    await eventually(swept, what="wco-rilo's first catch-up sweep")
    got = await held(wco)
    assert {honest["id"], after["id"]} <= got and len(got) == 2, got  # the honest ones, not the junk
    entries = await audited(wco, "catchup.refused")
    assert len(entries) == 1, entries
    assert entries[0]["peer"] == "nl-customs" and entries[0]["channel"] == "c2c" and entries[0]["count"] == 1
    assert list(entries[0]["reasons"].values()) == [1] and entries[0]["sample"], entries[0]
    cursor = await wco.service.catchup.cursor("nl-customs", "c2c")
    assert cursor > 0
    # Past it: the next pull neither asks for the junk again nor audits it again.
    await wco.service.catchup.pull("nl-customs", "c2c")
    assert await wco.service.catchup.cursor("nl-customs", "c2c") == cursor
    assert len(await audited(wco, "catchup.refused")) == 1


class Endless(Hostile):
    """A member that serves page after page, each with one envelope that is not one."""

    async def fetch(self, node: NodeId, path: str) -> Any:
        self.fetches += 1
        await asyncio.sleep(0)
        if "/epochs" in path:
            return {"epochs": []}
        junk = {"id": f"junk-{self.fetches}", "n": self.fetches, "envelope": {"header": "not an envelope"}}
        return {"items": [junk], "next": self.fetches, "more": True}


async def test_a_member_serving_refused_envelopes_page_after_page_costs_a_few_entries_a_sweep(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation()
    nl = fed["nl-customs"]
    real = nl.service.catchup
    hostile = Endless(None)
    puller = CatchUp(real.me, real.store, real.channels, real.receiving, hostile, real.outbox, 3600)
    try:
        await asyncio.wait_for(puller.pull("ke-customs", "c2c"), 10)
        raise AssertionError("the pull went on")
    except InvalidInput as exc:
        assert "pages of c2c with envelopes this node refused" in exc.detail
    entries = await audited(nl, "catchup.refused")
    assert len(entries) == MAX_REFUSING_PAGES and all(e["count"] == 1 for e in entries), entries
    assert await puller.cursor("ke-customs", "c2c") == MAX_REFUSING_PAGES  # moved past what was refused
    assert not await held(nl)


async def test_an_equivocation_in_a_catchup_page_is_left_out_audited_and_the_rest_caught_up(
    make_federation: MakeFederation,
) -> None:
    """ke-customs signs a second bulletin as its seq 1 and hands it to wco-rilo alone; the honest
    members hold the first. wco-rilo's catch-up from nl-customs then finds a page whose seq 1
    clashes with what it holds. Before, the Equivocation failed the whole page, at every sweep and
    unaudited: nothing on or after that page (seq 2 here, and any other author's) ever came. Now
    the clashing envelope is left out and audited as evidence, and the rest is taken."""
    fed = await make_federation(nodes=THREE, channels=[CHANNEL])
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    await fed.stop("wco-rilo")
    posted = []
    for title in ("First", "Second"):
        status, made, _ = await ke.api("POST", "/api/v1/channels/c2c/bulletins", body={**NOTE, "title": title})
        assert status == 201, made
        posted.append(made["id"])

    async def both_at_nl() -> bool:
        return set(posted) <= await held(nl)

    await eventually(both_at_nl, what="both bulletins at nl-customs")
    another = Bulletin.model_validate({**NOTE, "handling": {"tlp": "AMBER"}, "title": "Another first"})
    other = authored(ke, another, seq=1)
    await fed.stop("ke-customs")  # neither its pushes nor its catch-up pages reach wco-rilo
    await fed.stop("nl-customs")
    await fed.start("wco-rilo")
    wco = fed["wco-rilo"]
    status, answer, _ = await wco.fed_post(ke, b'{"txn":"t-other","envelopes":[%s]}' % envelope_bytes(other))
    assert status == 200, answer
    (evil,) = await held(wco)

    await fed.start("nl-customs")
    await wco.service.catchup.pull("nl-customs", "c2c")

    async def second_at_wco() -> bool:
        return posted[1] in await held(wco)

    await eventually(second_at_wco, what="seq 2 at wco-rilo, past the clashing seq 1")
    assert await held(wco) == {evil, posted[1]}
    entries = [e for e in await audited(wco, "catchup.refused") if e["reasons"].get("Equivocation")]
    assert len(entries) == 1, entries
    assert entries[0]["peer"] == "nl-customs" and entries[0]["channel"] == "c2c", entries[0]
    assert entries[0]["bulletins"] == [posted[0]] and "seq 1 of c2c" in entries[0]["sample"], entries[0]
    assert await wco.service.catchup.cursor("nl-customs", "c2c") > 0
