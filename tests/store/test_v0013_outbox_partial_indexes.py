"""Revision 0013 (the outbox's state indexes made partial) on a revision-0012 database holding
release 0.1.0's data, on SQLite and PostgreSQL: the upgrade changes no row, replaces the two state
indexes by one over the queued rows and one over the finished rows, each with its predicate; the
downgrade gives back 0012's indexes."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from exchange.store import metadata
from tests.store.test_migrations import Deployed, deployed, snapshot, structure
from tests.store.test_v0002_idempotency_keys import at_revision
from tests.store.test_v0003_flat_store import query

__all__ = ["deployed"]  # the fixture, shared with test_migrations


async def definitions(url: str) -> dict[str, str]:
    """The outbox's indexes as the database holds them: name -> its definition, in lower case."""
    if url.startswith("sqlite"):
        rows = await query(url, "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox'")
    else:
        rows = await query(url, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'outbox'")
    return {name: " ".join(str(sql).lower().split()) for name, sql in rows if sql is not None}


async def metadata_definitions(path: Path) -> dict[str, str]:
    """The outbox's indexes as tables.py makes them (`create_all`) in a new SQLite database."""
    url = f"sqlite+aiosqlite:///{path}"
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    await engine.dispose()
    return await definitions(url)


async def test_upgrading_a_0012_database_makes_the_outbox_state_indexes_partial(
    deployed: Deployed, tmp_path: Path
) -> None:
    await at_revision(deployed.url, "0001", stamp=True)  # a 0.1.0 database after its adoption
    await at_revision(deployed.url, "0012", up=True)
    before, shape = await snapshot(deployed.url), await structure(deployed.url)
    assert before.pop("alembic_version") == [("0012",)]
    assert before["outbox"], "the fixture holds outbox rows"
    old = await definitions(deployed.url)
    assert "ix_outbox_pending" in old and "ix_outbox_done" in old

    await at_revision(deployed.url, "0013", up=True)
    after = await snapshot(deployed.url)
    assert after.pop("alembic_version") == [("0013",)]
    assert after == before  # no row changed
    new = await definitions(deployed.url)
    assert "ix_outbox_pending" not in new and "ix_outbox_done" not in new
    queued, finished = new["ix_outbox_queued"], new["ix_outbox_finished"]
    # Each over its columns, for the rows of one side (PostgreSQL writes the predicate with casts).
    assert "(dest, n) where " in queued and "'queued'" in queued.split(" where ")[1]
    assert "<>" not in queued and "=" in queued.split(" where ")[1]
    assert "(done_at) where " in finished and "<>" in finished.split(" where ")[1]
    engine = create_async_engine(deployed.url)
    async with engine.connect() as conn:
        diffs = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
    await engine.dispose()
    assert not [d for d in diffs if "outbox" in repr(d)]  # what tables.py says: names and columns
    if deployed.url.startswith("sqlite"):  # and the predicates, which autogenerate does not compare
        made = await metadata_definitions(tmp_path / "made.db")
        assert {k: v.replace("!=", "<>") for k, v in made.items()} == new

    await at_revision(deployed.url, "0012")
    assert await structure(deployed.url) == shape
    assert await definitions(deployed.url) == old
    downgraded = await snapshot(deployed.url)
    assert downgraded.pop("alembic_version") == [("0012",)]
    assert downgraded == before
