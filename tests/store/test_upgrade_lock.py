"""Two `exchange db upgrade` runs on one database take turns: the second waits for the first's lock,
then finds the schema current. One that cannot take the lock in time says so on one line, exits 1
and changes nothing (SQLite and PostgreSQL; the test holds the lock an upgrade takes)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from exchange.cli.db import db
from exchange.store import schema
from tests.store.test_migrations import NODE, Deployed, deployed, empty_url, invoke, snapshot

__all__ = ["deployed", "empty_url"]  # the fixtures, shared with test_migrations


@asynccontextmanager
async def upgrade_lock(url: str) -> AsyncIterator[None]:
    """Hold what an upgrade takes first: SQLite's write lock, or PostgreSQL's advisory lock."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(Path(url.removeprefix("sqlite+aiosqlite:///")), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
    else:
        pg = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        await pg.execute("SELECT pg_advisory_lock($1)", schema.LOCK_KEY)
        try:
            yield
        finally:
            await pg.close()


async def test_two_upgrades_at_once_take_turns(empty_url: str) -> None:
    done = await asyncio.gather(schema.upgrade(empty_url), schema.upgrade(empty_url))
    every = tuple(reversed([s.revision for s in schema.scripts().walk_revisions()]))
    assert sorted((d.before or "", d.applied) for d in done) == [("", every), (schema.head(), ())]


async def test_an_upgrade_that_cannot_take_the_lock_says_so_and_changes_nothing(
    deployed: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schema, "LOCK_WAIT", 0.5)
    before = await snapshot(deployed.url)
    async with upgrade_lock(deployed.url):
        refused = await invoke(db, "upgrade", "--node", str(deployed.node_file))
    assert refused.exit_code == 1 and isinstance(refused.exception, SystemExit)
    assert refused.output.splitlines() == [
        f"error: another upgrade (or, on SQLite, a node still running) held the database of node {NODE} "
        "for 0.5 s; nothing was changed: run `exchange db upgrade` again once it has finished"
    ]
    assert await snapshot(deployed.url) == before
    # Once the lock is free, the same command does it.
    again = await invoke(db, "upgrade", "--node", str(deployed.node_file))
    assert again.exit_code == 0, again.output
    assert (
        again.output.splitlines()[-1]
        == f"{NODE}: the database is at schema {schema.describe(schema.head())}, this release's"
    )
