"""What an operator's monitoring scrapes (`GET /metrics`, Prometheus text format): delivery per
partner, the audit log and its witnesses, what the store holds, the roster. A snapshot is read
when it is asked for, from what the node already keeps (the outbox's queue counts, the audit
keeper's checkpoints, the per-channel counts the database maintains), so a scrape costs the same
at a million bulletins as at a thousand; the adapter (exchange.node.metrics_api) formats it and
adds the HTTP and process figures it counts itself.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import sqlalchemy as sa

from exchange.clock import utc_now
from exchange.errors import NotFound
from exchange.protocol.roster import Federation
from exchange.service.audit.service import AuditService
from exchange.service.federation import FederationRoster
from exchange.service.outbox import Outbox
from exchange.store import Store
from exchange.store.tables import channel_counts, roster_forks

CHECKPOINTS_LOOKED_AT = 50  # of the newest checkpoints, for each witness's latest cosignature


def _when(at: str) -> dt.datetime:
    return dt.datetime.fromisoformat(at.replace("Z", "+00:00"))


def _age(at: str | None, now: dt.datetime) -> float | None:
    """Seconds since an RFC 3339 UTC timestamp (None stays None)."""
    return None if at is None else max(0.0, (now - _when(at)).total_seconds())


def _until(at: str | None, now: dt.datetime) -> float:
    """Seconds until an RFC 3339 UTC timestamp (0 if none, or past)."""
    return 0.0 if at is None else max(0.0, (_when(at) - now).total_seconds())


@dataclass(frozen=True)
class PeerFigures:
    peer: str
    queued: int
    in_flight: int
    delivered: int
    failures: int
    backoff_seconds: float  # until the next try (0: not backing off)
    pull_hold_seconds: float  # until pushes resume to a partner pulling what is queued (0: none)
    last_success_age: float | None  # seconds since the last delivery (None: never)


@dataclass(frozen=True)
class WitnessFigures:
    witness: str
    cosigned_size: int  # the largest size of our log it has co-signed (0: none)
    last_cosigned_age: float | None  # seconds since the newest checkpoint it co-signed was signed


@dataclass(frozen=True)
class MetricsSnapshot:
    node: str
    peers: list[PeerFigures]
    audit_entries: int
    checkpoint_size: int
    checkpoint_age: float | None
    witnesses: list[WitnessFigures]
    bulletins: dict[str, int] = field(default_factory=dict)  # per channel
    roster_version: int = 0
    roster_expires: float | None = None  # Unix time (roster v2), None when the roster has no expiry
    # roster versions found signed twice by the authority (6a.11), as recorded in the database
    roster_equivocations: int = 0
    # failed pulls and pushes since the process started: (partner, direction, kind) -> count
    witnessing_failures: dict[tuple[str, str, str], int] = field(default_factory=dict)


class NodeMetrics:
    """Reads a node's figures for its operators."""

    def __init__(
        self,
        me: str,
        store: Store,
        fed: Federation,
        outbox: Outbox,
        audit: AuditService,
        roster: FederationRoster | None = None,
    ) -> None:
        self.me = me
        self.roster = roster
        self.store = store
        self.fed = fed
        self.outbox = outbox
        self.audit = audit

    async def snapshot(self, partners: list[str]) -> MetricsSnapshot:
        now = utc_now()
        peers = []
        for s in self.outbox.statuses(await self.outbox.queued_counts()):
            until, since = _until(s.backoff_until, now), _age(s.last_success, now)
            hold = _until(s.pull_hold_until, now)
            peers.append(PeerFigures(s.peer, s.queued, s.in_flight, s.delivered, s.failures, until, hold, since))
        try:
            latest = await self.audit.latest_checkpoint()
            size, age = latest.size, _age(latest.at, now)
        except NotFound:
            size, age = 0, None
        newest: dict[str, str] = {}
        for cp in await self.audit.recent_checkpoints(CHECKPOINTS_LOOKED_AT):  # largest first
            for w in cp.witnesses:
                newest.setdefault(w, cp.at)
        witnesses = [
            WitnessFigures(c.node, c.size, _age(newest.get(c.node), now))
            for c in await self.audit.cosigned_by(partners)
        ]
        held = self.roster.held if self.roster is not None else None
        async with self.store.read() as conn:
            counts = {r.channel: int(r.bulletins) for r in await conn.execute(sa.select(channel_counts))}
            forks = int(await conn.scalar(sa.select(sa.func.count()).select_from(roster_forks)) or 0)
        return MetricsSnapshot(
            node=self.me,
            peers=sorted(peers, key=lambda p: p.peer),
            audit_entries=self.audit.size,
            checkpoint_size=size,
            checkpoint_age=age,
            witnesses=witnesses,
            bulletins=counts,
            roster_version=int(getattr(self.fed.roster, "version", 0) or 0),
            roster_expires=held.expires_at.timestamp() if held is not None else None,
            roster_equivocations=forks,
            witnessing_failures=self.audit.witness.failures.counts(),
        )
