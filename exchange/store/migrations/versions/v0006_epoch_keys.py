"""Channel epoch keys (docs/protocol.md, 15; exchange.service.epochs): what a node keeps of envelope v2.

- `channel_epochs`: every owner-signed epoch record the node accepted, by channel and number, as
  received (JCS); it serves them to members that missed an epoch change (catch-up from any member);
- `epoch_grants`: every history grant it accepted or made, which it serves to the grantee;
- `epoch_keys`: the epoch keys this node opened (from its own wrap, or a grant), so that stored v2
  bulletins stay readable after its own encryption key changes;
- `epoch_support`: each partner's signed announcement that it takes v2 envelopes, and with which
  wrap key (15.12), as fetched.

New, empty tables: upgrading changes no row.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "channel_epochs",
        sa.Column("channel", sa.String(64), primary_key=True),
        sa.Column("n", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("state_pos", sa.Integer, nullable=False),
        sa.Column("record", sa.LargeBinary, nullable=False),
        sa.Column("stored_at", sa.String(32), nullable=False),
        sa.UniqueConstraint("hash", name="uq_channel_epochs_hash"),
    )
    op.create_table(
        "epoch_grants",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("state_pos", sa.Integer, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("grant", sa.LargeBinary, nullable=False),
        sa.Column("stored_at", sa.String(32), nullable=False),
        sa.UniqueConstraint("hash", name="uq_epoch_grants_hash"),
    )
    op.create_index("ix_epoch_grants_node", "epoch_grants", ["channel", "node"])
    op.create_table(
        "epoch_keys",
        sa.Column("channel", sa.String(64), primary_key=True),
        sa.Column("n", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("key", sa.LargeBinary, nullable=False),
        sa.Column("via", sa.String(8), nullable=False),
    )
    op.create_table(
        "epoch_support",
        sa.Column("node", sa.String(64), primary_key=True),
        sa.Column("announcement", sa.LargeBinary, nullable=False),
        sa.Column("fetched_at", sa.String(32), nullable=False),
    )


def downgrade() -> None:
    """Drop the tables: a node of release 0005 reads no v2 envelope, and forgets its epoch keys."""
    op.drop_table("epoch_support")
    op.drop_table("epoch_keys")
    op.drop_index("ix_epoch_grants_node", table_name="epoch_grants")
    op.drop_table("epoch_grants")
    op.drop_table("channel_epochs")
