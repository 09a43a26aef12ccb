"""Release 0.1.0's schema, exactly as its `metadata.create_all` made it.

A database that release 0.1.0 wrote has these tables but no version table; `exchange db upgrade`
checks its tables and columns and stamps it with this revision instead of running it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

TABLES = (
    "bulletins",
    "receipts",
    "outbox",
    "channel_events",
    "user_channels",
    "cursors",
    "users",
    "user_passwords",
    "console_sessions",
    "signin_failures",
    "user_reads",
    "audit_log",
    "audit_checkpoints",
    "audit_cosignatures",
    "audit_witnessed",
    "audit_split_views",
)


def upgrade() -> None:
    op.create_table(
        "bulletins",
        sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("author", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("state_pos", sa.Integer, nullable=False),
        sa.Column("tlp", sa.String(16), nullable=False),
        sa.Column("created", sa.String(32), nullable=False),
        sa.Column("stored_at", sa.String(32), nullable=False),
        sa.Column("envelope", sa.LargeBinary, nullable=False),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("content", sa.Text, nullable=True),
        sa.UniqueConstraint("author", "channel", "seq", name="uq_bulletin_stream"),
    )
    op.create_index("ix_bulletins_channel", "bulletins", ["channel", "n"])

    op.create_table(
        "receipts",
        sa.Column("bulletin_id", sa.String(64), primary_key=True),
        sa.Column("node", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), primary_key=True),
        sa.Column("at", sa.String(32), nullable=False),
        sa.Column("receipt", sa.Text, nullable=False),
    )

    op.create_table(
        "outbox",
        sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dest", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ref", sa.String(140), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("sent_at", sa.String(32), nullable=True),
        sa.UniqueConstraint("dest", "kind", "ref", name="uq_outbox_item"),
    )
    op.create_index("ix_outbox_pending", "outbox", ["dest", "state", "n"])

    op.create_table(
        "channel_events",
        sa.Column("channel", sa.String(64), primary_key=True),
        sa.Column("pos", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("event", sa.Text, nullable=False),
    )

    op.create_table(
        "user_channels",
        sa.Column("user", sa.String(64), primary_key=True),
        sa.Column("channel", sa.String(64), primary_key=True),
    )

    op.create_table(
        "cursors",
        sa.Column("peer", sa.String(64), primary_key=True),
        sa.Column("channel", sa.String(64), primary_key=True),
        sa.Column("cursor", sa.Integer, nullable=False),
    )

    op.create_table(
        "users",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created", sa.String(32), nullable=False),
    )

    op.create_table(
        "user_passwords",
        sa.Column("user", sa.String(64), primary_key=True),
        sa.Column("hash", sa.String(256), nullable=False),
        sa.Column("set_at", sa.String(32), nullable=False),
    )

    op.create_table(
        "console_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("user", sa.String(64), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("created", sa.String(32), nullable=False),
        sa.Column("expires", sa.String(32), nullable=False),
        sa.Column("last_seen", sa.String(32), nullable=False),
    )
    op.create_index("ix_console_sessions_user", "console_sessions", ["user"])

    op.create_table(
        "signin_failures",
        sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user", sa.String(64), nullable=False),
        sa.Column("address", sa.String(64), nullable=False),
        sa.Column("at", sa.String(32), nullable=False),
    )
    op.create_index("ix_signin_failures_user", "signin_failures", ["user", "at"])
    op.create_index("ix_signin_failures_address", "signin_failures", ["address", "at"])

    op.create_table(
        "user_reads",
        sa.Column("user", sa.String(64), primary_key=True),
        sa.Column("bulletin_id", sa.String(64), primary_key=True),
        sa.Column("at", sa.String(32), nullable=False),
    )

    op.create_table(
        "audit_log",
        sa.Column("idx", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("entry", sa.LargeBinary, nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary, nullable=False),
    )

    op.create_table(
        "audit_checkpoints",
        sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("root", sa.LargeBinary, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("frontier", sa.LargeBinary, nullable=False),
        sa.Column("at", sa.String(32), nullable=False),
    )

    op.create_table(
        "audit_cosignatures",
        sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("witness", sa.String(64), primary_key=True),
        sa.Column("line", sa.Text, nullable=False),
        sa.Column("at", sa.String(32), nullable=False),
    )

    op.create_table(
        "audit_witnessed",
        sa.Column("node", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("root", sa.LargeBinary, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("at", sa.String(32), nullable=False),
    )

    op.create_table(
        "audit_split_views",
        sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("seen", sa.Text, nullable=False),
        sa.Column("shown", sa.Text, nullable=False),
        sa.Column("shown_hash", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("at", sa.String(32), nullable=False),
        sa.UniqueConstraint("node", "shown_hash", name="uq_split_view"),
    )


def downgrade() -> None:
    """Drop every table: back to an empty database (export what you need first)."""
    for table in reversed(TABLES):
        op.drop_table(table)
