"""Envelope v2 storage (revision 0006) on SQLite and PostgreSQL: a restarted node still holds its
epoch records, keys, grants and partners' announcements, reads its stored v2 bulletins, and posts
under the same epoch."""

from __future__ import annotations

import logging
import os

import pytest
import sqlalchemy as sa

from exchange.store.tables import channel_epochs, epoch_keys, epoch_support
from tests.conftest import MakeFederation
from tests.test_epoch_delivery import C2C, THREE, V2, arrives, post, reads, stored_envelope
from tests.test_tamper_at_rest import in_database


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


async def test_a_stored_epoch_key_edited_by_hand_is_never_used(
    make_federation: MakeFederation, caplog: pytest.LogCaptureFixture
) -> None:
    """An attacker with the database's file replaces a node's stored epoch key. At its next start
    the node sees that the key is not the one the epoch's record commits to, logs it, and opens
    its own key again from its wrap in the record: it reads and posts as before, and the forged
    key is used for nothing. A row for an epoch with no record is not held."""
    fed = await make_federation(nodes=THREE, channels=[C2C], options=V2)
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    first = await post(nl, "before the edit")
    await arrives(ke, first["id"])
    true_key = ke.service.epochs.key("c2c", 0)
    assert true_key is not None
    url = ke.config.database_url
    await fed.stop("ke-customs")
    forged = os.urandom(32)
    at = (epoch_keys.c.channel == "c2c") & (epoch_keys.c.n == 0)
    await in_database(
        url,
        sa.update(epoch_keys).where(at).values(key=forged),
        sa.insert(epoch_keys).values(channel="c2c", n=7, key=os.urandom(32), via="wrap"),
    )
    with caplog.at_level(logging.ERROR, logger="exchange.epochs"):
        await fed.start("ke-customs")
    ke = fed["ke-customs"]
    assert "the stored key of epoch 0 of c2c is not the key its record commits to" in caplog.text
    held = ke.service.epochs.key("c2c", 0)
    assert held is not None and held.secret_bytes() == true_key.secret_bytes() != forged
    assert ke.service.epochs.key("c2c", 7) is None
    assert (await reads(ke, first["id"]))["bulletin"]["title"] == "before the edit"
    second = await post(ke, "after the edit")
    assert (await stored_envelope(ke, second["id"]) or {})["header"]["epoch"]["n"] == 0
    await arrives(nl, second["id"])
    assert (await reads(nl, second["id"]))["bulletin"]["title"] == "after the edit"
