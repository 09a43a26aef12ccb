"""Rows of the store as the application layer writes them: bulletins, receipts, cursors."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.crypto import canonical_json
from exchange.model import Bulletin, Envelope, EnvelopeHeader, Receipt
from exchange.protocol.envelope import BuiltEnvelope, envelope_bytes
from exchange.store import cursors


def bulletin_row(env: Envelope, bid: str, bulletin: Bulletin, now: str) -> dict[str, Any]:
    """A stored bulletin: its envelope as received, and its decrypted content for local readers."""
    return _bulletin_row(env.header, bid, envelope_bytes(env), bulletin.payload_bytes.decode(), now)


def posted_row(built: BuiltEnvelope, content: str, now: str) -> dict[str, Any]:
    """A bulletin this node wrote: the envelope bytes it built, and `content`, the text of the
    canonical payload it encrypted (`Bulletin.payload_bytes`, decoded)."""
    return _bulletin_row(built.header, built.id, built.wire, content, now)


def _bulletin_row(h: EnvelopeHeader, bid: str, wire: bytes | bytearray, content: str, now: str) -> dict[str, Any]:
    return {
        "id": bid,
        "channel": h.channel,
        "author": h.author,
        "seq": h.seq,
        "state_pos": h.state.pos,
        "tlp": h.handling.tlp,
        "created": h.created,
        "stored_at": now,
        "envelope": wire,
        # " a b c ": the recipient node ids, so catch-up pages are filtered in SQL
        "recipients": " " + " ".join(r.node for r in h.recipients) + " ",
        "content": content,
    }


def receipt_row(receipt: Receipt) -> dict[str, Any]:
    """A stored signed receipt, kept in its canonical form."""
    return {
        "bulletin_id": receipt.bulletin,
        "node": receipt.node,
        "status": receipt.status,
        "at": receipt.at,
        "receipt": canonical_json(receipt.model_dump(mode="json")).decode(),
    }


async def save_cursor(conn: AsyncConnection, peer: str, channel: str, position: int) -> None:
    """How far this node has pulled `channel` from `peer`, in the partner's storage order."""
    where = sa.and_(cursors.c.peer == peer, cursors.c.channel == channel)
    done = await conn.execute(sa.update(cursors).where(where).values(cursor=position))
    if done.rowcount == 0:
        await conn.execute(sa.insert(cursors).values(peer=peer, channel=channel, cursor=position))
