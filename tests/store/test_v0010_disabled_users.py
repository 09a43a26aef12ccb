"""Revision 0010 (`users.disabled_at`) on a revision-0009 database holding release 0.1.0's data, on
SQLite and PostgreSQL: the upgrade changes no row and every existing user stays enabled (its token
and console password still let it in); the downgrade gives back 0009's table, and a user disabled
meanwhile does not get its old token or password back with it.
"""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from exchange.crypto import hash_token
from exchange.service.users import Users
from exchange.store import Store, metadata, schema
from tests.store.test_migrations import NODE, Deployed, deployed, snapshot, structure
from tests.store.test_v0002_idempotency_keys import at_revision
from tests.store.test_v0003_flat_store import query

__all__ = ["deployed"]  # the fixture, shared with test_migrations


async def test_upgrading_a_0009_database_keeps_every_user_enabled(deployed: Deployed) -> None:
    await at_revision(deployed.url, schema.FIRST, stamp=True)  # a 0.1.0 database after its adoption
    await at_revision(deployed.url, "0009", up=True)
    before, shape = await snapshot(deployed.url), await structure(deployed.url)
    assert before.pop("alembic_version") == [("0009",)]
    assert len(before["users"]) == 4 and len(before["user_passwords"]) == 4

    await at_revision(deployed.url, "0010", up=True)
    after = await snapshot(deployed.url)
    assert after.pop("alembic_version") == [("0010",)]
    assert after.pop("users") == [(*row, None) for row in before.pop("users")]  # each user as it was, enabled
    assert after == before
    engine = create_async_engine(deployed.url)
    async with engine.connect() as conn:
        diffs = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
    await engine.dispose()
    assert not [d for d in diffs if "users" in repr(d)]  # what tables.py says
    await schema.upgrade(deployed.url, node=NODE)  # and on to the current revision, to use it

    # Every user of the deployed node still gets in: its token, and its console password.
    keys = deployed.folder.parent / "keys" / NODE
    store = await Store.open(deployed.url, node=NODE)
    try:
        people = Users(store)
        assert [(u.name, u.disabled_at) for u in await people.list()] == [
            ("admin", None),
            ("auditor", None),
            ("duty-officer", None),
            ("officer", None),
        ]
        for path in sorted((keys / "tokens").iterdir()):
            assert (await people.authenticate(path.read_text().strip())).name == path.name
        officer = (keys / "passwords" / "officer").read_text().strip()
        assert (await people.verify_password("officer", officer)).name == "officer"

        await people.disable("officer", actor="test")
    finally:
        await store.close()

    # Down to 0009: the column goes, and the disabled officer's old token and password with it.
    await at_revision(deployed.url, "0009")
    assert await structure(deployed.url) == shape
    old_token = (keys / "tokens" / "officer").read_text().strip()
    officer_row = await query(deployed.url, "SELECT token_hash FROM users WHERE name = 'officer'")
    assert officer_row and officer_row[0][0] != hash_token(old_token)
    assert await query(deployed.url, "SELECT count(*) FROM user_passwords WHERE \"user\" = 'officer'") == [(0,)]
    assert await query(deployed.url, "SELECT count(*) FROM users") == [(4,)]
