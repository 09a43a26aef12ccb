"""Revision 0002 (the idempotency_keys table) on a revision-0001 database holding release 0.1.0's data.

The database is the 0.1.0 fixture of test_migrations, stamped 0001 as `exchange db upgrade` adopts it:
the node refuses it until it is upgraded; the upgrade applies 0002 alone, changes no row and adds an
empty table; the node then answers a retried post from it; and the downgrade takes only that table away.
"""

from __future__ import annotations

import io
import json
import ssl
import uuid

import aiohttp
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from exchange.app import start_node
from exchange.config import NodeConfig
from exchange.errors import SchemaOutdated
from exchange.store import Store, metadata, schema
from tests.store.test_migrations import NODE, Deployed, deployed, run_here, snapshot, structure

__all__ = ["deployed"]  # the fixture, shared with test_migrations


async def at_revision(url: str, revision: str, *, stamp: bool = False, up: bool = False) -> None:
    """Stamp the database `revision`, or migrate it down (or `up`) to it."""
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        if stamp:
            await conn.run_sync(lambda sync: command.stamp(schema.alembic_config(sync), revision))
        elif up:
            await conn.run_sync(lambda sync: command.upgrade(schema.alembic_config(sync), revision))
        else:
            await conn.run_sync(lambda sync: command.downgrade(schema.alembic_config(sync), revision))
    await engine.dispose()


async def keyed_post(cfg: NodeConfig, key: str) -> tuple[int, dict[str, str], str | None]:
    ctx = ssl.create_default_context(cadata=(cfg.keys_dir / "tls.crt").read_text())
    ctx.check_hostname = False
    token = (cfg.keys_dir / "tokens" / "officer").read_text().strip()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Idempotency-Key": key}
    body = io.BytesIO(json.dumps({"kind": "alert", "title": "After 0002"}).encode())
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.post(cfg.endpoint + "/api/v1/channels/c2c-cargo-fraud/bulletins", data=body, headers=headers) as resp,
    ):
        return resp.status, await resp.json(), resp.headers.get("Idempotent-Replayed")


async def test_upgrading_a_0001_database_adds_the_idempotency_keys_table(deployed: Deployed) -> None:
    await at_revision(deployed.url, schema.FIRST, stamp=True)  # a 0.1.0 database after its adoption
    before = await snapshot(deployed.url)
    assert before.pop("alembic_version") == [("0001",)] and "idempotency_keys" not in before

    with pytest.raises(SchemaOutdated) as refused:
        await Store.open(deployed.url, node=NODE)
    assert f"is at schema 0001 (release 0.1.0), not {schema.head()}; run: exchange db upgrade" in refused.value.detail
    assert (await snapshot(deployed.url)) == {**before, "alembic_version": [("0001",)]}

    await at_revision(deployed.url, "0002", up=True)  # 0002 alone (later revisions have tests of their own)
    after = await snapshot(deployed.url)
    assert after.pop("alembic_version") == [("0002",)]
    assert after == {**before, "idempotency_keys": []}  # every row as it was, and an empty table
    engine = create_async_engine(deployed.url)
    async with engine.connect() as conn:
        diffs = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
    await engine.dispose()
    assert not [d for d in diffs if "idempotency_keys" in repr(d)]  # what tables.py says, index included
    done = await schema.upgrade(deployed.url, node=NODE)
    assert (done.before, done.after, done.adopted) == ("0002", schema.head(), False)

    # The node starts on it and answers a retried post with the first answer.
    run_here(deployed)
    node = await start_node(deployed.config)
    try:
        key = str(uuid.uuid4())
        status, first, replayed = await keyed_post(deployed.config, key)
        assert (status, replayed) == (201, None), first
        assert await keyed_post(deployed.config, key) == (201, first, "true")
    finally:
        await node.stop()
    engine = create_async_engine(deployed.url)
    async with engine.connect() as conn:
        keys = (await conn.execute(sa.text("SELECT bulletin_id FROM idempotency_keys"))).scalars().all()
    await engine.dispose()
    assert keys == [first["id"]]

    # Down to 0001: only the table goes; up again.
    await at_revision(deployed.url, "0002")
    without = await structure(deployed.url)
    await at_revision(deployed.url, schema.FIRST)
    assert await structure(deployed.url) == {t: s for t, s in without.items() if t != "idempotency_keys"}
    await at_revision(deployed.url, "0002", up=True)
    assert await structure(deployed.url) == without
