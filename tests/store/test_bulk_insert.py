"""`insert_rows` (exchange.store.bulk) stores what SQLAlchemy's executemany stores, on both
databases: the driver-level statement where no column needs converting, SQLAlchemy's own path
otherwise (a DateTime column, rows whose keys differ)."""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.store import AuditBuffer, Store, among, audit_log, insert_rows, outbox, receipts
from exchange.store.bulk import _plan
from exchange.store.tables import outbox_leases

pytestmark = pytest.mark.slow


async def _open(database: Callable[[str], Awaitable[str]], tmp_path: Path, name: str) -> Store:
    url = await database(name) or f"sqlite+aiosqlite:///{tmp_path / (name + '.db')}"
    return await Store.open(url)


def _receipt(i: int) -> dict[str, Any]:
    return {
        "bulletin_id": f"{i:064x}",
        "node": f"n{i % 7:03d}-customs",
        "status": "received",
        "at": "2026-12-02T22:00:00.000000Z",
        "receipt": '{"v":2,"note":"é\\u0000 ' + "x" * i + '"}',
    }


def _queued(i: int) -> dict[str, Any]:
    return {"dest": f"n{i % 5:03d}-customs", "kind": "envelope", "ref": f"{i:064x}"}  # "state" from its default


def _entry(i: int) -> dict[str, Any]:
    return {"idx": i, "entry": b'{"idx":%d}' % i, "leaf_hash": bytes([i % 256]) * 32, "bulletin": None}


async def _stored(store: Store, table: sa.Table, rows: list[dict[str, Any]], *, ours: bool) -> object:
    """The table's rows (without generated keys) after inserting `rows` with insert_rows (`ours`)
    or with SQLAlchemy's executemany; or the type of the error the insert raised."""

    async def job(conn: AsyncConnection, _: AuditBuffer) -> None:
        if ours:
            await insert_rows(conn, table, rows)
        else:
            await conn.execute(sa.insert(table), rows)

    try:
        await store.write(job)
    except Exception as exc:  # the same failure either way is what is checked
        return type(exc)
    async with store.read() as conn:
        got = [
            sorted((k, bytes(v) if isinstance(v, memoryview) else v) for k, v in r._mapping.items() if k != "n")
            for r in await conn.execute(sa.select(table))
        ]
    return sorted(got)


EXPIRES = datetime.datetime(2026, 12, 2, 22, 0, tzinfo=datetime.UTC)
CASES: dict[str, tuple[sa.Table, list[dict[str, Any]], bool]] = {
    # name: table, rows, whether the driver-level statement is used on both databases
    "receipts": (receipts, [_receipt(i) for i in range(1, 300)], True),
    "outbox, state from its default": (outbox, [_queued(i) for i in range(1, 300)], True),
    "audit entries": (audit_log, [_entry(i) for i in range(1, 300)], True),
    "a DateTime column": (
        outbox_leases,
        [{"dest": f"n{i}", "holder": "w1", "expires": EXPIRES} for i in range(3)],
        False,  # converted on SQLite; asyncpg takes a datetime as it is
    ),
    "rows with other keys": (outbox, [_queued(1), {**_queued(2), "state": "delivered"}], False),
    "a key naming no column": (receipts, [{**_receipt(1), "nonsense": 1}], False),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_insert_rows_stores_what_sqlalchemy_stores(
    database: Callable[[str], Awaitable[str]], tmp_path: Path, case: str
) -> None:
    table, rows, fast = CASES[case]
    ours, theirs = await _open(database, tmp_path, "bulk-ours"), await _open(database, tmp_path, "bulk-theirs")
    try:
        if fast:
            async with ours.read() as conn:
                assert _plan(table, tuple(rows[0]), conn.dialect) is not None  # the driver-level path is taken
        got = await _stored(ours, table, rows, ours=True)
        assert got == await _stored(theirs, table, rows, ours=False)
        if rows and isinstance(got, list):
            assert len(got) == len(rows)
    finally:
        await ours.close()
        await theirs.close()


async def test_no_rows_is_nothing_to_do(database: Callable[[str], Awaitable[str]], tmp_path: Path) -> None:
    store = await _open(database, tmp_path, "bulk-none")
    try:
        assert await _stored(store, receipts, [], ours=True) == []
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("table", "column", "values"),
    [
        (outbox, "n", [1, 5, 5, 299, 10_000]),  # integers, a repeat, one no row has
        (receipts, "bulletin_id", [f"{i:064x}" for i in (3, 4, 77)] + ["x' OR 1=1 --", "é", f"{3:064x}EXTRA"]),
        (receipts, "bulletin_id", []),
    ],
)
async def test_among_selects_what_in_selects(
    database: Callable[[str], Awaitable[str]], tmp_path: Path, table: sa.Table, column: str, values: list[Any]
) -> None:
    """`among` (one bound parameter) picks the rows `IN` picks, whatever the values hold, and an
    update through it changes those rows only."""
    store = await _open(database, tmp_path, "among")
    rows = [_queued(i) for i in range(1, 300)] if table is outbox else [_receipt(i) for i in range(1, 300)]
    try:
        await _stored(store, table, rows, ours=True)
        async with store.read() as conn:
            col = table.c[column]
            ours = sorted(await conn.scalars(sa.select(col).where(among(conn.dialect, col, values))))
            theirs = sorted(await conn.scalars(sa.select(col).where(col.in_(values))))
        assert ours == theirs and len(ours) == len({v for v in values if isinstance(v, int) and v < 300}) + sum(
            1 for v in values if isinstance(v, str) and v.startswith("0") and len(v) == 64
        )

        if table is outbox:

            async def job(conn: AsyncConnection, _: AuditBuffer) -> None:
                await conn.execute(sa.update(outbox).where(among(conn.dialect, outbox.c.n, values)).values(state="x"))

            await store.write(job)
            async with store.read() as conn:
                changed = sorted(await conn.scalars(sa.select(outbox.c.n).where(outbox.c.state == "x")))
            assert changed == theirs
    finally:
        await store.close()
