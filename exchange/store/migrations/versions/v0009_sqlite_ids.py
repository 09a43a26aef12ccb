"""SQLite: ids that people and the audit log see are never given twice (AUTOINCREMENT).

An INTEGER PRIMARY KEY without AUTOINCREMENT gives a new row one more than the highest id present,
so the newest row's id, once that row is deleted, went to the next: a removed webhook's id to the
next webhook registered, and the audit log's "webhook 5" then named two. SQLite adds AUTOINCREMENT
only by rebuilding a table (Alembic's batch mode: copy, drop, rename; columns, defaults, keys,
unique constraints and indexes as they were, every row with its id). Rebuilt:

- `webhooks`: ids shown to administrators and written in the audit log; the next id also goes past
  the highest the audit log names, since a webhook removed before this upgrade left no row;
- `epoch_grants`, `signin_failures`: never shown, small tables; rebuilt so that no table whose
  rows are deleted hands out an id twice.

Not rebuilt: `outbox`. Its `n` is shown to no one and written in no audit entry, and the rows
deleted are finished ones, which no send refers to any more; a rebuild would copy the whole queue
and a week of finished rows on upgrade, and AUTOINCREMENT costs the hottest insert of the node (one
row per recipient of each bulletin) a write of `sqlite_sequence`. `bulletins`, `audit_split_views`:
never deleted. PostgreSQL's serial columns never give an id twice: nothing changes there.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None

TABLES = ("webhooks", "epoch_grants", "signin_failures")
ROWS = 5000  # audit entries read per batch while looking for webhook ids


def _highest_webhook_named(bind: sa.Connection) -> int:
    """The highest webhook id in the audit log (0: none). Only an entry's own key `"webhook":`
    matches the bytes looked for: inside a JSON string a quote is escaped."""
    highest, last = 0, -1
    while True:
        rows = bind.execute(
            sa.text(
                "SELECT idx, entry FROM audit_log WHERE idx > :last AND instr(entry, :key) > 0 ORDER BY idx LIMIT :rows"
            ),
            {"last": last, "key": b'"webhook":', "rows": ROWS},
        ).all()
        if not rows:
            return highest
        for _, entry in rows:
            try:
                named = json.loads(bytes(entry)).get("webhook")
            except (ValueError, AttributeError):
                continue
            if isinstance(named, int) and not isinstance(named, bool):
                highest = max(highest, named)
        last = int(rows[-1][0])


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    for table in TABLES:
        with op.batch_alter_table(table, recreate="always", table_kwargs={"sqlite_autoincrement": True}):
            pass
    # The rows copied set each table's sequence to its highest id; a webhook removed when it was
    # the newest is known only to the audit log.
    named = _highest_webhook_named(bind)
    if named > int(bind.scalar(sa.text("SELECT coalesce(max(id), 0) FROM webhooks")) or 0):
        bind.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'webhooks'"))
        bind.execute(sa.text("INSERT INTO sqlite_sequence (name, seq) VALUES ('webhooks', :seq)"), {"seq": named})


def downgrade() -> None:
    """Rebuild the tables without AUTOINCREMENT (SQLite): ids of deleted rows may be given again."""
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:
        with op.batch_alter_table(table, recreate="always"):
            pass
