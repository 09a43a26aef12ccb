"""C2SP tlog-witness: the latest checkpoint of each foreign log this node co-signs as a witness
(exchange.service.audit.tlog_witnessing; docs/audit.md, section 4).

A new, empty table: upgrading changes no row.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "tlog_witnessed",
        sa.Column("origin", sa.String(255), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("root", sa.LargeBinary, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("at", sa.String(32), nullable=False),
    )


def downgrade() -> None:
    """Drop the table: the node forgets what it co-signed of foreign logs and trusts the next
    checkpoint of each on first use again."""
    op.drop_table("tlog_witnessed")
