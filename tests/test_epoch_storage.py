"""Envelope v2 storage (revision 0006) on SQLite and PostgreSQL: a restarted node still holds its
epoch records, keys, grants and partners' announcements, reads its stored v2 bulletins, and posts
under the same epoch."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import pytest
import sqlalchemy as sa

from exchange.store import Store
from exchange.store.tables import channel_epochs, epoch_keys, epoch_support
from tests import test_epoch_attacks as attacks
from tests.conftest import MakeFederation, eventually
from tests.test_epoch_delivery import C2C, THREE, V2, arrives, post, reads, stored_envelope
from tests.test_tamper_at_rest import in_database


async def rows(url: str, query: Any) -> list[Any]:
    """A stopped or running node's rows, read as someone with access to its database would."""
    store = await Store.open(url)
    try:
        async with store.read() as conn:
            return list((await conn.execute(query)).scalars())
    finally:
        await store.close()


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


async def test_a_history_grant_does_not_bring_back_a_stored_key_edited_by_hand(
    make_federation: MakeFederation, caplog: pytest.LogCaptureFixture
) -> None:
    """The owner's stored key of epoch 0 is replaced while it is stopped; at start it opens the
    true one again. Granting that epoch to a newcomer reads the stored keys of the granted epochs
    back: the edited one must not replace the true one held (found by a read-only review), and the
    newcomer gets, and reads with, the true key."""
    fed = await make_federation(
        nodes={n: attacks.NODES[n] for n in ("nl-customs", "ke-customs", "de-customs")},
        channels=[attacks.channel("nl-customs", "ke-customs")],
        options=attacks.V2,
    )
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    early = await post(nl, "before the edit")
    await arrives(ke, early["id"])
    true_key = nl.service.epochs.key("c2c", 0)
    assert true_key is not None
    await fed.stop("nl-customs")
    at = (epoch_keys.c.channel == "c2c") & (epoch_keys.c.n == 0)
    await in_database(nl.config.database_url, sa.update(epoch_keys).where(at).values(key=os.urandom(32)))
    with caplog.at_level(logging.ERROR, logger="exchange.epochs"):
        await fed.start("nl-customs")
    nl = fed["nl-customs"]
    assert "the stored key of epoch 0 of c2c is not the key its record commits to" in caplog.text

    await attacks.admin_invite_and_accept(nl, de)
    status, body, _ = await nl.api("POST", "/api/v1/channels/c2c/grant-history", user="admin", body={"node": de.id})
    assert status == 200, body
    held = nl.service.epochs.key("c2c", 0)
    assert held is not None and held.secret_bytes() == true_key.secret_bytes()

    async def caught_up() -> bool:
        de.service.catchup.wake()
        return await attacks.stored_wire(de, early["id"]) is not None

    await eventually(caught_up, timeout=30, what="the earlier bulletin at de-customs")
    given = de.service.epochs.key("c2c", 0)
    assert given is not None and given.secret_bytes() == true_key.secret_bytes()
    assert (await reads(de, early["id"]))["bulletin"]["title"] == "before the edit"


async def test_a_stored_epoch_record_edited_by_hand_is_never_used(
    make_federation: MakeFederation, caplog: pytest.LogCaptureFixture
) -> None:
    """A member's stored record of epoch 0 is edited while it is stopped (here its `created`; the
    owner's signature no longer covers it). At start the node finds that the record is not one it
    took in: it is logged and not held, nor its key, and nothing is posted under it: a post falls
    back to a v1 envelope (15.9: any failure to get an epoch does), which its readers read."""
    fed = await make_federation(nodes=THREE, channels=[C2C], options=V2)
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    first = await post(nl, "before the edit")
    await arrives(ke, first["id"])
    url = ke.config.database_url
    await fed.stop("ke-customs")
    at = (channel_epochs.c.channel == "c2c") & (channel_epochs.c.n == 0)
    [raw] = await rows(url, sa.select(channel_epochs.c.record).where(at))
    edited = json.loads(bytes(raw)) | {"created": "2020-01-01T00:00:00Z"}
    await in_database(url, sa.update(channel_epochs).where(at).values(record=json.dumps(edited).encode()))
    with caplog.at_level(logging.ERROR, logger="exchange.epochs"):
        await fed.start("ke-customs")
    ke = fed["ke-customs"]
    assert "the stored record of epoch 0 of c2c is not one this node took in" in caplog.text
    assert ke.service.epochs.record("c2c", 0) is None and ke.service.epochs.key("c2c", 0) is None
    second = await post(ke, "after the edit")
    assert await attacks.version_at(ke, second["id"]) == 1
    await arrives(nl, second["id"])
    assert (await reads(nl, second["id"]))["bulletin"]["title"] == "after the edit"
