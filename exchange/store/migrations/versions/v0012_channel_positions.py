"""Each bulletin's position in its channel (`bulletins.channel_pos`: 1, 2, 3, … per channel, in the
order the node stored them), for catch-up cursors that count one channel only (docs/protocol.md
11.6). Before, a catch-up page numbered its items with `bulletins.n`, which counts every channel
the node holds, so a member of one channel learnt from two items' numbers how many bulletins the
node had stored meanwhile in channels it is not in.

The database numbers each row as it is inserted (a trigger; a row inserted with a position keeps
it), from the channel's highest position, inside the transaction that inserts it: the node's
writes take one lock (SQLite's write lock; on PostgreSQL the log's lock, exchange.store.workers),
so positions are gap-free and in commit order, as `n` is. A unique index on (channel, channel_pos)
refuses a duplicate should anything else write. The upgrade numbers the rows already stored in `n`
order, per channel; on SQLite that rewrites every row of `bulletins` once.
"""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None

SQLITE_TRIGGER = """CREATE TRIGGER tr_bulletins_positioned AFTER INSERT ON bulletins
WHEN NEW.channel_pos IS NULL BEGIN
    UPDATE bulletins SET channel_pos = (
        SELECT coalesce(max(channel_pos), 0) + 1 FROM bulletins WHERE channel = NEW.channel
    ) WHERE n = NEW.n;
END"""

# Row-level and BEFORE: the statement's earlier rows are visible to the trigger's query.
POSTGRES_TRIGGER = (
    """CREATE FUNCTION exchange_bulletins_positioned() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.channel_pos IS NULL THEN
        NEW.channel_pos := (SELECT coalesce(max(channel_pos), 0) + 1 FROM bulletins WHERE channel = NEW.channel);
    END IF;
    RETURN NEW;
END $$""",
    """CREATE TRIGGER tr_bulletins_positioned BEFORE INSERT ON bulletins
    FOR EACH ROW EXECUTE FUNCTION exchange_bulletins_positioned()""",
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite" and sqlite3.sqlite_version_info < (3, 25):
        raise RuntimeError(f"revision 0012 needs SQLite 3.25 or later (window functions), not {sqlite3.sqlite_version}")
    op.add_column("bulletins", sa.Column("channel_pos", sa.BigInteger, nullable=True))
    bind.execute(
        sa.text(
            "CREATE TEMPORARY TABLE channel_positions AS "
            "SELECT n, ROW_NUMBER() OVER (PARTITION BY channel ORDER BY n) AS pos FROM bulletins"
        )
    )
    bind.execute(sa.text("CREATE UNIQUE INDEX ix_channel_positions_n ON channel_positions (n)"))
    if bind.dialect.name == "postgresql":  # a join; SQLite before 3.33 has no UPDATE ... FROM
        bind.execute(
            sa.text("UPDATE bulletins SET channel_pos = p.pos FROM channel_positions p WHERE p.n = bulletins.n")
        )
    else:
        bind.execute(
            sa.text("UPDATE bulletins SET channel_pos = (SELECT pos FROM channel_positions p WHERE p.n = bulletins.n)")
        )
    bind.execute(sa.text("DROP TABLE channel_positions"))
    # After the numbering, so the index is built once rather than updated row by row.
    op.create_index("ix_bulletins_channel_pos", "bulletins", ["channel", "channel_pos"], unique=True)
    for statement in POSTGRES_TRIGGER if bind.dialect.name == "postgresql" else (SQLITE_TRIGGER,):
        bind.execute(sa.text(statement))


def downgrade() -> None:
    """Drop the positions, their index and their trigger: 0011 numbers catch-up pages with `n`. A
    partner's cursor saved under the positions then reads as an `n` past the end of what the node
    holds (2**30 and above), and that partner is served nothing more from this node until an
    administrator resets its cursor (docs/operations.md, "Revision 0012")."""
    bind = op.get_bind()
    # Not a batch operation: on SQLite it would rebuild the table without 0003's triggers.
    if bind.dialect.name == "sqlite" and sqlite3.sqlite_version_info < (3, 35):
        raise RuntimeError(
            f"downgrading below 0012 needs SQLite 3.35 or later (DROP COLUMN), not {sqlite3.sqlite_version}"
        )
    if bind.dialect.name == "postgresql":
        bind.execute(sa.text("DROP TRIGGER tr_bulletins_positioned ON bulletins"))
        bind.execute(sa.text("DROP FUNCTION exchange_bulletins_positioned()"))
    else:
        bind.execute(sa.text("DROP TRIGGER tr_bulletins_positioned"))
    op.drop_index("ix_bulletins_channel_pos", table_name="bulletins")
    bind.execute(sa.text("ALTER TABLE bulletins DROP COLUMN channel_pos"))
