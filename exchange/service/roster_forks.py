"""Roster versions signed twice by the authority (docs/protocol.md 6a.11): a node that is offered
another version with the number of one it holds, signed by the authority's threshold, keeps what
it holds, refuses the other (RosterEquivocation, audited as `roster.refused` with both hashes) and
records it here: the first other version seen for that number, as signed, and who offered it.

The record is in the database, so every worker of the node and the commands beside it
(`exchange roster status`) see it, and it outlives a restart: the node's roster status warns of a
fork at the version it holds, and `exchange_roster_equivocations` counts the versions recorded.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit.events import RosterRefused as RosterRefusedEntry
from exchange.clock import timestamp
from exchange.crypto import canonical_json
from exchange.protocol.roster2_model import SignedRosterV2
from exchange.protocol.rosterchain import TrustedRoster, parse_roster_v2, roster_hash
from exchange.store import AuditBuffer, Store
from exchange.store.tables import roster_forks, roster_versions

if TYPE_CHECKING:
    from exchange.service.federation import FederationRoster

PAGE = 32  # versions of a peer's answer looked at (a pull's page, exchange.service.gossip)

log = logging.getLogger("exchange.roster")


@dataclass(frozen=True)
class Fork:
    """Version `version` held here with `held_hash`; another, `other_hash`, offered by `source`."""

    version: int
    held_hash: str
    other_hash: str
    source: str
    seen_at: str


async def read_forks(conn: AsyncConnection) -> dict[int, Fork]:
    """Every fork recorded, by version."""
    rows = await conn.execute(
        sa.select(
            roster_forks.c.version,
            roster_forks.c.held_hash,
            roster_forks.c.other_hash,
            roster_forks.c.source,
            roster_forks.c.seen_at,
        )
    )
    return {int(r.version): Fork(int(r.version), r.held_hash, r.other_hash, r.source, r.seen_at) for r in rows}


async def record_fork(
    store: Store, held_hash: str, other: SignedRosterV2, source: str, now: dt.datetime
) -> tuple[Fork, bool]:
    """Record `other` as the second version of its number (the held one has `held_hash`), unless
    one is recorded for that number already: the fork recorded (the first one kept), and whether
    it was recorded now. The first
    record of a version is logged as an error; the ones after it are not (an offer of the same
    version from each address would else log one error each)."""
    version, other_hash = other.roster.version, roster_hash(other.roster)
    fork = Fork(version, held_hash, other_hash, source[:64], timestamp(now))

    async def job(conn: AsyncConnection, audit: AuditBuffer) -> Fork | None:
        held = (await read_forks(conn)).get(version)
        if held is not None:
            return held
        row = {**fork.__dict__, "other": canonical_json(other.model_dump(mode="json"))}
        await conn.execute(sa.insert(roster_forks).values(**row))
        return None

    kept = await store.write(job)
    if kept is not None:
        return kept, False
    log.error("roster version %d signed twice: %s held, %s from %s", version, held_hash, other_hash, fork.source)
    return fork, True


async def stored_hashes(store: Store) -> dict[int, str]:
    """The hash of every version this node stored, by version."""
    async with store.read() as conn:
        rows = await conn.execute(sa.select(roster_versions.c.version, roster_versions.c.hash))
        return {int(r.version): str(r.hash) for r in rows}


async def judge_below(
    roster: FederationRoster, offered: Sequence[Any], version: int, source: str, now: dt.datetime
) -> Fork | None:
    """A peer's copy of `version`, below the one held here, among the versions it sent: if the
    authority's threshold signed it as the successor of this node's `version` - 1 and it is not
    this node's `version`, a fork, recorded and audited (a `roster.refused` entry, as an import's
    equivocation is, once per version); else None. What does not parse or follow is the peer's
    fault (RosterRefused, InvalidInput), not evidence: raised, nothing recorded."""
    stored = await roster.chain(after=version - 2) if version >= 2 else []
    if len(stored) < 2:  # a fork of version 1 has no parent here to be judged by: not compared
        return None
    parent, ours = parse_roster_v2(stored[0]), parse_roster_v2(stored[1])
    theirs = [parse_roster_v2(canonical_json(v)) for v in offered[:PAGE] if isinstance(v, dict)]
    other = next((t for t in theirs if t.roster.version == version), None)
    if other is None or roster_hash(other.roster) == roster_hash(ours.roster):
        return None
    TrustedRoster.restore(parent).accept(other)  # signed and well formed, as a successor (6a.4)
    held_hash = roster_hash(ours.roster)
    fork, new = await record_fork(roster.store, held_hash, other, source, now)
    if new:
        held = roster.held
        entry: RosterRefusedEntry = {
            "event": "roster.refused",
            "at": timestamp(now),
            "error": "RosterEquivocation",
            "held": held.version if held is not None else 0,
            "offered": version,
            "source": source[:64],
            "detail": f"roster version {version}: hash {fork.other_hash} signed by the authority, {held_hash} held",
            "held_hash": held_hash,
            "offered_hash": fork.other_hash,
        }
        await roster.store.audit(entry)
    roster.equivocations[version] = fork
    return fork


def fork_warning(fork: Fork) -> str:
    """What the roster's status says of a fork at the version held."""
    return (
        f"the authority signed two roster versions {fork.version}: {fork.held_hash} held here, "
        f"{fork.other_hash} from {fork.source}; ask the authority which is genuine"
    )


__all__ = ["Fork", "fork_warning", "judge_below", "read_forks", "record_fork", "stored_hashes"]
