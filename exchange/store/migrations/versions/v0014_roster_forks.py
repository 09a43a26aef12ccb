"""The roster_forks table: roster versions a node found signed twice by the authority, with the
other version as evidence (exchange.service.roster_forks, docs/protocol.md 6a.11).

A new, empty table: upgrading a revision-0013 database changes no row.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision: str | None = "0013"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "roster_forks",
        sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("held_hash", sa.String(64), nullable=False),
        sa.Column("other_hash", sa.String(64), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("seen_at", sa.String(32), nullable=False),
        sa.Column("other", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    """Drop the table: the forks recorded are forgotten (their `roster.refused` audit entries stay)."""
    op.drop_table("roster_forks")
