"""The outbox's statements that are not the senders' gathered reads and writes
(exchange.service.outbox): the heads of many queues in one statement, a partner's batch
statement kept, an item rejected."""

from __future__ import annotations

import functools

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit import events as ev
from exchange.clock import timestamp
from exchange.protocol.receipt import HeldBatch
from exchange.service.outbox_refs import OutKind, OutRef
from exchange.store import AuditBuffer, outbox, receipt_batches

# Queues read in one statement (SQLite allows 500 SELECTs in a compound one).
READS_PER_STATEMENT = 200
# A queued item as its outbox row names it: to whom, its number, kind and reference.
Queued = tuple[str, int, OutKind, OutRef]


@functools.lru_cache(maxsize=READS_PER_STATEMENT)
def queue_heads(count: int) -> sa.TextualSelect:
    """The heads of `count` queues in one statement: for queue i, at most :l{i} items for :d{i}
    queued after item :a{i}, each a seek on ix_outbox_pending however long a dead partner's
    queue is. Written as text, made once per count: built with SQLAlchemy's constructs, the 200
    subqueries cost more to build and to key for the compiled cache than to run."""
    heads = " UNION ALL ".join(
        f"SELECT * FROM (SELECT {i} AS ask, n, kind, ref FROM outbox"  # noqa: S608 (i is an int; values are bound)
        f" WHERE dest = :d{i} AND state = 'queued' AND n > :a{i} ORDER BY n LIMIT :l{i}) AS q{i}"
        for i in range(count)
    )
    return sa.text(heads).columns(sa.column("ask", sa.Integer), outbox.c.n, outbox.c.kind, outbox.c.ref)


async def kept_batch(conn: AsyncConnection, held: HeldBatch) -> int:
    """Store a partner's batch statement; its row id."""
    row = {"node": held.node, "statement": held.statement, "signature": held.signature}
    kept = sa.insert(receipt_batches).values(**row, bulletins=",".join(held.bulletins))
    return int((await conn.execute(kept.returning(receipt_batches.c.id))).scalar_one())


async def rejected(conn: AsyncConnection, audit: AuditBuffer, item: Queued, detail: str) -> None:
    """Mark an item rejected, with `detail`, and audit it; an item no longer queued keeps its state, unaudited."""
    dest, n, kind, ref = item
    still = sa.and_(outbox.c.n == n, outbox.c.state == "queued")
    if (await conn.execute(sa.update(outbox).where(still).values(state="rejected", detail=detail))).rowcount:
        audit.add(
            ev.SendRefused(event=ev.SEND_REFUSED, at=timestamp(), kind=kind, ref=ref.encode(), to=dest, reason=detail)
        )
