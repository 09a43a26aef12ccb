"""Revision 0011 (`receipt_batches`, `receipts.batch` and `receipts.idx`) on a revision-0010 database
holding release 0.1.0's data, on SQLite and PostgreSQL: the upgrade changes no row and every receipt
keeps its text; the downgrade writes the text of each receipt kept as a batch leaf into its row,
byte for byte the receipt the full form carries, and gives back 0010's tables.
"""

from __future__ import annotations

import hashlib

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from exchange.crypto import SigningKey, canonical_json
from exchange.model import NodeId
from exchange.protocol.receipt import make_receipts, receipt_json, statement
from exchange.store import metadata, schema
from tests.store.test_migrations import Deployed, deployed, snapshot, structure
from tests.store.test_v0002_idempotency_keys import at_revision
from tests.store.test_v0003_flat_store import query

__all__ = ["deployed"]  # the fixture, shared with test_migrations


async def test_upgrading_a_0010_database_keeps_every_receipt_and_downgrading_writes_batch_texts(
    deployed: Deployed,
) -> None:
    await at_revision(deployed.url, schema.FIRST, stamp=True)  # a 0.1.0 database after its adoption
    await at_revision(deployed.url, "0010", up=True)
    before, shape = await snapshot(deployed.url), await structure(deployed.url)
    assert before.pop("alembic_version") == [("0010",)]
    assert before["receipts"], "the fixture holds receipts"

    await at_revision(deployed.url, "0011", up=True)
    after = await snapshot(deployed.url)
    assert after.pop("alembic_version") == [("0011",)]
    assert after.pop("receipts") == [(*row, None, None) for row in before.pop("receipts")]  # text kept
    assert after.pop("receipt_batches") == []
    assert after == before
    engine = create_async_engine(deployed.url)
    async with engine.connect() as conn:
        diffs = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
    await engine.dispose()
    assert not [d for d in diffs if "receipt" in repr(d)]  # what tables.py says

    # A partner's batch of two, kept as the batch form keeps it.
    bids = [hashlib.sha256(f"v0011/{i}".encode()).hexdigest() for i in range(2)]
    made = make_receipts(bids, NodeId("ke-customs"), "received", "2026-12-03T18:00:00.000Z", SigningKey.generate())
    st = canonical_json(statement(made[0])).decode()
    await query(
        deployed.url,
        "INSERT INTO receipt_batches (id, node, statement, signature, bulletins) "
        "VALUES (7, 'ke-customs', :st, :sig, :b)",
        st=st,
        sig=made[0].signature,
        b=",".join(bids),
    )
    for i, receipt in enumerate(made):
        await query(
            deployed.url,
            "INSERT INTO receipts (bulletin_id, node, status, at, receipt, batch, idx) "
            "VALUES (:b, 'ke-customs', 'received', :at, '', 7, :i)",
            b=receipt.bulletin,
            at=receipt.at,
            i=i,
        )

    await at_revision(deployed.url, "0010")
    assert await structure(deployed.url) == shape
    for receipt in made:
        got = await query(deployed.url, "SELECT receipt FROM receipts WHERE bulletin_id = :b", b=receipt.bulletin)
        assert got == [(receipt_json(receipt),)]
