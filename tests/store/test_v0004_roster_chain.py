"""Revision 0004 (the roster_versions table) on a revision-0003 database holding release 0.1.0's
data, on SQLite and PostgreSQL: the upgrade changes no row and adds an empty table that tables.py
describes; the node's v1 roster then moves to roster v2 with `roster import` (the migration of
docs/protocol.md 6a.6), the node still starts, and the downgrade takes exactly that table away.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from exchange.app import local_roster, start_node
from exchange.clock import timestamp, utc_now
from exchange.crypto import SigningKey, b64d
from exchange.errors import SchemaOutdated
from exchange.model import SignedRoster
from exchange.protocol.rosterchain import combine, roster_hash, sign_roster_v2
from exchange.protocol.rostermigration import authority, from_v1
from exchange.store import Store, metadata, schema
from tests.store.test_migrations import NODE, Deployed, deployed, run_here, snapshot, structure
from tests.store.test_v0002_idempotency_keys import at_revision
from tests.store.test_v0003_flat_store import query

__all__ = ["deployed"]  # the fixture, shared with test_migrations


def migration(deployed: Deployed) -> bytes:
    """Version 1 of roster v2 made from the fixture's v1 roster, signed by a 1-of-1 authority and
    by the v1 authority key, as `exchange roster migrate`, `sign` and `combine` make it."""
    keys = deployed.folder.parent / "keys"
    v1_key = SigningKey(b64d((keys / "federation" / "authority.key").read_text().strip()))
    holder = SigningKey.generate()
    signed_v1 = SignedRoster.model_validate(json.loads((keys / "roster.json").read_text()))
    now = utc_now()
    doc = from_v1(
        signed_v1,
        v1_key.verify_key,
        authority([("WCO Secretariat", holder.verify_key)], 1),
        timestamp(now),
        timestamp(now + dt.timedelta(days=365)),
    )
    signed = combine(doc, [sign_roster_v2(doc, holder), sign_roster_v2(doc, v1_key)])
    return json.dumps(signed.model_dump(mode="json")).encode()


async def test_upgrading_a_0003_database_adds_the_roster_chain(deployed: Deployed) -> None:
    await at_revision(deployed.url, schema.FIRST, stamp=True)  # a 0.1.0 database after its adoption
    await at_revision(deployed.url, "0003", up=True)
    before = await snapshot(deployed.url)
    assert before.pop("alembic_version") == [("0003",)] and "roster_versions" not in before
    shape = await structure(deployed.url)
    if schema.head() != "0003":
        with pytest.raises(SchemaOutdated):
            await Store.open(deployed.url, node=NODE)

    await at_revision(deployed.url, "0004", up=True)  # 0004 alone
    after = await snapshot(deployed.url)
    assert after.pop("alembic_version") == [("0004",)]
    assert after == {**before, "roster_versions": []}  # every row as it was, and an empty table
    engine = create_async_engine(deployed.url)
    async with engine.connect() as conn:
        diffs = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
    await engine.dispose()
    assert not [d for d in diffs if "roster_versions" in repr(d)]  # what tables.py says, constraint included
    await schema.upgrade(deployed.url, node=NODE)

    # The node's v1 roster moves to roster v2; the node starts on the database that holds it.
    run_here(deployed)
    cfg = deployed.config
    offered = migration(deployed)
    async with local_roster(cfg) as roster:
        assert roster.v1 is not None and roster.held is None
        done = await roster.import_chain(offered)
    assert (done.before, done.version) == (0, 1)
    assert await query(deployed.url, "SELECT version, hash FROM roster_versions") == [(1, done.hash)]
    async with local_roster(cfg) as roster:  # read back as a restart does
        assert roster.held is not None and roster.held.hash == done.hash == roster_hash(roster.held.roster)
    node = await start_node(cfg)
    await node.stop()

    # Down to 0003: only the table goes (and the versions it held); up again, empty.
    await at_revision(deployed.url, "0004")
    with_it = await structure(deployed.url)
    await at_revision(deployed.url, "0003")
    assert await structure(deployed.url) == shape == {t: s for t, s in with_it.items() if t != "roster_versions"}
    await at_revision(deployed.url, "0004", up=True)
    assert await structure(deployed.url) == with_it
    assert await query(deployed.url, "SELECT count(*) FROM roster_versions") == [(0,)]
