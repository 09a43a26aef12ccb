"""The outbox's unique key, `uq_outbox_item`, leads with the item's reference: (ref, dest, kind)
instead of (dest, kind, ref) (exchange.store.tables).

A post queues one row per reader, all with the bulletin's id as `ref`. Keyed by destination first,
those rows went to as many places of the key's index as the channel has readers, each in the
middle of that reader's run of random bulletin ids; keyed by the reference first, they go side by
side. In sqlite3 alone the key's share of queueing a row fell from about 5 to about 1.5 µs; as
the node queues them, about 14 to 8 µs a row, at 199 readers about 1.2 ms of the author's CPU per
bulletin (bench/outbox_rows.py, bench/README.md). The
statements that look a row up by its key name its reference (a receipt, a channel's bulletins,
an event), and those that read a destination's queue use `ix_outbox_queued`.

SQLite changes a table's constraint only by rebuilding the table (Alembic's batch mode: copy,
drop, rename), which copies what the outbox holds: the queues, and finished rows not yet pruned.
The two partial indexes are made again after it, with their predicates as revision 0013 made
them. The rows are unchanged; PostgreSQL changes the constraint in place.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision: str | None = "0014"
branch_labels: str | None = None
depends_on: str | None = None

QUEUED = sa.text("state = 'queued'")
FINISHED = sa.text("state <> 'queued'")


def _key(columns: list[str]) -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint("uq_outbox_item", "outbox", type_="unique")
        op.create_unique_constraint("uq_outbox_item", "outbox", columns)
        return
    # A rebuild keeps indexes, but not surely a partial one's predicate: they are made again after it.
    op.drop_index("ix_outbox_queued", table_name="outbox")
    op.drop_index("ix_outbox_finished", table_name="outbox")
    with op.batch_alter_table("outbox", recreate="always") as batch:
        batch.drop_constraint("uq_outbox_item", type_="unique")
        batch.create_unique_constraint("uq_outbox_item", columns)
    op.create_index("ix_outbox_queued", "outbox", ["dest", "n"], sqlite_where=QUEUED)
    op.create_index("ix_outbox_finished", "outbox", ["done_at"], sqlite_where=FINISHED)


def upgrade() -> None:
    _key(["ref", "dest", "kind"])


def downgrade() -> None:
    _key(["dest", "kind", "ref"])
