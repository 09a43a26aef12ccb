"""Disabled users: `users.disabled_at`, when an administrator disabled the user (`exchange users
disable`), NULL for a user that may sign in (exchange.service.users).

A new nullable column: upgrading changes no row, and every existing user stays enabled.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("disabled_at", sa.String(32), nullable=True))


def downgrade() -> None:
    """Drop the column: a disabled user is no longer marked so. Disabling replaced its token with
    one never shown and deleted its console password and sessions, so it still cannot sign in
    until an administrator gives it a new token (`exchange users token`) or password."""
    with op.batch_alter_table("users") as batch:
        batch.drop_column("disabled_at")
