"""Receipts taken in the batch form (docs/protocol.md 10.4) are kept as one row per batch
statement (`receipt_batches`) and, per bulletin, its batch and leaf index (`receipts.batch`,
`receipts.idx`) with an empty `receipt`: the text is made when the receipt is shown, the same
bytes as the full form gives.

A new table and two nullable columns: upgrading changes no row, and every receipt stored before
keeps its text.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from exchange.protocol.receipt_batches import texts_of_batches

revision = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "receipt_batches",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("statement", sa.Text, nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("bulletins", sa.Text, nullable=False),
    )
    op.add_column("receipts", sa.Column("batch", sa.Integer, nullable=True))
    op.add_column("receipts", sa.Column("idx", sa.Integer, nullable=True))


def downgrade() -> None:
    """Write each batch receipt's text into its row, then drop the columns and the table: the
    receipts stay, in full, as release 0010 keeps them."""
    bind = op.get_bind()
    batches = {
        row.id: (row.statement, row.signature, row.bulletins)
        for row in bind.execute(sa.text("SELECT id, statement, signature, bulletins FROM receipt_batches"))
    }
    rows = bind.execute(
        sa.text("SELECT bulletin_id, node, status, batch, idx FROM receipts WHERE batch IS NOT NULL")
    ).all()
    made = texts_of_batches(batches, [(row.batch, row.idx) for row in rows])
    for row in rows:
        bind.execute(
            sa.text("UPDATE receipts SET receipt = :text WHERE bulletin_id = :b AND node = :n AND status = :s"),
            {"text": made.get((row.batch, row.idx), ""), "b": row.bulletin_id, "n": row.node, "s": row.status},
        )
    with op.batch_alter_table("receipts") as batch:
        batch.drop_column("idx")
        batch.drop_column("batch")
    op.drop_table("receipt_batches")
