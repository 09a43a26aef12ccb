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
from exchange.protocol.roster import Federation
from exchange.store import receipts

log = logging.getLogger("exchange.receipts")


@dataclass(frozen=True)
class HeldRow:
    node: str
    status: str
    at: str
    receipt: str  # the signed receipt as stored (JSON)


async def checked_receipts(conn: AsyncConnection, fed: Federation, bid: str) -> list[HeldRow]:
    """The receipt rows of `bid` whose signed receipts verify, oldest first."""
    query = sa.select(receipts.c.node, receipts.c.status, receipts.c.at, receipts.c.receipt)
    rows = (await conn.execute(query.where(receipts.c.bulletin_id == bid).order_by(receipts.c.at))).all()
    parsed: list[tuple[HeldRow, Receipt | None]] = []
    for row in rows:
        held = HeldRow(row.node, row.status, row.at, str(row.receipt))
        try:
            receipt = parse_receipt(strict_loads(row.receipt))
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


def _verifies(receipt: Receipt, fed: Federation) -> bool:
    try:
        verify_receipts([receipt], fed, stored=True)
    except ExchangeError:
        return False
    return True
