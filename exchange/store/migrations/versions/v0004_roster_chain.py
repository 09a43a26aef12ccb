"""The roster v2 versions this node accepted (exchange.service.federation, docs/protocol.md 6a).

A new, empty table: upgrading a revision-0003 database changes no row of it. Until a roster v2
version is imported the node runs on its v1 roster file, as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "roster_versions",
        sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("signed", sa.LargeBinary, nullable=False),
        sa.Column("installed_at", sa.String(32), nullable=False),
        sa.UniqueConstraint("hash", name="uq_roster_versions_hash"),
    )


def downgrade() -> None:
    """Drop the table: the node forgets the roster v2 versions it held and runs on its v1 roster
    file again; a later upgrade starts from an empty chain (import the current version again)."""
    op.drop_table("roster_versions")
