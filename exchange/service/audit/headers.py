"""The signed header of a stored bulletin, for the audit trace: who wrote it, where, and which
nodes read it, checked now against the author's roster key (envelope v1 or v2).

A v1 envelope names its readers; a v2 one cites its channel epoch, whose record names them
(docs/protocol.md, 15). The content is never opened here.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from exchange.audit.keeper import as_bytes
from exchange.errors import BulletinUnverified, ExchangeError, NotFound
from exchange.protocol.envelope import bulletin_id, check_signature, parse_envelope
from exchange.protocol.envelope_v2 import bulletin_id_v2, check_signature_v2, parse_envelope_v2
from exchange.protocol.epoch import epoch_hash
from exchange.protocol.roster import Federation
from exchange.service.envelopes_v2 import stored_v2
from exchange.service.epochs import EpochBook
from exchange.store import Store, bulletins


@dataclass(frozen=True)
class StoredHeader:
    """What a trace shows of a bulletin's signed header."""

    channel: str
    author: str
    seq: int
    created: str
    tlp: str
    readers: list[str]


async def stored_header(store: Store, fed: Federation, epochs: EpochBook | None, bid: str) -> StoredHeader:
    """The header of bulletin `bid` as this node stores it, its signature checked now (a key since
    retired or a revoked author's still verifies a stored item, 6a.7); BulletinUnverified if the
    stored envelope no longer verifies or hashes to another id."""
    async with store.read() as conn:
        raw = await conn.scalar(sa.select(bulletins.c.envelope).where(bulletins.c.id == bid))
    if raw is None:
        raise NotFound(f"this node holds no bulletin {bid}")
    wire = as_bytes(raw)
    try:
        if stored_v2(wire):
            v2 = parse_envelope_v2(wire)
            check_signature_v2(v2, fed, stored=True)
            h2 = v2.header
            record = epochs.record(h2.channel, h2.epoch.n) if epochs is not None else None
            if record is None and epochs is not None and await epochs.refresh(h2.channel):  # another worker's
                record = epochs.record(h2.channel, h2.epoch.n)
            if record is None or epoch_hash(record) != h2.epoch.hash:
                raise BulletinUnverified(f"bulletin {bid}: this node holds no record of its epoch {h2.epoch.n}")
            same = bulletin_id_v2(h2) == bid
            header = StoredHeader(h2.channel, h2.author, h2.seq, h2.created, h2.handling.tlp, list(record.readers))
        else:
            v1 = parse_envelope(wire)
            check_signature(v1, fed, stored=True)
            h1 = v1.header
            same = bulletin_id(h1) == bid
            readers = [r.node for r in h1.recipients]
            header = StoredHeader(h1.channel, h1.author, h1.seq, h1.created, h1.handling.tlp, readers)
    except BulletinUnverified:
        raise
    except ExchangeError as exc:
        raise BulletinUnverified(
            f"bulletin {bid}: its stored envelope does not verify ({exc.detail[:120]}): it was changed"
        ) from exc
    if not same:
        raise BulletinUnverified(f"bulletin {bid}: its stored header hashes to another id: it was changed")
    return header
