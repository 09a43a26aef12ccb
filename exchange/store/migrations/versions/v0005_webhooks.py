"""Webhooks: an administrator's URL per channel that each new bulletin's metadata is POSTed to,
signed with the webhook's secret, from a cursor that moves only on success (exchange.service.webhooks).

A new, empty table: upgrading changes no row.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("secret", sa.String(64), nullable=False),
        sa.Column("cursor", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_try_at", sa.String(32), nullable=True),
        sa.Column("last_error", sa.String(300), nullable=True),
        sa.Column("delivered", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("ix_webhooks_channel", "webhooks", ["channel"])


def downgrade() -> None:
    """Drop the table: registered webhooks are forgotten (their receivers get nothing more)."""
    op.drop_index("ix_webhooks_channel", table_name="webhooks")
    op.drop_table("webhooks")
