"""Receipts a partner pushes on its own (docs/protocol.md 11.2, `receipts`): 'opened', or
'received' for what it pulled in catch-up rather than was pushed. Checked, then stored with the
outbox items they acknowledge marked delivered."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit import events as ev
from exchange.clock import timestamp
from exchange.errors import EnvelopeRejected, ExchangeError, InvalidEnvelope
from exchange.model import NodeId, Receipt
from exchange.protocol.receipt import parse_receipt, signatures_needed, verify_receipts
from exchange.protocol.roster import Federation
from exchange.service.outbox import Outbox
from exchange.service.records import receipt_row
from exchange.store import AuditBuffer, Store, bulletins, outbox, receipts


class PushedReceipts:
    """This node, as an author, taking its partners' pushed receipts."""

    def __init__(self, me: NodeId, fed: Federation, store: Store, out: Outbox) -> None:
        self.me = me
        self.fed = fed
        self._store = store
        self.outbox = out

    async def check(self, peer: str, raws: Sequence[Any]) -> list[Receipt]:
        """Receipts a partner sends on its own ('opened', or 'received' for what it pulled), checked:
        each signed by the partner, for a bulletin this node wrote and the partner was a recipient
        of. Every receipt is checked; of those for one bulletin and status, the first is kept.
        Refused: EnvelopeRejected."""
        try:
            every = [parse_receipt(raw) for raw in raws]
            if any(r.node != peer for r in every):
                raise InvalidEnvelope("a node may only send its own receipts")
            # A repeat costs no signature more: one per distinct statement (`signatures_needed`).
            if signatures_needed(every) > 1:  # Ed25519 releases the GIL: the loop serves others meanwhile
                await asyncio.to_thread(verify_receipts, every, self.fed)
            else:
                verify_receipts(every, self.fed)
            firsts: dict[tuple[str, str], Receipt] = {}
            for receipt in every:
                firsts.setdefault((receipt.bulletin, receipt.status), receipt)
            got = list(firsts.values())  # the first of each (bulletin, status), in the order sent
            ids = [r.bulletin for r in got]
            async with self._store.read() as conn:
                # By id alone, author compared here: with `author = me` in SQL, SQLite (no
                # statistics) prefers the stream index and reads every bulletin this node wrote.
                query = sa.select(bulletins.c.id, bulletins.c.author, bulletins.c.recipients)
                rows = (await conn.execute(query.where(bulletins.c.id.in_(ids)))).all()
            mine = {r.id: r.recipients for r in rows if r.author == self.me}
            if set(ids) - set(mine):
                raise InvalidEnvelope("a receipt names a bulletin this node did not author")
            if any(f" {peer} " not in mine[bid] for bid in ids):
                raise InvalidEnvelope("a receipt names a bulletin its signer was not a recipient of")
        except (ValueError, ExchangeError) as exc:
            detail = exc.detail if isinstance(exc, ExchangeError) else str(exc)[:300]
            raise EnvelopeRejected([{"item": "receipt", "type": type(exc).__name__, "detail": detail}]) from exc
        return got

    async def store(self, peer: str, got: Sequence[Receipt]) -> None:
        """Store checked receipts (`check`) not held yet, mark the items they
        acknowledge delivered (counted in the partner's delivery status, as the sender counts
        those it pushed), and audit them."""

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> int:
            queued: list[int] = []
            ids = [r.bulletin for r in got]
            have = {
                (r.bulletin_id, r.status)
                for r in await conn.execute(
                    sa.select(receipts.c.bulletin_id, receipts.c.status).where(
                        receipts.c.node == peer, receipts.c.bulletin_id.in_(ids)
                    )
                )
            }
            fresh = [r for r in got if (r.bulletin, r.status) not in have]
            if fresh:
                await conn.execute(sa.insert(receipts), [receipt_row(r) for r in fresh])
            received = [r.bulletin for r in got if r.status == "received"]
            if received:
                # The rows found by their unique key, the state compared here: with `state =
                # 'queued'` in SQL, SQLite (no statistics) may seek ix_outbox_queued and read every
                # item still queued for the peer, per batch (a catch-up of N: N²/2000 rows).
                found = await conn.execute(
                    sa.select(outbox.c.n, outbox.c.state).where(
                        outbox.c.dest == peer, outbox.c.kind == "envelope", outbox.c.ref.in_(received)
                    )
                )
                if queued := [r.n for r in found if r.state == "queued"]:
                    # By number alone (the state in the WHERE could pick a state index the same
                    # way); a row another worker finished meanwhile keeps its state.
                    still = sa.case((outbox.c.state == "queued", "delivered"), else_=outbox.c.state)
                    await conn.execute(sa.update(outbox).where(outbox.c.n.in_(queued)).values(state=still))
            for r in fresh:
                if r.status == "received":
                    audit.add(
                        ev.BulletinDeliveredTo(
                            event=ev.BULLETIN_DELIVERED_TO, at=timestamp(), bulletin=r.bulletin, to={peer: r.at}
                        )
                    )
                else:
                    audit.add(
                        ev.BulletinOpenedBy(
                            event=ev.BULLETIN_OPENED_BY, at=timestamp(), bulletin=r.bulletin, to=peer, receipt_at=r.at
                        )
                    )
            return len(queued)

        delivered = await self._store.write(job)
        if delivered and peer in self.outbox.senders:
            self.outbox.senders[peer].status.delivered += delivered


__all__ = ["PushedReceipts"]
