"""What a node does when the roster version it holds revokes or suspends a node (docs/operations.md,
"Joining and the roster ceremony"; docs/protocol.md, 6a.7): what is queued for it is cancelled,
each item audited and not retried, and the channels this node owns drop it (the owner orders
`remove`); a suspended node's channel events stay queued, so that if it is reactivated it learns
it was removed, and each owner invites it again. What it signed before
stays valid; its TLS certificate is refused at the next handshake (the held version's pins). A channel
whose owner is revoked is taken over by its successor (docs/protocol.md, 7.5), which then removes
the other revoked members as any owner does."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit.events import SEND_REFUSED, SendRefused
from exchange.clock import timestamp
from exchange.model import NodeId
from exchange.protocol.rosterchain import TrustedRoster
from exchange.service.channels import ChannelBook
from exchange.store import AuditBuffer, Store
from exchange.store.tables import OUTBOX_QUEUED, outbox

log = logging.getLogger("exchange.roster")


async def leave_departed(me: NodeId, held: TrustedRoster, channels: ChannelBook, store: Store) -> int:
    """Apply the revocations and suspensions of `held` here (idempotent): how many queued items
    were cancelled. A channel whose owner is only suspended waits (docs/protocol.md, 7.5)."""
    revoked = sorted(held.node_ids("revoked"))
    departed = sorted({*revoked, *held.node_ids("suspended")} - {me})
    if not departed:
        return 0
    reason = f"cancelled: {{}} in roster version {held.version}"
    reasons: dict[str, str] = {n: reason.format("revoked" if n in revoked else "suspended") for n in departed}
    # Cancelled (and audited) before the removals, which would cancel a channel's items silently;
    # and after them, for the `remove` events queued to a revoked node itself. A suspended node's
    # channel events stay queued: if it is reactivated, they reach it, and it knows it was removed.
    suspended = frozenset(departed) - frozenset(revoked)
    cancelled = await cancel_queued(store, reasons, events_kept=suspended)
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
        for node in sorted(set(departed) & (set(state.members) | set(state.invited))):
            try:
                await channels.change(None, state.channel, {"type": "remove", "node": node})
            except Exception:
                log.exception("%s was not removed from %s", node, state.channel)
    cancelled += await cancel_queued(store, reasons, events_kept=suspended)
    if cancelled:
        log.warning("%d outbox items for departed nodes %s cancelled", cancelled, ", ".join(departed))
    return cancelled


async def cancel_queued(store: Store, reasons: Mapping[str, str], *, events_kept: frozenset[str] = frozenset()) -> int:
    """Cancel what is queued for each node of `reasons`, with its reason, one audit entry per
    item, but the channel events queued for the nodes of `events_kept`; how many."""
    kept = sa.and_(outbox.c.dest.in_(list(events_kept)), outbox.c.kind == "event")
    pending = sa.and_(outbox.c.dest.in_(list(reasons)), OUTBOX_QUEUED, sa.not_(kept))

    async def job(conn: AsyncConnection, audit: AuditBuffer) -> int:
        rows = (await conn.execute(sa.select(outbox.c.dest, outbox.c.kind, outbox.c.ref).where(pending))).all()
        if rows:
            for node, reason in reasons.items():
                mine = sa.and_(pending, outbox.c.dest == node)
                await conn.execute(sa.update(outbox).where(mine).values(state="cancelled", detail=reason))
        at = timestamp()
        for row in rows:
            entry: SendRefused = {
                "event": SEND_REFUSED,
                "at": at,
                "kind": str(row.kind),
                "ref": str(row.ref),
                "to": str(row.dest),
                "reason": reasons[str(row.dest)],
            }
            audit.add(entry)
        return len(rows)

    cancelled: int = await store.write(job)
    return cancelled


__all__ = ["cancel_queued", "leave_departed"]
