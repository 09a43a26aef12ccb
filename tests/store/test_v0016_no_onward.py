"""Revision 0016 (the `no_onward` table, kept by a trigger from each stored envelope) on a
revision-0015 database holding release 0.1.0's data, on SQLite and PostgreSQL: the upgrade lists
the bulletins already marked no-onward-sharing and changes no other row; every bulletin stored
after it is listed by the database itself if, and only if, its envelope bears the mark; the
downgrade gives back 0015's structure. What leaves the node looks the mark up there
(exchange.service.sharing), not in each row's envelope (found by a read-only review)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from exchange.service.sharing import NO_ONWARD
from exchange.store import schema
from exchange.store.migrations.versions import v0016_no_onward
from tests.store.test_migrations import Deployed, deployed, snapshot, structure
from tests.store.test_v0002_idempotency_keys import at_revision

__all__ = ["deployed"]  # the fixture, shared with test_migrations


def test_the_migrations_mark_is_the_services() -> None:
    assert bytes.fromhex(v0016_no_onward.MARK_HEX) == NO_ONWARD
    for sql in (v0016_no_onward.SQLITE_TRIGGER, v0016_no_onward.SQLITE_BACKFILL, *v0016_no_onward.POSTGRES_TRIGGER):
        assert v0016_no_onward.MARK_HEX in sql or "CREATE TRIGGER" in sql


async def run(url: str, statement: str, **params: Any) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(sa.text(statement), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        await engine.dispose()


async def copy_of_a_bulletin(url: str, new_id: str, *, marked: bool) -> None:
    """A stored bulletin's row again under another id (and seq), its envelope bearing the mark or not."""
    ((row,),) = [await run(url, "SELECT * FROM bulletins ORDER BY n LIMIT 1")]
    values = {k: v for k, v in row._mapping.items() if k not in ("n", "channel_pos")}
    envelope = bytes(values["envelope"]).replace(NO_ONWARD, b'"no_onward_sharing":false')
    values |= {
        "id": new_id,
        "seq": 10_000 + ord(new_id[0]),
        "envelope": envelope + (b" " + NO_ONWARD if marked else b""),
    }
    names = ", ".join(values)
    marks = ", ".join(f":{k}" for k in values)
    await run(url, f"INSERT INTO bulletins ({names}) VALUES ({marks})", **values)


async def listed(url: str) -> set[str]:
    return {r[0] for r in await run(url, "SELECT bulletin_id FROM no_onward")}


async def test_upgrading_a_0015_database_lists_the_marked_bulletins_and_the_database_keeps_the_list(
    deployed: Deployed,
) -> None:
    await at_revision(deployed.url, schema.FIRST, stamp=True)  # a 0.1.0 database after its adoption
    await at_revision(deployed.url, "0015", up=True)
    await copy_of_a_bulletin(deployed.url, "a" * 64, marked=True)
    await copy_of_a_bulletin(deployed.url, "b" * 64, marked=False)
    before, shape = await snapshot(deployed.url), await structure(deployed.url)
    marked_before = {
        r[0] for r in await run(deployed.url, "SELECT id, envelope FROM bulletins") if NO_ONWARD in bytes(r[1])
    }
    assert "a" * 64 in marked_before and "b" * 64 not in marked_before

    await at_revision(deployed.url, "0016", up=True)
    after = await snapshot(deployed.url)
    assert after.pop("alembic_version") == [("0016",)]
    unchanged = {t: r for t, r in before.items() if t != "alembic_version"}
    assert {t: r for t, r in after.items() if t != "no_onward"} == unchanged
    assert await listed(deployed.url) == marked_before  # those stored before, found once

    # Stored after it, by any path: listed by the database if, and only if, marked.
    await copy_of_a_bulletin(deployed.url, "c" * 64, marked=True)
    await copy_of_a_bulletin(deployed.url, "d" * 64, marked=False)
    assert await listed(deployed.url) == marked_before | {"c" * 64}

    await at_revision(deployed.url, "0015")
    assert await structure(deployed.url) == shape
