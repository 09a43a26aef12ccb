"""Revision 0009: on SQLite, the ids that people and the audit log see (webhooks.id, and with them
epoch_grants.id and signin_failures.n) are never given again once their row is deleted.

SQLite gives a new row of an INTEGER PRIMARY KEY table one more than the highest id present, so
the id of the newest row, once deleted, went to the next one: "webhook 5" in the audit log could
then name two webhooks. AUTOINCREMENT makes it one more than the highest ever given.
PostgreSQL's serial columns never gave an id twice; the tests run on both.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from exchange.crypto import canonical_json
from exchange.merkle import leaf_hash
from exchange.store import metadata, schema
from tests.store.test_migrations import Deployed, deployed, empty_url, snapshot, structure
from tests.store.test_v0002_idempotency_keys import at_revision
from tests.store.test_v0003_flat_store import query

__all__ = ["deployed", "empty_url"]  # the fixtures, shared with test_migrations

REBUILT = ("epoch_grants", "signin_failures", "webhooks")

AT = "2026-12-01T00:00:00.000Z"

# A row of each table whose deleted ids must stay deleted; `i` makes it unique.
ROWS: dict[str, Callable[[int], dict[str, Any]]] = {
    "webhooks": lambda i: {
        "channel": "c2c",
        "url": f"https://example.org/{i}",
        "secret": "0" * 64,
        "cursor": 0,
        "created_at": AT,
        "created_by": "admin",
    },
    "epoch_grants": lambda i: {
        "channel": "c2c",
        "node": "ke-customs",
        "state_pos": 1,
        "hash": f"{i:064x}",
        "grant": b"{}",
        "stored_at": AT,
    },
    "signin_failures": lambda i: {"user": "officer", "address": "192.0.2.1", "at": AT},
}


async def inserted_id(conn: AsyncConnection, table: sa.Table, row: dict[str, Any]) -> int:
    """Insert one row; the id the database gave it."""
    key = (await conn.execute(sa.insert(table).values(row))).inserted_primary_key
    assert key is not None  # one row inserted: its key
    return int(key[0])


async def add_delete_add(url: str, name: str) -> tuple[list[int], int]:
    """Add two rows, delete the second, add one more (three transactions): the first two ids, the new one."""
    table = metadata.tables[name]
    key = next(iter(table.primary_key.columns))
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            ids = [await inserted_id(conn, table, ROWS[name](i)) for i in (1, 2)]
        async with engine.begin() as conn:
            await conn.execute(sa.delete(table).where(key == ids[-1]))
        async with engine.begin() as conn:
            again = await inserted_id(conn, table, ROWS[name](3))
    finally:
        await engine.dispose()
    return ids, again


@pytest.mark.parametrize("name", sorted(ROWS))
async def test_a_deleted_rows_id_is_not_given_to_the_next_row(empty_url: str, name: str) -> None:
    await schema.upgrade(empty_url)
    ids, again = await add_delete_add(empty_url, name)
    assert again > ids[-1], f"{name}: the deleted row's id {ids[-1]} was given again"


def table_sql(path: Path) -> dict[str, str]:
    """Each table's and index's CREATE statement as SQLite keeps it (a renamed table's name quoted)."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall()
    conn.close()
    return {name: re.sub(r'^CREATE TABLE "(\w+)"', r"CREATE TABLE \1", sql) for name, sql in rows}


def test_the_migrations_build_the_tables_that_tables_py_declares_on_sqlite(tmp_path: Path) -> None:
    """What compare_metadata does not see: AUTOINCREMENT. Every table has it exactly where tables.py
    says, and the tables 0009 rebuilt are, with their indexes, what `create_all` makes of tables.py."""
    import asyncio

    asyncio.run(schema.upgrade(f"sqlite+aiosqlite:///{tmp_path / 'migrated.db'}"))
    declared = sa.create_engine(f"sqlite:///{tmp_path / 'declared.db'}")
    metadata.create_all(declared)
    declared.dispose()
    migrated, fresh = table_sql(tmp_path / "migrated.db"), table_sql(tmp_path / "declared.db")
    autoincrement = {name for name, sql in migrated.items() if "AUTOINCREMENT" in sql}
    assert autoincrement == {t.name for t in metadata.tables.values() if t.dialect_options["sqlite"]["autoincrement"]}
    assert autoincrement == set(REBUILT)
    indexes = {str(index.name) for table in REBUILT for index in metadata.tables[table].indexes}
    assert len(indexes) == 4
    for name in set(REBUILT) | indexes:
        assert migrated[name] == fresh[name], name


def webhook_entry(idx: int, webhook: int, change: str) -> dict[str, Any]:
    entry = {"event": "webhook.changed", "at": AT, "user": "admin", "webhook": webhook, "channel": "c2c"}
    entry |= {"url": f"https://example.org/{webhook}", "change": change}
    raw = canonical_json(entry)
    return {"idx": idx, "entry": raw, "leaf_hash": leaf_hash(raw)}


async def test_0009_keeps_every_row_and_gives_no_id_the_log_names_again(deployed: Deployed) -> None:
    """A 0008 database with release 0.1.0's data, three webhooks registered and the newest removed:
    the upgrade changes no row, key or index, and the next webhook gets 4, not the removed one's 3
    (SQLite knows that only from the audit log). The downgrade gives back 0008's tables."""
    await at_revision(deployed.url, schema.FIRST, stamp=True)
    await at_revision(deployed.url, "0008", up=True)
    size = int((await query(deployed.url, "SELECT count(*) FROM audit_log"))[0][0])
    engine = create_async_engine(deployed.url)
    async with engine.begin() as conn:
        for i in (1, 2, 3):
            await conn.execute(sa.insert(metadata.tables["webhooks"]).values(ROWS["webhooks"](i)))
            await conn.execute(sa.insert(metadata.tables["epoch_grants"]).values(ROWS["epoch_grants"](i)))
        entries = [webhook_entry(size + i, i + 1, "registered") for i in range(3)]
        entries.append(webhook_entry(size + 3, 3, "removed"))
        await conn.execute(sa.insert(metadata.tables["audit_log"]), entries)
        await conn.execute(sa.text("DELETE FROM webhooks WHERE id = 3"))
    await engine.dispose()
    before, shape = await snapshot(deployed.url), await structure(deployed.url)
    assert before.pop("alembic_version") == [("0008",)] and len(before["signin_failures"]) == 1

    await at_revision(deployed.url, "0009", up=True)  # 0009 alone
    after = await snapshot(deployed.url)
    assert after.pop("alembic_version") == [("0009",)]
    assert after == before
    assert await structure(deployed.url) == shape
    if deployed.kind == "sqlite":
        path = Path(deployed.url.removeprefix("sqlite+aiosqlite:///"))
        assert {n for n, sql in table_sql(path).items() if "AUTOINCREMENT" in sql} == set(REBUILT)
    engine = create_async_engine(deployed.url)
    async with engine.begin() as conn:
        new = await conn.execute(sa.insert(metadata.tables["webhooks"]).values(ROWS["webhooks"](4)))
    await engine.dispose()
    assert new.inserted_primary_key is not None and new.inserted_primary_key[0] == 4

    await at_revision(deployed.url, "0008")
    again = await snapshot(deployed.url)
    assert again.pop("alembic_version") == [("0008",)]
    assert again["webhooks"] == after["webhooks"] + [again["webhooks"][-1]]
    assert {t: r for t, r in again.items() if t != "webhooks"} == {t: r for t, r in after.items() if t != "webhooks"}
    assert await structure(deployed.url) == shape
    if deployed.kind == "sqlite":
        assert not any("AUTOINCREMENT" in sql for sql in table_sql(path).values())
