"""Roster versions signed twice by the authority (docs/protocol.md 6a.11): a node that is offered
another version with the number of one it holds, signed by the authority's threshold, keeps what
it holds, refuses the other (RosterEquivocation, audited as `roster.refused` with both hashes) and
records it here: the first other version seen for that number, as signed, and who offered it.

The record is in the database, so every worker of the node and the commands beside it
(`exchange roster status`) see it, and it outlives a restart: the node's roster status warns of a
fork at the version it holds, and `exchange_roster_equivocations` counts the versions recorded.
"""

from __future__ import annotations

import asyncio
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
    store: Store,
    held_hash: str,
    other: SignedRosterV2,
    source: str,
    now: dt.datetime,
    entry: RosterRefusedEntry | None = None,
) -> tuple[Fork, bool]:
    """Record `other` as the second version of its number (the held one has `held_hash`), unless
    one is recorded for that number already: the fork recorded (the first one kept), and whether
    it was recorded now. The first record of a version is logged as an error; the ones after it
    are not (an offer of the same version from each address would else log one error each).
    `entry`: audited with the record, in its transaction, if it is recorded now."""
    version, other_hash = other.roster.version, roster_hash(other.roster)
    fork = Fork(version, held_hash, other_hash, source[:64], timestamp(now))

    async def job(conn: AsyncConnection, audit: AuditBuffer) -> Fork | None:
        held = (await read_forks(conn)).get(version)
        if held is not None:
            return held
        row = {**fork.__dict__, "other": canonical_json(other.model_dump(mode="json"))}
        await conn.execute(sa.insert(roster_forks).values(**row))
        if entry is not None:
            audit.add(entry)
        return None

    kept = await store.write(job)
    if kept is not None:
        return kept, False
    log.error("roster version %d signed twice: %s held, %s from %s", version, held_hash, other_hash, fork.source)
    return fork, True


async def stored_hashes(conn: AsyncConnection, below: int | None = None) -> dict[int, str]:
    """The hash of every version this node stored (below `below`), by version."""
    query = sa.select(roster_versions.c.version, roster_versions.c.hash)
    if below is not None:
        query = query.where(roster_versions.c.version < below)
    return {int(r.version): str(r.hash) for r in await conn.execute(query)}


async def judge_below(
    roster: FederationRoster, offered: Sequence[Any], version: int, source: str, now: dt.datetime
) -> Fork | None:
    """A peer's copy of `version`, below the one held here, among the versions it sent: if the
    authority's threshold signed it as the successor of this node's `version` - 1 and it is not
    this node's `version`, a fork, recorded and audited (a `roster.refused` entry, as an import's
    equivocation is, once per version); else None. What does not parse or follow is the peer's
    fault (RosterRefused, InvalidInput), not evidence: raised, nothing recorded."""
    if version < 2:  # a fork of version 1 has no version before it to be judged by: not compared
        return None
    raw = next((v for v in offered[:PAGE] if _version_of(v) == version), None)
    async with roster.store.read() as conn:
        rows = await conn.execute(
            sa.select(roster_versions.c.signed)
            .where(roster_versions.c.version.in_((version - 1, version)))
            .order_by(roster_versions.c.version)
        )
        stored = [bytes(r.signed) for r in rows]
    if raw is None or len(stored) < 2:
        return None
    judged = await asyncio.to_thread(_successor, stored[0], stored[1], raw)  # up to MiBs of JSON each
    if judged is None:
        return None
    ours, other = judged
    held_hash, other_hash, held = roster_hash(ours.roster), roster_hash(other.roster), roster.held
    entry: RosterRefusedEntry = {  # as an import's equivocation is audited (its `offered`: `version`)
        "event": "roster.refused",
        "at": timestamp(now),
        "error": "RosterEquivocation",
        "held": held.version if held is not None else 0,
        "offered": version,
        "source": source[:64],
        "detail": f"roster version {version}: hash {other_hash} signed by the authority, {held_hash} held",
        "held_hash": held_hash,
        "offered_hash": other_hash,
    }
    fork, _ = await record_fork(roster.store, held_hash, other, source, now, entry)
    roster.equivocations[version] = fork
    return fork


def _version_of(raw: Any) -> Any:
    roster = raw.get("roster") if isinstance(raw, dict) else None
    return roster.get("version") if isinstance(roster, dict) else None


def _successor(parent: bytes, ours: bytes, raw: Any) -> tuple[SignedRosterV2, SignedRosterV2] | None:
    """This node's version and the peer's, if the peer's is another successor of `parent` that
    the authority signed (6a.4, rules 4 to 8); None if it is this node's own; else RosterRefused
    or InvalidInput."""
    mine, other = parse_roster_v2(ours), parse_roster_v2(canonical_json(raw))
    if roster_hash(other.roster) == roster_hash(mine.roster):
        return None
    TrustedRoster.restore(parse_roster_v2(parent)).accept(other)
    return mine, other


def fork_warning(fork: Fork) -> str:
    """What the roster's status says of a fork at the version held."""
    return (
        f"the authority signed two roster versions {fork.version}: {fork.held_hash} held here, "
        f"{fork.other_hash} from {fork.source}; ask the authority which is genuine"
    )


__all__ = ["Fork", "fork_warning", "judge_below", "read_forks", "record_fork", "stored_hashes"]
