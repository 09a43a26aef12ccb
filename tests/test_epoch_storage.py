"""Envelope v2 storage (revision 0006) on SQLite and PostgreSQL: a restarted node still holds its
epoch records, keys, grants and partners' announcements, reads its stored v2 bulletins, and posts
under the same epoch."""

from __future__ import annotations

import sqlalchemy as sa

from exchange.store.tables import channel_epochs, epoch_keys, epoch_support
from tests.conftest import MakeFederation
from tests.test_epoch_delivery import C2C, THREE, V2, arrives, post, reads, stored_envelope


async def test_a_restarted_node_keeps_its_epochs_and_reads_its_v2_bulletins(make_federation: MakeFederation) -> None:
    fed = await make_federation(nodes=THREE, channels=[C2C], options=V2)
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    first = await post(nl, "before the restart")
    await arrives(ke, first["id"])
    await fed.stop("ke-customs")
    await fed.start("ke-customs")
    ke = fed["ke-customs"]
    record = ke.service.epochs.record("c2c", 0)
    assert record is not None and ke.service.epochs.key("c2c", 0) is not None
    assert (await reads(ke, first["id"]))["bulletin"]["title"] == "before the restart"
    second = await post(ke, "after the restart")
    assert (await stored_envelope(ke, second["id"]) or {})["header"]["epoch"]["n"] == 0
    await arrives(nl, second["id"])
    async with ke.service.store.read() as conn:
        assert (await conn.execute(sa.select(channel_epochs.c.n, channel_epochs.c.state_pos))).all() == [
            (0, record.state.pos)
        ]
        assert (await conn.execute(sa.select(epoch_keys.c.n, epoch_keys.c.via))).all() == [(0, "wrap")]
        held = set((await conn.execute(sa.select(epoch_support.c.node))).scalars())
    assert held == {"nl-customs", "de-customs"}
