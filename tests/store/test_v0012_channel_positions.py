"""Revision 0012 (`bulletins.channel_pos`) on a revision-0011 database holding release 0.1.0's data,
on SQLite and PostgreSQL: the upgrade numbers every stored bulletin 1, 2, 3, … within its channel in
the order stored and changes nothing else; a row inserted without a position (by hand, or by an
older tool) is numbered by the database; the downgrade gives back 0011's tables."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from exchange.store import metadata
from tests.store.test_migrations import Deployed, deployed, snapshot, structure
from tests.store.test_v0002_idempotency_keys import at_revision
from tests.store.test_v0003_flat_store import query

__all__ = ["deployed"]  # the fixture, shared with test_migrations

COPY = (
    "INSERT INTO bulletins (id, channel, author, seq, state_pos, tlp, created, stored_at, envelope, recipients) "
    "SELECT :new, :channel, author, :seq, state_pos, tlp, created, stored_at, envelope, recipients "
    "FROM bulletins WHERE n = (SELECT min(n) FROM bulletins)"
)


async def test_upgrading_a_0011_database_numbers_each_channels_bulletins_in_the_order_stored(
    deployed: Deployed,
) -> None:
    await at_revision(deployed.url, "0001", stamp=True)  # a 0.1.0 database after its adoption
    await at_revision(deployed.url, "0011", up=True)
    before, shape = await snapshot(deployed.url), await structure(deployed.url)
    assert before.pop("alembic_version") == [("0011",)]
    stored = await query(deployed.url, "SELECT n, channel FROM bulletins ORDER BY n")
    assert len({c for _, c in stored}) >= 1 and len(stored) >= 2, "the fixture holds bulletins"

    await at_revision(deployed.url, "0012", up=True)
    after = await snapshot(deployed.url)
    assert after.pop("alembic_version") == [("0012",)]
    expected, seen = {}, dict[str, int]()
    for n, channel in stored:
        seen[channel] = seen.get(channel, 0) + 1
        expected[n] = seen[channel]
    positions = dict(await query(deployed.url, "SELECT n, channel_pos FROM bulletins"))
    assert positions == expected
    assert [row[:-1] for row in after.pop("bulletins")] == before["bulletins"]  # every other column as it was
    assert after == {k: v for k, v in before.items() if k != "bulletins"}
    engine = create_async_engine(deployed.url)
    async with engine.connect() as conn:
        diffs = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
    await engine.dispose()
    assert not [d for d in diffs if "channel_pos" in repr(d)]  # what tables.py says

    # A row inserted without a position is given the next of its channel; a new channel starts at 1.
    channel = stored[0][1]
    top = max(p for n, p in positions.items() if dict(stored)[n] == channel)
    await query(deployed.url, COPY, new="a" * 64, channel=channel, seq=10_001)
    await query(deployed.url, COPY, new="b" * 64, channel="zz-new", seq=10_002)
    copies = "('" + "a" * 64 + "', '" + "b" * 64 + "')"
    got = dict(await query(deployed.url, f"SELECT id, channel_pos FROM bulletins WHERE id IN {copies}"))
    assert got == {"a" * 64: top + 1, "b" * 64: 1}
    await query(deployed.url, f"DELETE FROM bulletins WHERE id IN {copies}")
    await query(deployed.url, "DELETE FROM channel_counts WHERE channel = 'zz-new'")

    await at_revision(deployed.url, "0011")
    assert await structure(deployed.url) == shape
    downgraded = await snapshot(deployed.url)
    assert downgraded.pop("alembic_version") == [("0011",)]
    assert downgraded == before
