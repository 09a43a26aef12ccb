"""The `no_onward` table: the bulletins whose author marked them no-onward-sharing, kept by the
database as each bulletin is stored (a trigger), so that what leaves the node (TAXII, webhooks,
STIX export: exchange.service.sharing) finds the mark by an index seek instead of searching each
row's envelope. A scan of 5,000 rows read every envelope in the database, megabytes a row with
attachments, however little it then served (found by a read-only review).

The trigger looks for the mark in the stored envelope's canonical JSON, where only the signed
header has it, as `exchange.service.sharing.onward_forbidden` does: every way a bulletin is
stored (posted, pushed, pulled, relayed, imported by hand) takes it. The upgrade reads every
stored envelope once, to list those already marked; it rewrites no row.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision: str | None = "0015"
branch_labels: str | None = None
depends_on: str | None = None

# b'"no_onward_sharing":true' (exchange.service.sharing.NO_ONWARD) in hex, as each dialect writes
# bytes (tests/store/test_no_onward.py holds the two equal).
MARK_HEX = "226e6f5f6f6e776172645f73686172696e67223a74727565"

SQLITE_TRIGGER = """CREATE TRIGGER tr_bulletins_no_onward AFTER INSERT ON bulletins
WHEN instr(NEW.envelope, X'226e6f5f6f6e776172645f73686172696e67223a74727565') > 0 BEGIN
    INSERT OR IGNORE INTO no_onward (bulletin_id) VALUES (NEW.id);
END"""
SQLITE_BACKFILL = (
    "INSERT INTO no_onward (bulletin_id) SELECT id FROM bulletins"
    " WHERE instr(envelope, X'226e6f5f6f6e776172645f73686172696e67223a74727565') > 0"
)
POSTGRES_BACKFILL = (
    "INSERT INTO no_onward (bulletin_id) SELECT id FROM bulletins"
    " WHERE position('\\x226e6f5f6f6e776172645f73686172696e67223a74727565'::bytea in envelope) > 0"
)
POSTGRES_TRIGGER = (
    """CREATE FUNCTION exchange_bulletins_no_onward() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF position('\\x226e6f5f6f6e776172645f73686172696e67223a74727565'::bytea in NEW.envelope) > 0 THEN
        INSERT INTO no_onward (bulletin_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$""",
    """CREATE TRIGGER tr_bulletins_no_onward AFTER INSERT ON bulletins
    FOR EACH ROW EXECUTE FUNCTION exchange_bulletins_no_onward()""",
)


def upgrade() -> None:
    bind = op.get_bind()
    op.create_table("no_onward", sa.Column("bulletin_id", sa.String(64), primary_key=True))
    postgres = bind.dialect.name == "postgresql"
    bind.execute(sa.text(POSTGRES_BACKFILL if postgres else SQLITE_BACKFILL))
    for statement in POSTGRES_TRIGGER if postgres else (SQLITE_TRIGGER,):
        bind.execute(sa.text(statement))


def downgrade() -> None:
    """Drop the trigger and the table: 0015 searches each envelope for the mark again."""
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        bind.execute(sa.text("DROP TRIGGER tr_bulletins_no_onward ON bulletins"))
        bind.execute(sa.text("DROP FUNCTION exchange_bulletins_no_onward()"))
    else:
        bind.execute(sa.text("DROP TRIGGER tr_bulletins_no_onward"))
    op.drop_table("no_onward")
