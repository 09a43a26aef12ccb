"""Epochs made and fetched ahead of the bulletins that need them (docs/protocol.md, 15.1 "When";
exchange/service/epoch_prefetch.py): once a channel's state holds still, the owner makes its epoch
and every reader fetches it, so that the first bulletin after a change of readers waits for
neither. A removed reader gets nothing of the new epoch, and an owner that cannot make one (a
reader without v2) tries again after a delay that doubles."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import sqlalchemy as sa

from exchange.config import NodeConfig
from exchange.store import audit_log
from tests.conftest import MakeFederation, Member, eventually
from tests.test_epoch_attacks import NODES, admin, admin_invite_and_accept, channel, envelope_at, post
from tests.test_epoch_delivery import arrives, reads

THREE = ("nl-customs", "ke-customs", "de-customs")


async def kinds(member: Member) -> list[str]:
    async with member.service.store.read() as conn:
        rows = (await conn.execute(sa.select(audit_log.c.entry).order_by(audit_log.c.idx))).scalars().all()
    return [json.loads(r)["event"] for r in rows]


async def test_the_owner_makes_the_epoch_and_readers_fetch_it_before_any_post(make_federation: MakeFederation) -> None:
    fed = await make_federation(
        nodes={n: NODES[n] for n in THREE},
        channels=[channel(*THREE)],
        options={"envelope_v2": True, "epoch_prefetch_seconds": 0.2},
    )
    nl, ke, de = (fed[n] for n in THREE)

    async def held(n: int, *members: Member) -> bool:
        return all(m.service.epochs.key("c2c", n) is not None for m in members)

    await eventually(lambda: held(0, nl, ke, de), timeout=20, what="epoch 0 at every reader, no post made")
    assert "epoch.made" in await kinds(nl)
    for m in (ke, de):
        assert "epoch.key_taken" in await kinds(m)  # audited where it was taken, as when a post needs it
    # The first post, by a reader that is not the owner, finds the epoch held: none is made or fetched.
    first = await post(ke, "no wait for the epoch")
    env = await envelope_at(ke, first["id"])
    assert env is not None and env.header.epoch.n == 0
    await arrives(de, first["id"])
    assert (await reads(de, first["id"]))["bulletin"]["title"] == "no wait for the epoch"

    # A removal: the next epoch is made and fetched by the readers left, and the removed reader,
    # which no longer reads the channel, neither looks for it nor can fetch it.
    await admin(nl, "remove", "de-customs")
    await eventually(lambda: held(1, nl, ke), timeout=20, what="epoch 1 at the readers left, no post made")
    record = ke.service.epochs.record("c2c", 1)
    assert record is not None and "de-customs" not in record.readers
    assert de.service.epochs.key("c2c", 1) is None and de.service.epochs.record("c2c", 1) is None
    later = time.monotonic() + 10_000
    assert await de.service.epoch_prefetch.look(later) == 0 == await de.service.epoch_prefetch.look(later + 100)
    after = await post(ke, "after the removal")
    env = await envelope_at(ke, after["id"])
    assert env is not None and env.header.epoch.n == 1
    await arrives(nl, after["id"])
    assert await envelope_at(de, after["id"]) is None


async def test_a_joiner_fetches_the_epoch_of_its_acceptance_ahead_of_posts_and_no_earlier_key(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation(
        nodes={n: NODES[n] for n in THREE},
        channels=[channel("nl-customs", "ke-customs")],
        options={"envelope_v2": True, "epoch_prefetch_seconds": 0.2},
    )
    nl, ke, de = (fed[n] for n in THREE)

    async def held(n: int, *members: Member) -> bool:
        return all(m.service.epochs.key("c2c", n) is not None for m in members)

    await eventually(lambda: held(0, nl, ke), timeout=20, what="epoch 0 at both readers")
    await admin_invite_and_accept(nl, de)
    await eventually(lambda: held(1, nl, ke, de), timeout=20, what="epoch 1 at every reader, the joiner too")
    # The joiner holds the earlier record (it verifies itself) but no key of it: no history was granted.
    assert de.service.epochs.record("c2c", 0) is not None and de.service.epochs.key("c2c", 0) is None
    first = await post(ke, "the joiner reads this one")
    env = await envelope_at(ke, first["id"])
    assert env is not None and env.header.epoch.n == 1
    await arrives(de, first["id"])
    assert (await reads(de, first["id"]))["bulletin"]["title"] == "the joiner reads this one"


async def test_an_epoch_that_cannot_be_made_is_tried_a_few_times_a_state_then_left_to_the_first_post(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed = await make_federation(
        nodes={n: NODES[n] for n in THREE},
        channels=[channel(*THREE)],
        start=False,
        # a long settle: the loop itself does not look during the test; the test looks, at chosen times
        options={"envelope_v2": True, "epoch_prefetch_seconds": 100},
    )
    path = fed.folder / "de-customs.toml"  # de runs without v2: no epoch can be made for the channel
    path.write_text(path.read_text().replace("envelope_v2 = true", "envelope_v2 = false"))
    fed["de-customs"].config = NodeConfig.load(path, environ={})
    for n in fed.members:
        await fed.start(n)
    nl, ke, de = (fed[n] for n in THREE)
    assert not de.service.epoch_prefetch.enabled  # a node without v2 makes and fetches no epoch
    owner, reader, t = nl.service.epoch_prefetch, ke.service.epoch_prefetch, time.monotonic()
    assert await owner.look(t) == 0 and await reader.look(t) == 0  # new: wait for the state to hold still
    assert await owner.look(t + 99) == 0
    # The owner tries (de takes no v2), then again after 10, 20 and 40 s, then no more for this state.
    times = (100, 109, 110, 129, 130, 169, 170, 10_000)
    assert [await owner.look(t + s) for s in times] == [1, 0, 1, 0, 1, 0, 1, 0]
    assert nl.service.epochs.latest("c2c") is None
    # A reader asks the owner as often (its first try up to 0.1 s per reader later), then no more.
    assert [await reader.look(t + s) for s in (101, 111, 131, 171, 10_000)] == [1, 1, 1, 1, 0]
    assert ke.service.epochs.latest("c2c") is None

    # The reader without v2 is removed: a new state, so new tries. One that fails unexpectedly is
    # logged, and neither stops the look nor the next try.
    await admin(nl, "remove", "de-customs")
    t = time.monotonic()
    assert await owner.look(t) == 0

    async def broken(state: Any) -> None:
        raise RuntimeError("the database went away")

    monkeypatch.setattr(nl.service.epochs, "make_current", broken)
    assert await owner.look(t + 100) == 1
    monkeypatch.undo()
    assert await owner.look(t + 109) == 0
    assert await owner.look(t + 110) == 1
    latest = nl.service.epochs.latest("c2c")
    assert latest is not None and latest.n == 0 and "de-customs" not in latest.readers
    assert await owner.look(t + 10_000) == 0 and await owner.look(t + 20_000) == 0  # made: nothing more to do


async def test_readers_changed_and_changed_back_have_the_owner_make_the_next_epoch_ahead_of_posts(
    make_federation: MakeFederation,
) -> None:
    """A member joined and was removed before any epoch was made for it: the latest epoch's readers
    are the state's again, but an author no longer posts under an epoch whose readers did not hold
    steady since (a grantee of its key may have been removed meanwhile). The owner's prefetch makes
    the next one, so members go on posting v2 under it rather than falling back to v1."""
    fed = await make_federation(
        nodes={n: NODES[n] for n in THREE},
        channels=[channel("nl-customs", "ke-customs")],
        options={"envelope_v2": True, "epoch_prefetch_seconds": 100},  # looked at by hand below
    )
    nl, ke, de = (fed[n] for n in THREE)
    first = await post(nl, "under epoch 0")
    await arrives(ke, first["id"])
    await admin_invite_and_accept(nl, de)
    await admin(nl, "remove", "de-customs")
    latest = nl.service.epochs.latest("c2c")
    assert latest is not None and latest.n == 0 and latest.readers == nl.service.channels.state("c2c").readers
    t = time.monotonic()
    assert await nl.service.epoch_prefetch.look(t) == 0  # new: it waits for the state to hold still
    assert await nl.service.epoch_prefetch.look(t + 10_000) == 1  # it held still: before, none needed
    made = nl.service.epochs.latest("c2c")
    assert made is not None and made.n == 1 and "de-customs" not in made.readers  # before: none made

    async def removed_at_ke() -> bool:  # else ke, still counting de-customs a reader, posts v1
        return "de-customs" not in ke.service.channels.state("c2c").readers

    await eventually(removed_at_ke, what="the removal at ke-customs")
    after = await post(ke, "after de-customs left")
    env = await envelope_at(ke, after["id"])
    assert env is not None and env.header.epoch.n == 1
