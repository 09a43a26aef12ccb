"""Many rows into one table in one executemany, with SQLAlchemy's per-row work done once; and a
long list of values in a WHERE as one parameter (`among`).

`sa.insert(table)` executed with a list of dicts builds every row's parameters in Python
(`SQLCompiler.construct_params`, a bind processor per value): an author at 200 readers inserts 199
outbox rows and 199 receipt rows per bulletin, and its profile showed 7% of its samples there.
Where no column needs converting (no bind processor on this dialect, which holds for the text and
integer columns of the hot tables; binary columns are given bytes), the statement is compiled once
per table, set of columns and dialect, and the rows go to the driver as tuples
(`exec_driver_sql`). Anything else takes SQLAlchemy's own path, so the rows stored are the same
either way (tests/store/test_bulk_insert.py).
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection


async def insert_rows(conn: AsyncConnection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT `rows` (dicts with the same keys) into `table` in one executemany."""
    if not rows:
        return
    if table.name == "bulletins":
        rows = await _positioned(conn, table, rows)
    first = rows[0].keys()
    plan = _plan(table, tuple(first), conn.dialect)
    if plan is None or any(row.keys() != first for row in rows):  # a row with other keys: SQLAlchemy's way
        await conn.execute(sa.insert(table), list(rows))
        return
    sql, values, defaults = plan
    params = [values({**defaults, **row}) for row in rows] if defaults else [values(row) for row in rows]
    await conn.exec_driver_sql(sql, params)


async def _positioned(conn: AsyncConnection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Bulletin rows with their positions in their channels (`channel_pos`, revision 0012): one past
    the channel's highest, in the rows' order. Read in the inserting transaction, which holds the
    node's write lock, so positions are gap-free and in commit order; the database's trigger numbers
    a row inserted without one the same way, at the cost of rewriting it (SQLite)."""
    tops: dict[str, int] = {}
    out = []
    for row in rows:
        channel = row["channel"]
        if channel not in tops:
            top = await conn.scalar(sa.select(sa.func.max(table.c.channel_pos)).where(table.c.channel == channel))
            tops[channel] = int(top or 0)
        tops[channel] += 1
        out.append({**row, "channel_pos": tops[channel]})
    return out


@functools.lru_cache(maxsize=256)
def _plan(
    table: sa.Table, keys: tuple[str, ...], dialect: Dialect
) -> tuple[str, Callable[[dict[str, Any]], tuple[Any, ...]], dict[str, Any]] | None:
    """The driver-level INSERT for these columns, a function from a row to its values in the
    statement's order, and the constant Python-side defaults of the table's other columns; None
    where a column needs SQLAlchemy (a bind processor, a callable or SQL default, an unknown key)."""
    if not set(keys) <= set(table.c.keys()):
        return None
    defaults: dict[str, Any] = {}
    for column in table.c:
        if column.key in keys or column.default is None:
            continue
        if not isinstance(column.default, sa.ColumnDefault) or not column.default.is_scalar:
            return None
        defaults[column.key] = column.default.arg
    names = keys + tuple(defaults)
    if any(_converted(table.c[name], dialect) for name in names):
        return None
    # inline: no RETURNING of the generated key (PostgreSQL), which an executemany does not want
    compiled = sa.insert(table).inline().compile(dialect=dialect, column_keys=list(names))
    order = compiled.positiontup
    if not compiled.positional or order is None or sorted(order) != sorted(names):
        return None
    pick = operator.itemgetter(*order)
    values = (lambda row: (pick(row),)) if len(order) == 1 else pick
    return str(compiled), values, defaults


def _converted(column: sa.Column[Any], dialect: Dialect) -> bool:
    """Whether SQLAlchemy converts this column's values before the driver sees them. Bytes for a
    binary column are wrapped in the driver's Binary (on SQLite a memoryview), which the driver
    stores as it stores the bytes themselves: the hot tables' binary columns (audit entries, leaf
    hashes) are always given bytes."""
    if isinstance(column.type, sa.LargeBinary):
        return False
    return column.type.dialect_impl(dialect).bind_processor(dialect) is not None


def among(
    dialect: Dialect, column: sa.ColumnElement[Any], values: Sequence[int] | Sequence[str]
) -> sa.ColumnElement[bool]:
    """`column IN values`, the values bound as one parameter: on SQLite a JSON array read with
    `json_each`, on PostgreSQL an array (`= ANY`). `column.in_(values)` renders one placeholder per
    value at every execution (SQLAlchemy's "expanding" parameter, a few microseconds of Python each),
    and the driver parses a statement as long; the senders mark thousands of outbox rows per
    statement at 200 readers. Both forms seek the column's index for a list of the senders' size
    (a very long one may be read by a scan on PostgreSQL, as with `IN`). Integers or
    strings only (what `json_each` gives back compares equal to the column's values)."""
    if dialect.name == "sqlite":
        listed = sa.func.json_each(sa.literal(json.dumps(list(values)), sa.Text)).table_valued("value")
        return column.in_(sa.select(listed.c.value))
    if dialect.name == "postgresql":  # text[], not varchar(64)[]: a cast to varchar(64) cuts longer values
        element = sa.Text() if isinstance(column.type, sa.String) else column.type
        return column == sa.any_(sa.literal(list(values), postgresql.ARRAY(element)))
    return column.in_(values)
