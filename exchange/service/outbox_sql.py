"""The outbox's statements that are not the senders' gathered reads and writes
(exchange.service.outbox): the heads of many queues in one statement, a partner's batch
statement kept, an item rejected."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit import events as ev
from exchange.clock import timestamp
from exchange.protocol.receipt import HeldBatch
from exchange.service.outbox_refs import OutKind, OutRef
from exchange.store import AuditBuffer, insert_rows, outbox, receipt_batches

# Queues read in one statement (SQLite allows 500 SELECTs in a compound one).
READS_PER_STATEMENT = 200
# A queued item as its outbox row names it: to whom, its number, kind and reference.
Queued = tuple[str, int, OutKind, OutRef]


@functools.lru_cache(maxsize=READS_PER_STATEMENT)
def queue_heads(count: int) -> sa.TextualSelect:
    """The heads of `count` queues in one statement: for queue i, at most :l{i} items for :d{i}
    queued after item :a{i}, each a seek on ix_outbox_queued however long a dead partner's
    queue is. Written as text, made once per count: built with SQLAlchemy's constructs, the 200
    subqueries cost more to build and to key for the compiled cache than to run."""
    heads = " UNION ALL ".join(
        f"SELECT * FROM (SELECT {i} AS ask, n, kind, ref FROM outbox"  # noqa: S608 (i is an int; values are bound)
        f" WHERE dest = :d{i} AND state = 'queued' AND n > :a{i} ORDER BY n LIMIT :l{i}) AS q{i}"
        for i in range(count)
    )
    return sa.text(heads).columns(sa.column("ask", sa.Integer), outbox.c.n, outbox.c.kind, outbox.c.ref)


async def kept_batches(conn: AsyncConnection, held: Sequence[HeldBatch]) -> dict[HeldBatch, int]:
    """Store partners' batch statements in one executemany; each one's row id. The ids are given
    here, from one past the highest stored, rather than drawn one INSERT ... RETURNING at a time (at
    200 readers that was one statement per reader per push): every write transaction holds the
    log's lock (PostgreSQL, exchange.store.workers) or SQLite's write lock, so no other writer
    takes them meanwhile, and this is the one place that inserts into receipt_batches."""
    if not held:
        return {}
    top = int(await conn.scalar(sa.select(sa.func.max(receipt_batches.c.id))) or 0)
    ids = {batch: top + i for i, batch in enumerate(held, 1)}
    rows = [
        {
            "id": ids[b],
            "node": b.node,
            "statement": b.statement,
            "signature": b.signature,
            "bulletins": ",".join(b.bulletins),
        }
        for b in held
    ]
    await insert_rows(conn, receipt_batches, rows)
    return ids


async def rejected(conn: AsyncConnection, audit: AuditBuffer, item: Queued, detail: str) -> None:
    """Mark an item rejected, with `detail`, and audit it; an item no longer queued keeps its state, unaudited."""
    dest, n, kind, ref = item
    still = sa.and_(outbox.c.n == n, outbox.c.state == "queued")
    if (await conn.execute(sa.update(outbox).where(still).values(state="rejected", detail=detail))).rowcount:
        audit.add(
            ev.SendRefused(event=ev.SEND_REFUSED, at=timestamp(), kind=kind, ref=ref.encode(), to=dest, reason=detail)
        )
