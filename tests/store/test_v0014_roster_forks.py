"""Revision 0014 (the roster_forks table) on a revision-0013 database holding release 0.1.0's data,
on SQLite and PostgreSQL: the upgrade changes no row and adds an empty table that tables.py
describes; the downgrade takes exactly that table away."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from exchange.store import metadata, schema
from tests.store.test_migrations import Deployed, deployed, snapshot, structure
from tests.store.test_v0002_idempotency_keys import at_revision

__all__ = ["deployed"]  # the fixture, shared with test_migrations


async def test_upgrading_a_0013_database_adds_an_empty_roster_forks_table(deployed: Deployed) -> None:
    await at_revision(deployed.url, schema.FIRST, stamp=True)  # a 0.1.0 database after its adoption
    await at_revision(deployed.url, "0013", up=True)
    before, shape = await snapshot(deployed.url), await structure(deployed.url)
    assert before.pop("alembic_version") == [("0013",)] and "roster_forks" not in before

    await at_revision(deployed.url, "0014", up=True)
    after = await snapshot(deployed.url)
    assert after.pop("alembic_version") == [("0014",)]
    assert after == {**before, "roster_forks": []}  # every row as it was, and an empty table
    engine = create_async_engine(deployed.url)
    async with engine.connect() as conn:
        diffs = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
    await engine.dispose()
    assert not [d for d in diffs if "roster_forks" in repr(d)]  # what tables.py says

    with_it = await structure(deployed.url)
    await at_revision(deployed.url, "0013")
    assert await structure(deployed.url) == shape == {t: c for t, c in with_it.items() if t != "roster_forks"}
