"""Revision 0015 (the outbox's unique key led by the item's reference) on a revision-0014 database
holding release 0.1.0's data, on SQLite and PostgreSQL: the upgrade changes no row, keeps the key
unique over (ref, dest, kind) in that order and the two partial indexes with their predicates (a
SQLite rebuild); the downgrade gives back 0014's key and indexes."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from exchange.store import metadata, schema
from tests.store.test_migrations import Deployed, deployed, snapshot, structure
from tests.store.test_v0002_idempotency_keys import at_revision
from tests.store.test_v0013_outbox_partial_indexes import definitions, metadata_definitions

__all__ = ["deployed"]  # the fixture, shared with test_migrations


async def key_columns(url: str) -> list[str]:
    """The columns of the outbox's unique key, in the key's order, as the database holds it."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            keys = await conn.run_sync(lambda sync: sa.inspect(sync).get_unique_constraints("outbox"))
    finally:
        await engine.dispose()
    return next(list(k["column_names"]) for k in keys if k["name"] == "uq_outbox_item")


async def test_upgrading_a_0014_database_leads_the_outbox_key_with_the_reference(
    deployed: Deployed, tmp_path: Path
) -> None:
    await at_revision(deployed.url, schema.FIRST, stamp=True)  # a 0.1.0 database after its adoption
    await at_revision(deployed.url, "0014", up=True)
    before, shape = await snapshot(deployed.url), await structure(deployed.url)
    assert before.pop("alembic_version") == [("0014",)]
    assert before["outbox"], "the fixture holds outbox rows"
    indexes = await definitions(deployed.url)
    assert await key_columns(deployed.url) == ["dest", "kind", "ref"]

    await at_revision(deployed.url, "0015", up=True)
    after = await snapshot(deployed.url)
    assert after.pop("alembic_version") == [("0015",)]
    assert after == before  # no row changed
    assert await key_columns(deployed.url) == ["ref", "dest", "kind"]
    new = await definitions(deployed.url)
    assert {k: v for k, v in new.items() if k.startswith("ix_")} == {
        k: v for k, v in indexes.items() if k.startswith("ix_")
    }  # the partial indexes as they were, predicates included
    engine = create_async_engine(deployed.url)
    async with engine.connect() as conn:
        diffs = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
    await engine.dispose()
    assert not [d for d in diffs if "outbox" in repr(d)]  # what tables.py says
    if deployed.url.startswith("sqlite"):  # and the predicates, which autogenerate does not compare
        made = await metadata_definitions(tmp_path / "made.db")
        assert {k: v.replace("!=", "<>") for k, v in made.items()} == new
    # Still unique: the same item queued twice for one destination is refused.
    engine = create_async_engine(deployed.url)
    try:
        async with engine.connect() as conn:
            item = (await conn.execute(sa.text("SELECT dest, kind, ref FROM outbox"))).first()
        assert item is not None
        dest, kind, ref = item
        with pytest.raises(sa.exc.IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(
                    sa.text("INSERT INTO outbox (dest, kind, ref, state) VALUES (:d, :k, :r, 'queued')"),
                    {"d": dest, "k": kind, "r": ref},
                )
    finally:
        await engine.dispose()

    await at_revision(deployed.url, "0014")
    assert await structure(deployed.url) == shape
    assert await key_columns(deployed.url) == ["dest", "kind", "ref"]
    assert await definitions(deployed.url) == indexes
    downgraded = await snapshot(deployed.url)
    assert downgraded.pop("alembic_version") == [("0014",)]
    assert downgraded == before
