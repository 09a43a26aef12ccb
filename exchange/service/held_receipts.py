"""The signed receipts this node holds for a bulletin, checked when they are shown.

A receipt row's columns (node, status, time) are what pages show; the claim behind them is the
signed receipt stored with them. So a row counts only if its stored receipt parses, names the
same bulletin, node, status and time, and verifies (as one this node took in earlier: `stored`).
A row that does not is left out and logged: someone wrote to the database by hand.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.crypto import strict_loads
from exchange.errors import ExchangeError
from exchange.model import Receipt
from exchange.protocol.receipt import parse_receipt, verify_receipts
from exchange.protocol.receipt_batches import texts_of_batches
from exchange.protocol.roster import Federation
from exchange.store import receipt_batches, receipts

log = logging.getLogger("exchange.receipts")


@dataclass(frozen=True)
class HeldRow:
    node: str
    status: str
    at: str
    receipt: str  # the signed receipt as stored (JSON)


async def checked_receipts(conn: AsyncConnection, fed: Federation, bid: str) -> list[HeldRow]:
    """The receipt rows of `bid` whose signed receipts verify, oldest first."""
    query = sa.select(
        receipts.c.node, receipts.c.status, receipts.c.at, receipts.c.receipt, receipts.c.batch, receipts.c.idx
    )
    rows = (await conn.execute(query.where(receipts.c.bulletin_id == bid).order_by(receipts.c.at))).all()
    made = await _batch_texts(conn, [(row.batch, row.idx) for row in rows if row.batch is not None])
    parsed: list[tuple[HeldRow, Receipt | None]] = []
    for row in rows:
        # a leaf of a batch taken in the batch form: its text made from the batch (10.4)
        text = str(row.receipt) if row.batch is None else made.get((row.batch, row.idx), "")
        held = HeldRow(row.node, row.status, row.at, text)
        try:
            receipt = parse_receipt(strict_loads(text))
        except (ValueError, ExchangeError):
            receipt = None
        if receipt is not None and (receipt.bulletin, receipt.node, receipt.status, receipt.at) != (
            bid,
            row.node,
            row.status,
            row.at,
        ):
            receipt = None
        parsed.append((held, receipt))
    signed = [r for _, r in parsed if r is not None]
    try:  # the usual case: all of them verify, a batch's receipts with one signature
        await asyncio.to_thread(verify_receipts, signed, fed, stored=True)
        good = {id(r) for r in signed}
    except ExchangeError:
        good = {id(r) for r in signed if _verifies(r, fed)}
    out = [held for held, receipt in parsed if receipt is not None and id(receipt) in good]
    if len(out) < len(rows):
        log.warning("bulletin %s: %d held receipts do not verify and are not shown", bid, len(rows) - len(out))
    return out


async def _batch_texts(conn: AsyncConnection, leaves: list[tuple[int, int]]) -> dict[tuple[int, int], str]:
    if not leaves:
        return {}
    ids = sorted({batch for batch, _ in leaves})
    query = sa.select(receipt_batches).where(receipt_batches.c.id.in_(ids))
    batches = {r.id: (str(r.statement), str(r.signature), str(r.bulletins)) for r in await conn.execute(query)}
    return texts_of_batches(batches, leaves)


def _verifies(receipt: Receipt, fed: Federation) -> bool:
    try:
        verify_receipts([receipt], fed, stored=True)
    except ExchangeError:
        return False
    return True
