"""The outbox's two state indexes become partial: `ix_outbox_queued` (dest, n) holds the queued rows
only, `ix_outbox_finished` (done_at) the finished ones only (exchange.store.tables).

Before, `ix_outbox_pending` (dest, state, n) and `ix_outbox_done` (state, done_at) held every row, so
each item queued entered both, and each one delivered was moved within both: at 199 readers about
1.2 ms of the author's CPU per bulletin on SQLite (bench/README.md, "Partial outbox indexes"). Now an
item queued enters one, and one delivered leaves that one for the other; what waits for the
retention's pass no longer lengthens the queues' index. The rows are unchanged.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision: str | None = "0012"
branch_labels: str | None = None
depends_on: str | None = None

QUEUED = sa.text("state = 'queued'")
FINISHED = sa.text("state <> 'queued'")


def upgrade() -> None:
    op.drop_index("ix_outbox_pending", table_name="outbox")
    op.drop_index("ix_outbox_done", table_name="outbox")
    op.create_index("ix_outbox_queued", "outbox", ["dest", "n"], sqlite_where=QUEUED, postgresql_where=QUEUED)
    op.create_index("ix_outbox_finished", "outbox", ["done_at"], sqlite_where=FINISHED, postgresql_where=FINISHED)


def downgrade() -> None:
    op.drop_index("ix_outbox_finished", table_name="outbox")
    op.drop_index("ix_outbox_queued", table_name="outbox")
    op.create_index("ix_outbox_pending", "outbox", ["dest", "state", "n"])
    op.create_index("ix_outbox_done", "outbox", ["state", "done_at"])
