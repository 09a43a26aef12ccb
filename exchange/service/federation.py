"""The roster v2 chain this node holds (docs/protocol.md, 6a): importing versions under the
acceptance rules, persisting them, and what the rest of the node may ask of the held version.

The rules themselves are the pure core's (exchange.protocol.rosterchain, rostermigration); this
module owns their state. The database is the truth: every version accepted is stored as the
canonical JSON of the signed roster, and the highest stored version is the one held, at start-up
and before every import, so a restart (or another process on the same database) never takes the
node back. An import persists the new versions, then installs the last one in memory in one
assignment, then audits it; a refused chain stores nothing, and its refusal is audited within
bounds (`exchange.service.refusal_budget`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit.events import RosterInstalled, RosterRefused as RosterRefusedEntry
from exchange.clock import timestamp, utc_now
from exchange.crypto import VerifyKey, b64d, canonical_json, spki_pin, strict_loads
from exchange.errors import (
    ConfigError,
    Conflict,
    InvalidInput,
    NotFound,
    RosterRefused,
    RosterRollback,
)
from exchange.keystore import RosterPin
from exchange.protocol.roster import Federation
from exchange.protocol.roster2_model import MAX_ROSTER_BYTES, SignedRosterV2, roster_values
from exchange.protocol.rosterchain import (
    MAX_CHAIN,
    TrustedRoster,
    accept_chain,
    accept_first,
    equivocating_version,
    newer_versions,
    parse_roster_v2,
    roster_hash,
)
from exchange.protocol.rostermigration import check_migration
from exchange.protocol.rosterview import federation_view, roster_view
from exchange.service.refusal_budget import RefusalBudget
from exchange.service.roster_forks import Fork, fork_warning, read_forks, record_fork, stored_hashes
from exchange.service.roster_restore import keep_pin, restore_chain
from exchange.store import AuditBuffer, Store
from exchange.store.tables import roster_versions

log = logging.getLogger("exchange.roster")

MAX_IMPORT_BYTES = 4 * MAX_ROSTER_BYTES  # one import (a file of one version or a chain of them)
# Imports this long or longer are parsed in a thread: strict JSON and the schema take about 60 ms a
# MB, and an offer (up to 16 MiB, before any signature is checked) held the event loop as long.
OFF_LOOP_FROM = 1024 * 1024
MAX_DETAIL = 200  # characters of a refusal's message in its audit entry
EXPIRY_WARNING = dt.timedelta(days=14)  # how long before the held version expires `status` warns


# -- views ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RosterStatus:
    """The held version, for `exchange roster status`, the console and the expiry warning."""

    federation: str
    version: int
    hash: str
    issued: str
    expires: str
    expired: bool
    threshold: int
    holders: tuple[str, ...]
    nodes: dict[str, int]  # how many nodes are active, suspended, revoked
    warning: str | None  # a fork at the held version; its expiry, or one within EXPIRY_WARNING
    expiring: bool = False  # it expires within EXPIRY_WARNING (and has not yet)


@dataclass(frozen=True)
class KeyView:
    use: str
    kid: str
    state: str
    valid_from: int
    valid_until: int | None


@dataclass(frozen=True)
class NodeView:
    """One node of the held version: who it is, its status, its current keys and all its keys."""

    id: str
    name: str
    country: str
    agency: str
    endpoint: str
    status: str
    since: int
    signing_kid: str | None  # the current ones, for an active node; None otherwise
    encryption_kid: str | None
    tls_pin: str | None
    keys: tuple[KeyView, ...]


@dataclass(frozen=True)
class Imported:
    """What an import did: the version held before and after, and how many versions it stored."""

    before: int  # 0: none was held
    version: int
    hash: str
    expires: str
    added: int

    @property
    def changed(self) -> bool:
        return self.added > 0


@dataclass(frozen=True)
class V1Trust:
    """The v1 roster a 0.1.0 node holds and its authority key: the first v2 version it takes must
    be their migration (6a.6)."""

    fed: Federation
    authority: VerifyKey


class FederationRoster:
    """The roster v2 versions this node holds; built with its store (and, on a 0.1.0 node, the v1
    roster it runs on), then `load`ed."""

    def __init__(
        self,
        store: Store,
        *,
        v1: V1Trust | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
        budget: RefusalBudget | None = None,
        pin: RosterPin | None = None,
    ) -> None:
        self.store = store
        self.v1 = v1
        self.pin = pin  # the highest version taken, kept outside the database (restore_chain, keep_pin)
        self._clock = clock
        self._budget = budget or RefusalBudget()
        self._held: TrustedRoster | None = None
        self._view: tuple[TrustedRoster, Federation] | None = None
        self._lock = asyncio.Lock()
        self.equivocations: dict[int, Fork] = {}  # versions signed twice, as recorded (roster_forks)

    # -- the held version ------------------------------------------------------------------

    async def load(self) -> TrustedRoster | None:
        """Read back the highest version stored, with the checks of a first version but not its
        expiry (6a.6: an expired one is kept, and the node refuses traffic until a fresh one)."""
        async with self.store.read() as conn:
            self._held = await restore_chain(conn, first=self._first, pin=self.pin)
            self.equivocations = await read_forks(conn)
        keep_pin(self.pin, self._held)
        return self._held

    def _first(self, signed: SignedRosterV2) -> TrustedRoster:
        """The first version, imported or stored: on a node of release 0.1.0, the migration of its
        v1 roster (a database given another chain is refused); else on its own authority (taken on
        trust as given; once stored, the pin guards it)."""
        if self.v1 is not None:
            return check_migration(self.v1.fed, self.v1.authority, signed)
        return TrustedRoster.restore(signed)

    async def reload(self) -> bool:
        """Take the highest stored version if another process (`exchange roster import` beside the
        running node) stored one since: whether the held version changed."""
        async with self._lock:
            before = self._held
            async with self.store.read() as conn:
                await self._refresh(conn)
                self.equivocations = await read_forks(conn)  # another worker's, or an import's beside it
            return self._held is not before

    def expired(self) -> bool:
        """Whether the held version is past its `expires` (a node without one has nothing to expire)."""
        held = self._held
        return held is not None and held.expired(self._clock())

    @property
    def held(self) -> TrustedRoster | None:
        """The version installed now (None before the first import): one object, swapped whole."""
        return self._held

    def view(self) -> Federation | None:
        """The held version as the v1 roster the node's wiring runs on (its active nodes and their
        current keys; rosterview.federation_view), or None while no version is held."""
        held = self._held
        if held is None:
            return None
        if self._view is None or self._view[0] is not held:
            self._view = (held, federation_view(held))
        return self._view[1]

    def status(self) -> RosterStatus | None:
        held = self._held
        if held is None:
            return None
        doc = held.roster
        counts = {s: len(held.node_ids(s)) for s in ("active", "suspended", "revoked")}
        left = held.expires_at - self._clock()
        fork = self.fork()
        warnings = [fork_warning(fork)] if fork is not None else []
        if left <= dt.timedelta(0):
            warnings.append(f"roster version {doc.version} has expired: import a fresh version")
        elif left <= EXPIRY_WARNING:
            warnings.append(f"roster version {doc.version} expires in {left.days} days: import a fresh version before")
        return RosterStatus(
            federation=doc.federation,
            version=doc.version,
            hash=held.hash,
            issued=doc.issued,
            expires=doc.expires,
            expired=held.expired(self._clock()),
            threshold=doc.authority.threshold,
            holders=tuple(k.holder for k in doc.authority.keys),
            nodes=counts,
            warning="; ".join(warnings) or None,
            expiring=dt.timedelta(0) < left <= EXPIRY_WARNING,
        )

    def fork(self) -> Fork | None:
        """The fork recorded at the version held (roster_forks), if any."""
        held = self._held
        fork = self.equivocations.get(held.version) if held is not None else None
        return fork if fork is not None and held is not None and fork.held_hash == held.hash else None

    def node(self, node_id: str) -> NodeView:
        """One node of the held version (NotFound if no version is held; UnknownPeer if it is not listed)."""
        held = self._held
        if held is None:
            raise NotFound("this node holds no roster v2 version yet; run: exchange roster import")
        node = held.node(node_id)
        current = {k.use: k for k in node.keys if k.state == "active"} if node.status == "active" else {}
        tls = current.get("tls")
        return NodeView(
            id=node.id,
            name=node.name,
            country=node.country,
            agency=node.agency,
            endpoint=node.endpoint,
            status=node.status,
            since=node.since,
            signing_kid=current["signing"].kid if "signing" in current else None,
            encryption_kid=current["encryption"].kid if "encryption" in current else None,
            tls_pin=spki_pin(b64d(tls.key)) if tls is not None else None,
            keys=tuple(KeyView(k.use, k.kid, k.state, k.valid_from, k.valid_until) for k in node.keys),
        )

    async def chain(self, after: int = 0) -> list[bytes]:
        """The stored versions above `after`, oldest first, as stored: what a peer that is behind fetches."""
        async with self.store.read() as conn:
            rows = await conn.execute(
                sa.select(roster_versions.c.signed)
                .where(roster_versions.c.version > after)
                .order_by(roster_versions.c.version)
                .limit(MAX_CHAIN)
            )
            return [bytes(r.signed) for r in rows]

    # -- importing -------------------------------------------------------------------------

    async def import_chain(
        self,
        raw: bytes | Sequence[bytes],
        *,
        source: str = "import",
        expect_hash: str | None = None,
        max_versions: int = MAX_CHAIN + 1,
    ) -> Imported:
        """Take the versions in `raw` (files of one signed roster or a JSON array of them) under the
        rules of 6a.4, from the version held; with `expect_hash`, the final version must have it.
        More than `max_versions` versions are refused once the JSON is read, before the schema.

        Refused: the error of the first rule broken (RosterRollback, RosterGap, RosterEquivocation,
        RosterThreshold, RosterExpired, ...), nothing stored, the refusal audited within bounds.
        """
        async with self._lock:
            now = self._clock()
            offered: list[SignedRosterV2] = []
            held: TrustedRoster | None = None
            try:
                async with self.store.read() as conn:
                    held = await self._refresh(conn)
                    known = await stored_hashes(conn, below=held.version if held else 0)
                offered = await _parsed([raw] if isinstance(raw, bytes) else raw, max_versions)
                new, added, view = await asyncio.to_thread(self._decide, held, offered, known, now)
                if expect_hash is not None and new.hash != expect_hash:
                    raise RosterRefused(
                        f"roster version {new.version} has hash {new.hash}, not the expected {expect_hash}"
                    )
            except (RosterRefused, InvalidInput) as exc:
                await self._audit_refusal(exc, held, offered, source, now)
                raise
            before = held.version if held else 0
            if added:
                await self._persist(held, added, now)  # 1. persist
                self._held = new  # 2. install, in one assignment
                self._view = (new, view) if view is not None else None
                entry: RosterInstalled = {  # 3. audit
                    "event": "roster.installed",
                    "at": timestamp(now),
                    "version": new.version,
                    "hash": new.hash,
                    "held": before,
                    "versions": len(added),
                    "expires": new.roster.expires,
                    "source": source,
                }
                await self.store.audit(entry)
                keep_pin(self.pin, new)  # 4. pin
                log.info("roster version %d installed (%s), from %d", new.version, new.hash, before)
            return Imported(before, new.version, new.hash, new.roster.expires, len(added))

    async def _refresh(self, conn: AsyncConnection) -> TrustedRoster | None:
        """The highest stored version: what another process may have imported since `load`."""
        top = (
            await conn.execute(
                sa.select(roster_versions.c.version, roster_versions.c.hash)
                .order_by(roster_versions.c.version.desc())
                .limit(1)
            )
        ).first()
        held = self._held
        if top is None:
            if held is not None:
                raise ConfigError(f"the database lost the roster versions up to {held.version}")
            return None
        if held is None or (held.version, held.hash) != (top.version, top.hash):
            if held is not None and top.version < held.version:
                raise ConfigError(f"the database holds roster version {top.version}, below {held.version}")
            if held is not None and top.version == held.version:
                raise ConfigError(f"the stored roster version {top.version} is not the one this node holds")
            self._held = await restore_chain(conn, held, first=self._first)
            keep_pin(self.pin, self._held)
        return self._held

    def _decide(
        self,
        held: TrustedRoster | None,
        offered: list[SignedRosterV2],
        known: dict[int, str],
        now: dt.datetime,
    ) -> tuple[TrustedRoster, list[SignedRosterV2], Federation | None]:
        """The version to hold after `offered`, the versions to store, and the v1 view the node will
        run on (pure, in a thread).

        Every version to store must have a v1 view (RosterInvalid otherwise, nothing stored): one
        without was held, named in every header, and never run on, so partners on it were refused
        503 RosterBehind for good, and the node could not restart.
        """
        new, added = self._accept(held, offered, known, now)
        view = None
        for signed in added:
            view = roster_view(signed.roster)
        return new, added, view

    def _accept(
        self,
        held: TrustedRoster | None,
        offered: list[SignedRosterV2],
        known: dict[int, str],
        now: dt.datetime,
    ) -> tuple[TrustedRoster, list[SignedRosterV2]]:
        if held is None:
            new = accept_first(self._first(offered[0]), offered[1:], now)
            return new, newer_versions(offered, 0)
        if offered[-1].roster.version >= held.version:
            # A whole history may be offered: the versions before the held one are left out once
            # they are found to be the ones stored (an unknown one is not this node's to judge).
            for item in offered:
                v = item.roster.version
                if v < held.version and v in known and roster_hash(item.roster) != known[v]:
                    raise RosterRollback(
                        f"roster version {v} offered with hash {roster_hash(item.roster)}: "
                        f"this node went past it with {known[v]}"
                    )
            offered = [s for s in offered if s.roster.version >= held.version]
        new = accept_chain(held, offered, now)
        return new, newer_versions(offered, held.version)

    async def _persist(self, held: TrustedRoster | None, added: list[SignedRosterV2], now: dt.datetime) -> None:
        rows = [
            {
                "version": s.roster.version,
                "hash": roster_hash(s.roster),
                "signed": canonical_json(s.model_dump(mode="json")),
                "installed_at": timestamp(now),
            }
            for s in added
        ]
        expected = (held.version, held.hash) if held is not None else None

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            top = (
                await conn.execute(
                    sa.select(roster_versions.c.version, roster_versions.c.hash)
                    .order_by(roster_versions.c.version.desc())
                    .limit(1)
                )
            ).first()
            if (tuple(top) if top is not None else None) != expected:
                raise Conflict("another process installed a roster version meanwhile; import again")
            await conn.execute(sa.insert(roster_versions), rows)

        await self.store.write(job)

    async def _audit_refusal(
        self,
        exc: RosterRefused | InvalidInput,
        held: TrustedRoster | None,
        offered: list[SignedRosterV2],
        source: str,
        now: dt.datetime,
    ) -> None:
        other = equivocating_version(exc, held, offered)
        if other is not None and held is not None:  # recorded whatever the budget (roster_forks)
            self.equivocations[held.version] = (await record_fork(self.store, held.hash, other, source, now))[0]
        suppressed = self._budget.admit(source, now)
        if suppressed is None:
            return
        entry: RosterRefusedEntry = {
            "event": "roster.refused",
            "at": timestamp(now),
            "error": type(exc).__name__,
            "held": held.version if held else 0,
            "offered": max((s.roster.version for s in offered), default=0),
            "source": source[:64],
            "detail": " ".join(exc.detail.split())[:MAX_DETAIL],
        }
        if other is not None and held is not None:  # the evidence: two hashes of one version, both signed
            entry["held_hash"], entry["offered_hash"] = held.hash, roster_hash(other.roster)
        if suppressed:
            entry["suppressed"] = suppressed
        await self.store.audit(entry)


async def _parsed(blobs: Sequence[bytes], max_versions: int) -> list[SignedRosterV2]:
    """`_parse_chain`, in a thread when the blobs come to OFF_LOOP_FROM bytes or more; a short
    import stays on the loop, where a thread's hand-off would cost more than the parse."""
    if sum(len(blob) for blob in blobs) >= OFF_LOOP_FROM:
        return await asyncio.to_thread(_parse_chain, blobs, max_versions)
    return _parse_chain(blobs, max_versions)


def _parse_chain(blobs: Sequence[bytes], max_versions: int = MAX_CHAIN + 1) -> list[SignedRosterV2]:
    """Signed rosters from files of one each or of a JSON array of them, ordered by version. Their
    number is checked on each file's parsed JSON, before the schema (the costlier part) reads it."""
    chain: list[SignedRosterV2] = []
    for blob in blobs:
        if len(blob) > MAX_IMPORT_BYTES:
            raise InvalidInput(f"a roster import has at most {MAX_IMPORT_BYTES} bytes")
        value = strict_loads(blob, min_values=roster_values(len(blob)))
        items = value if isinstance(value, list) else [value]
        if len(chain) + len(items) > max_versions:
            raise RosterRefused(f"{len(chain) + len(items)} roster versions at once: at most {max_versions} are taken")
        chain.extend(parse_roster_v2(item) for item in items)
    if not chain:
        raise InvalidInput("no roster version to import")
    return sorted(chain, key=lambda s: s.roster.version)


__all__ = [
    "FederationRoster",
    "Imported",
    "KeyView",
    "NodeView",
    "RefusalBudget",
    "RosterStatus",
    "V1Trust",
]
