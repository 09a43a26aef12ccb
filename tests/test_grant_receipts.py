"""A member invited later and granted a v2 channel's history (docs/protocol.md, 15.7) reads the
earlier bulletins but is no recipient of them: their recipients are their epochs' readers. It
sends their authors no receipt, 'received' (caught up) or 'opened' (read), since an author refuses
a receipt of a bulletin its signer was not a recipient of, and with it the whole transaction
(11.2). Its reads are still audited where it reads; the receipts of bulletins it is a recipient of
still go.

Before, each caught-up or opened earlier bulletin queued a receipt for its author, who refused
it: the grantee's sender fell back to one item at a time, backed off, and rejected each for good
with a `send.refused` entry, its own pushes to that author waiting behind them. Found by a
read-only review. Real nodes over HTTPS, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

from exchange.store import outbox, receipts
from tests.conftest import MakeFederation, Member, eventually
from tests.test_epoch_attacks import (
    NODES,
    V2,
    admin_invite_and_accept,
    arrives,
    audit_entries,
    channel,
    post,
    stored_wire,
)


async def receipts_queued(member: Member) -> dict[str, str]:
    """The receipts `member` queued for authors, as `bulletin:status`: the state of each."""
    async with member.service.store.read() as conn:
        rows = await conn.execute(sa.select(outbox.c.ref, outbox.c.state).where(outbox.c.kind == "receipt"))
        return {r.ref: r.state for r in rows}


async def test_a_grantee_sends_no_receipts_for_the_history_it_was_granted(make_federation: MakeFederation) -> None:
    fed = await make_federation(
        nodes={n: NODES[n] for n in ("nl-customs", "ke-customs", "de-customs")},
        channels=[channel("nl-customs", "ke-customs")],
        options=V2,
    )
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    early = [(await post(nl, "early from nl"))["id"], (await post(ke, "early from ke"))["id"]]
    await arrives(ke, early[0])
    await admin_invite_and_accept(nl, de)
    late = (await post(nl, "after de joined"))["id"]
    await arrives(de, late)
    status, body, _ = await nl.api("POST", "/api/v1/channels/c2c/grant-history", user="admin", body={"node": de.id})
    assert status == 200, body

    async def caught_up() -> bool:
        de.service.catchup.wake()
        return all([await stored_wire(de, bid) is not None for bid in early])

    await eventually(caught_up, timeout=30, what="the earlier bulletins at de-customs")
    for bid in [*early, late]:
        status, shown, _ = await de.api("GET", f"/api/v1/bulletins/{bid}")
        assert status == 200, shown

    # What de reads is audited at de, the granted history too; only the receipts stay home.
    opened = [e["bulletin"] for e in await audit_entries(de) if e["event"] == "bulletin.opened"]
    assert sorted(opened) == sorted([*early, late])
    assert not [ref for ref in await receipts_queued(de) if ref.split(":")[0] in early]

    # The receipt of the bulletin de is a reader of goes, and is taken: nothing is refused.
    async def opened_at_nl() -> bool:
        async with nl.service.store.read() as conn:
            held = sa.and_(receipts.c.bulletin_id == late, receipts.c.node == de.id, receipts.c.status == "opened")
            return await conn.scalar(sa.select(receipts.c.node).where(held)) is not None

    await eventually(opened_at_nl, timeout=20, what="de's opened receipt of the later bulletin at nl")

    async def marked_delivered() -> bool:  # de marks it once nl's answer is back, just after nl stored it
        return await receipts_queued(de) == {f"{late}:opened": "delivered"}

    await eventually(marked_delivered, timeout=20, what="de's receipt marked delivered at de")
    assert not [e for e in await audit_entries(de) if e["event"] == "send.refused"]
