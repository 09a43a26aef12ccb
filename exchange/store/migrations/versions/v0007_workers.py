"""Workers: several node processes over one PostgreSQL database (exchange.store.workers).

- `outbox_leases`: which worker sends to a destination, and until when; a worker sends and
  records deliveries to a destination only while it holds that destination's lease.
- On PostgreSQL, triggers that tell every worker what another one committed (NOTIFY, delivered
  at commit): items queued for a destination (`exchange_outbox`, the destination), channel events
  (`exchange_channels`, the channel) and audit entries (`exchange_audit`). SQLite has one process
  per database and gets no triggers.

A new, empty table: upgrading changes no row.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

# (table, function, the NOTIFY channel, the payload as an SQL expression over NEW)
NOTIFIED = (
    ("outbox", "exchange_notify_outbox", "exchange_outbox", "NEW.dest"),
    ("channel_events", "exchange_notify_channels", "exchange_channels", "NEW.channel"),
    ("audit_log", "exchange_notify_audit", "exchange_audit", "''"),
)


def upgrade() -> None:
    op.create_table(
        "outbox_leases",
        sa.Column("dest", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, function, channel, payload in NOTIFIED:
        # Identical notifications of one transaction are delivered once: a group commit of a
        # thousand posts to one partner wakes the other workers once.
        op.execute(
            f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_notify('{channel}', {payload}); RETURN NULL; END $$"
        )
        op.execute(f"CREATE TRIGGER {function} AFTER INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {function}()")


def downgrade() -> None:
    """Drop the table and the triggers: leases are forgotten (a running worker takes them again)."""
    if op.get_bind().dialect.name == "postgresql":
        for table, function, _, _ in NOTIFIED:
            op.execute(f"DROP TRIGGER IF EXISTS {function} ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
    op.drop_table("outbox_leases")
