"""What a node does when the roster version it holds revokes a node (docs/operations.md, "Joining
and the roster ceremony"): what is queued for it is cancelled, each item audited and not retried,
and the channels this node owns drop it (the owner orders `remove`). What it signed before stays
valid; its TLS certificate is refused at the next handshake (the held version's pins). A channel
whose owner is revoked is taken over by its successor (docs/protocol.md, 7.5), which then removes
the other revoked members as any owner does."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit.events import SEND_REFUSED, SendRefused
from exchange.clock import timestamp
from exchange.model import NodeId
from exchange.protocol.rosterchain import TrustedRoster
from exchange.service.channels import ChannelBook
from exchange.store import AuditBuffer, Store
from exchange.store.tables import outbox

log = logging.getLogger("exchange.roster")


async def leave_revoked(me: NodeId, held: TrustedRoster, channels: ChannelBook, store: Store) -> int:
    """Apply the revocations of `held` here (idempotent): how many queued items were cancelled."""
    revoked = sorted(held.node_ids("revoked"))
    if not revoked:
        return 0
    reason = f"cancelled: revoked in roster version {held.version}"
    # Cancelled (and audited) before the removals, which would cancel a channel's items silently;
    # and after them, for the `remove` events queued to the revoked node itself.
    cancelled = await cancel_queued(store, revoked, reason)
    for state in channels.all():  # a channel whose owner is revoked: its successor takes it over (7.5)
        if channels.successor_of(state) == me:
            try:
                await channels.hand_over(state.channel)
                log.warning("%s took channel %s over from its revoked owner %s", me, state.channel, state.owner)
            except Exception:
                log.exception("%s was not handed over from %s", state.channel, state.owner)
    for state in channels.all():
        if state.owner != me or state.closed:
            continue
        for node in sorted(set(revoked) & (set(state.members) | set(state.invited))):
            try:
                await channels.change(None, state.channel, {"type": "remove", "node": node})
            except Exception:
                log.exception("%s was not removed from %s", node, state.channel)
    cancelled += await cancel_queued(store, revoked, reason)
    if cancelled:
        log.warning("%d outbox items for revoked nodes %s cancelled", cancelled, ", ".join(revoked))
    return cancelled


async def cancel_queued(store: Store, nodes: Sequence[str], reason: str) -> int:
    """Cancel what is queued for `nodes`, one audit entry per item; how many."""
    pending = sa.and_(outbox.c.dest.in_(list(nodes)), outbox.c.state == "queued")

    async def job(conn: AsyncConnection, audit: AuditBuffer) -> int:
        rows = (await conn.execute(sa.select(outbox.c.dest, outbox.c.kind, outbox.c.ref).where(pending))).all()
        if rows:
            await conn.execute(sa.update(outbox).where(pending).values(state="cancelled", detail=reason))
        at = timestamp()
        for row in rows:
            entry: SendRefused = {
                "event": SEND_REFUSED,
                "at": at,
                "kind": str(row.kind),
                "ref": str(row.ref),
                "to": str(row.dest),
                "reason": reason,
            }
            audit.add(entry)
        return len(rows)

    cancelled: int = await store.write(job)
    return cancelled


__all__ = ["cancel_queued", "leave_revoked"]
