"""The audit side of a running node, for the audit API, the console and the periodic round.

`AuditService` owns this node's `LogKeeper` and `Witness`, runs the checkpoint-and-witness
round, and answers every audit question the adapters ask: log pages, entries and proofs,
exports, a bulletin's evidence and its trace across nodes, and what this node witnessed. It
writes the audit entries of its own doings (`node.started`, `node.stopped`, `audit.trace`,
`audit.trace_served`), and signs a last checkpoint when the node stops cleanly.
Partners are reached through the `PeerTransport` it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any

from exchange.audit.events import (
    AUDIT_TRACE,
    AUDIT_TRACE_SERVED,
    NODE_STARTED,
    NODE_STOPPED,
    AuditTrace,
    AuditTraceServed,
    NodeStarted,
    NodeStopped,
)
from exchange.audit.keeper import BundleRecord, EvidenceJSON, StoredCheckpoint
from exchange.audit.log import KeyRing, LogVerifier
from exchange.audit.witness import CHECKPOINT_INTERVAL
from exchange.audit.witness_sets import DEFAULT_WITNESSES
from exchange.clock import cancel_and_wait, timestamp, utc_now
from exchange.config import TlogLogConfig, TlogWitnessConfig
from exchange.crypto import SigningKey, b64e, canonical_json, sha256
from exchange.errors import (
    AuditTampered,
    ExchangeError,
    Forbidden,
    InvalidInput,
    NotFound,
    StateUnavailable,
)
from exchange.merkle import leaf_hash
from exchange.model import NodeId
from exchange.protocol.roster import Federation
from exchange.service.audit.entries import LogEntries
from exchange.service.audit.headers import StoredHeader, stored_header
from exchange.service.audit.keeper import LogKeeper
from exchange.service.audit.tlog_push import TlogClient, TlogPush, c2sp_witnesses
from exchange.service.audit.tlog_witnessing import TlogWitnessing
from exchange.service.audit.views import (
    CheckpointCheck,
    CollectedTrace,
    ConsistencyProof,
    Entry,
    EntryFilter,
    EntryWithProof,
    HeldReceipt,
    InclusionProof,
    LatestForWitness,
    LogPage,
    PartnerCosigned,
    ProofStatus,
    RecentEntries,
    SignedCheckpoint,
    TraceHeader,
)
from exchange.service.audit.witness import Witness, WitnessedLog, WitnessedView
from exchange.service.audit.witness_failures import WitnessFailures
from exchange.service.epochs import EpochBook
from exchange.service.held_receipts import checked_receipts
from exchange.service.transport import PeerTransport
from exchange.store import Store

log = logging.getLogger("exchange.audit")

WITNESS_WAIT = 5.0  # seconds a trace waits for witnesses to co-sign a checkpoint made for it
WITNESS_RETRY = 60.0  # seconds before a trace puts the same checkpoint to the witnesses again
WITNESS_ASKS_KEPT = 1024  # bulletins remembered as traced with a checkpoint put to the witnesses
TRACE_SERVED_EVERY = dt.timedelta(hours=1)  # a partner's requests for one bulletin's evidence: audited once in this
RECENT_PAGE = 50  # entries on one page of the console's log, newest first
RECENT_CHUNK = 2000  # entries read per step when looking back through the log
RECENT_BUDGET = 50_000  # entries one such page may look through before it offers to go on


def evidence_path(bulletin: str) -> str:
    """Where a partner serves its evidence about a bulletin."""
    return f"/fed/v1/audit/bulletins/{bulletin}"


class AuditService:
    """This node's audit log, its witnessing of partners, and the questions auditors ask."""

    def __init__(
        self,
        me: str,
        store: Store,
        fed: Federation,
        key: SigningKey,
        transport: PeerTransport,
        partners: Callable[[], Sequence[str]],
        signed_roster: Any,
        *,
        tlog_logs: Sequence[TlogLogConfig] = (),
        tlog_witnesses: Sequence[TlogWitnessConfig] = (),
        tlog_client: TlogClient | None = None,
        witnesses_per_log: int = DEFAULT_WITNESSES,
        epochs: EpochBook | None = None,
    ) -> None:
        self.me = me
        self.epochs = epochs  # envelope v2: a bulletin's readers are its epoch's (docs/protocol.md, 15)
        self.store = store
        self.fed = fed
        self.signed_roster = signed_roster
        self.transport = transport
        c2sp = c2sp_witnesses(tlog_witnesses)  # C2SP witnesses of our log (docs/audit.md, section 4)
        self._c2sp_keys = {w.name: w.key.key for w in c2sp}
        self.keeper = LogKeeper(me, store, key, signed_roster, self.keyring().witnesses(me))
        self.keeper.use_key(key, fed.signing_keys(me)[1:])  # checkpoints signed before a rotation
        self.log_entries = LogEntries(self.keeper)
        failures = WitnessFailures(me)  # the partners' witnessing and the C2SP witnesses' (GET /metrics)
        self.tlog_push = TlogPush(me, self.keeper, c2sp, tlog_client, failures)
        self.witness = Witness(
            me,
            store,
            key,
            fed,
            self.keeper,
            transport,
            partners,
            per_log=witnesses_per_log,
            c2sp=self.tlog_push.push if c2sp else None,
            failures=failures,
        )
        self.tlog_witnessing = TlogWitnessing(me, store, key, tlog_logs)  # foreign C2SP logs we witness
        self.stopped = asyncio.Event()
        self._round: asyncio.Task[None] | None = None
        self._started = False
        self._serving = asyncio.Lock()  # one look-up and write of `audit.trace_served` at a time
        self._put_to_witnesses: dict[str, float] = {}  # bulletin -> when a trace of it last asked them

    # -- start and stop ---------------------------------------------------------------------

    async def start(self, interval: float = CHECKPOINT_INTERVAL) -> None:
        """Check the log and resume the keeper, audit this start, and run a checkpoint-and-witness
        round every `interval`.

        Raises AuditTampered, before anything is written, if the log does not hold what this node
        signed (see `LogKeeper.start`).
        """
        await self.keeper.start()
        # Keys and roster take effect at start, so each start records the ones it runs with: a key
        # or roster change shows as a difference between two node.started entries.
        node = self.fed.node(self.me)
        started: NodeStarted = {
            "event": NODE_STARTED,
            "at": timestamp(),
            "roster_version": self.fed.roster.version,
            "roster_sha256": sha256(canonical_json(self.signed_roster)).hex(),
            "authority_kid": self.fed.roster.authority_kid,
            "signing_kid": node.signing_kid,
            "encryption_kid": node.encryption_kid,
            "tls_pin": node.tls_pin,
        }
        await self.store.audit(started)
        self._started = True
        self._round = asyncio.create_task(self.witness.run(interval), name=f"audit-{self.me}")

    async def close(self) -> None:
        """Refuse further requests, stop the round and the keeper (before the store closes)."""
        self.stopped.set()
        await cancel_and_wait(self._round)
        self._round = None
        await self.keeper.close()

    async def sign_at_stop(self) -> StoredCheckpoint | None:
        """A clean stop: audit it (`node.stopped`) and sign a checkpoint of every entry committed.

        Call it once the node's other loops are stopped and before the store closes: no entry of
        this run is then left unsigned while the node is down, and the next start checks the table
        against it. It is not put to the partners now (they co-sign a checkpoint that extends it in
        the first round after the next start): docs/audit.md, section 9, says what that leaves open.
        """
        if not self._started:
            return None
        self._started = False
        stopped: NodeStopped = {"event": NODE_STOPPED, "at": timestamp()}
        await self.store.audit(stopped)  # committed after every write queued before it
        cp = await self.keeper.checkpoint()
        if cp is None:
            return None
        log.info("%s: signed checkpoint %d at shutdown", self.me, cp.size)
        return cp

    def install(self) -> None:
        """The node runs on a new roster version (`fed` holds it): its witnesses are the new version's."""
        self.keeper.set_witnesses(self.keyring().witnesses(self.me))

    def keyring(self) -> KeyRing:
        """The roster's keys, and the configured C2SP witnesses' keys (their cosignatures count too)."""
        return KeyRing.from_federation(self.fed, self._c2sp_keys)

    def use_key(self, key: SigningKey) -> None:
        """This node signs with `key` from now on (its roster version lists it as the current one,
        docs/protocol.md 6a.13): checkpoints and cosignatures alike, those of the foreign C2SP logs
        it witnesses included."""
        self.keeper.use_key(key, [k for k in self.fed.signing_keys(self.me) if k.kid != key.kid])
        self.witness.use_key(key)
        self.tlog_witnessing.use_key(key)

    def ensure_running(self) -> None:
        """Raise StateUnavailable once the node is stopping (a late request must not write)."""
        if self.stopped.is_set():
            raise StateUnavailable("the node is stopping")

    @property
    def size(self) -> int:
        """Entries committed to the log."""
        return self.store.audit_size

    # -- the log ----------------------------------------------------------------------------

    async def log_page(self, where: EntryFilter, *, after: int = -1, limit: int = 100) -> LogPage:
        """Matching entries after index `after`, oldest first."""
        if where.bulletin is not None:  # through the index by bulletin, not a scan of the log
            found, cursor = await self.log_entries.of_bulletin(where.bulletin, where, after=after, limit=limit)
        else:
            found, cursor = await self.log_entries.scan(where, where.needle, after=after, limit=limit)
        return LogPage([body for _, _, body in found], cursor, self.keeper.size)

    async def entries(self, *, after: int = -1, limit: int = 100) -> list[Entry]:
        """Entries after index `after`, oldest first, unfiltered: metadata only, never bulletin content."""
        return await self.log_entries.after(after, limit)

    async def recent(self, where: EntryFilter, before: int) -> RecentEntries:
        """Up to RECENT_PAGE matching entries below index `before`, newest first."""
        if where.bulletin is not None:  # through the index by bulletin, newest first
            newest, _ = await self.log_entries.of_bulletin(
                where.bulletin, where, before=before, limit=RECENT_PAGE + 1, newest_first=True
            )
            if len(newest) > RECENT_PAGE:
                return RecentEntries([body for _, _, body in newest[:RECENT_PAGE]], newest[RECENT_PAGE - 1][0])
            return RecentEntries([body for _, _, body in newest], None)
        found: list[Entry] = []
        hi, scanned = before, 0
        while hi > 0 and len(found) < RECENT_PAGE and scanned < RECENT_BUDGET:
            lo = max(0, hi - RECENT_CHUNK)
            page, _ = await self.log_entries.scan(where, where.needle, after=lo - 1, limit=hi - lo, scan=hi - lo)
            found += [body for _, _, body in reversed(page)]
            scanned += hi - lo
            hi = lo
        if len(found) > RECENT_PAGE:
            found = found[:RECENT_PAGE]
            return RecentEntries(found, int(found[-1]["idx"]))
        return RecentEntries(found, hi if hi > 0 else None)

    async def entry_with_proof(self, idx: int) -> EntryWithProof:
        """Entry `idx` and whether it is proven in the latest checkpoint, checked as a verifier would."""
        raw = await self.log_entries.entry(idx)
        try:  # a row edited by hand may hold anything: its proof status then says it fails
            body = json.loads(raw)
        except (ValueError, RecursionError):
            body = None
        shown = body if isinstance(body, dict) else {"event": "(not an audit entry)"}
        return EntryWithProof(idx, raw, shown, await self._proof_status(idx, raw))

    async def _proof_status(self, idx: int, raw: bytes) -> ProofStatus:
        latest = await self.keeper.latest()
        if latest is None:
            return ProofStatus("pending", "No checkpoint has been signed yet, so no proof can be given.")
        if idx >= latest.size:
            text = f"Not covered yet: the latest checkpoint covers entries 0 to {latest.size - 1}."
            return ProofStatus("pending", text, latest)
        try:
            proof = await self.keeper.inclusion(idx, latest.size)
            verifier = LogVerifier(self.me, self.keyring())
            info = verifier.checkpoint(latest.full_note())
            verifier.proven_entry(idx, raw, info.size, proof)
        except (AuditTampered, InvalidInput) as exc:
            return ProofStatus("failed", f"The proof does not verify: {exc.detail}", latest)
        text = (
            f"Included in the checkpoint of size {info.size}: the inclusion proof ({len(proof)} hashes) "
            "and the checkpoint's signature verify."
        )
        return ProofStatus("proven", text, latest, list(info.witnesses), [p.hex() for p in proof])

    async def inclusion(self, index: int, size: int | None = None) -> InclusionProof:
        """Entry `index` with its inclusion proof in checkpoint `size` (default: the latest)."""
        if size is None:
            latest = await self.keeper.latest()
            size = latest.size if latest else 0
        cp = await self.keeper.checkpoint_at(size)
        proof = await self.keeper.inclusion(index, size)
        entry = await self.log_entries.entry(index)
        return InclusionProof(index, size, entry, leaf_hash(entry), proof, cp)

    async def consistency(self, old: int, new: int | None = None) -> ConsistencyProof:
        """A consistency proof from size `old` to checkpoint `new` (default: the latest)."""
        if new is None:
            latest = await self.keeper.latest()
            new = latest.size if latest else 0
        cp = await self.keeper.checkpoint_at(new)
        return ConsistencyProof(old, new, await self.keeper.consistency(old, new), cp)

    def export(self, bulletin: str | None = None) -> AsyncIterator[BundleRecord]:
        """The records of an export bundle: the whole log, or one bulletin's entries with proofs."""
        return self.log_entries.export(bulletin)

    def export_lines(self, bulletin: str | None = None) -> AsyncIterator[bytes]:
        """The export bundle as JSON Lines: the header's line first, then chunks of whole lines."""
        return self.log_entries.export_lines(bulletin)

    # -- checkpoints and witnesses ----------------------------------------------------------

    async def latest_checkpoint(self) -> StoredCheckpoint:
        """The latest checkpoint with its cosignatures (signing a first one if there is none yet)."""
        cp = await self.keeper.latest() or await self.keeper.checkpoint()
        if cp is None:
            raise NotFound("this node has signed no checkpoint yet")
        return cp

    async def sign_checkpoint(self, *, witness: bool = True) -> SignedCheckpoint:
        """Sign a checkpoint now; if `witness`, ask our designated witnesses to co-sign it and wait."""
        cp = await self.keeper.checkpoint()
        if cp is None:
            raise NotFound("the audit log is empty")
        if not witness:
            return SignedCheckpoint(cp)
        outcomes = await self.witness.request_cosignatures(cp)
        return SignedCheckpoint(await self.keeper.checkpoint_at(cp.size), outcomes)

    async def recent_checkpoints(self, count: int = 20) -> list[StoredCheckpoint]:
        """The `count` latest checkpoints, largest first."""
        return await self.keeper.recent(count)

    def check_checkpoint(self, cp: StoredCheckpoint) -> CheckpointCheck:
        """Verify a checkpoint of ours with the roster's keys, cosignatures included."""
        try:
            info = LogVerifier(self.me, self.keyring()).checkpoint(cp.full_note())
        except (AuditTampered, InvalidInput) as exc:
            return CheckpointCheck(False, [], exc.detail)
        if (info.size, info.root) != (cp.size, cp.root):  # the columns shown beside the tick are the note's
            return CheckpointCheck(False, [], "the stored size or root differ from the signed note's")
        return CheckpointCheck(True, list(info.witnesses))

    async def cosigned_by(self, partners: Iterable[str]) -> list[PartnerCosigned]:
        """How far each partner has co-signed our log."""
        return [PartnerCosigned(p, await self.keeper.cosigned_size(p)) for p in partners]

    async def witnessed(self) -> WitnessedView:
        """Partners' logs this node witnesses, the split views it caught, and the foreign C2SP logs
        it co-signs (the latest checkpoint of each)."""
        foreign = [
            WitnessedLog(w.origin, w.size, b64e(w.root), w.at, w.note) for w in await self.tlog_witnessing.witnessed()
        ]
        return dataclasses.replace(await self.witness.view(), c2sp_logs=foreign)

    async def latest_for_witness(self, seen: int) -> LatestForWitness:
        """Our latest checkpoint, with a consistency proof from the size a witness last saw."""
        cp = await self.keeper.latest()
        if cp is None:
            return LatestForWitness(None, [])
        proof = await self.keeper.consistency(seen, cp.size) if 0 < seen < cp.size else []
        return LatestForWitness(cp, proof)

    # -- tracing a bulletin -----------------------------------------------------------------

    async def header_of(self, bid: str) -> StoredHeader:
        """The signed header of a bulletin this node holds: author, channel, readers (no content),
        checked now: its author's signature, and that it hashes to the bulletin's id."""
        return await stored_header(self.store, self.fed, self.epochs, bid)

    async def evidence(self, bid: str) -> EvidenceJSON:
        """Our evidence about a bulletin; a checkpoint signed just for it is first put to the witnesses."""
        evidence = await self.log_entries.evidence(bid)
        size = evidence.get("size")
        if size:
            cp = await self.keeper.checkpoint_at(size)
            if not cp.witnesses and self._may_ask_witnesses(bid):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(WITNESS_WAIT):
                        await self.witness.request_cosignatures(cp)
                evidence["checkpoint"] = (await self.keeper.checkpoint_at(cp.size)).full_note()
        return evidence

    def _may_ask_witnesses(self, bid: str) -> bool:
        """Whether a trace of `bid` may put its checkpoint to the witnesses now: once per
        WITNESS_RETRY. A partner asking for evidence in a loop while the witnesses do not answer
        put it to every witness at each request, and each answer waited WITNESS_WAIT. Counted by
        bulletin, not by checkpoint: the `trace.served` entry the first answer audits is about the
        bulletin too, so the next request's evidence needs a larger checkpoint, which was put to
        the witnesses and waited for again (CI: an intermittent 20 s wait in the test of this)."""
        now = asyncio.get_running_loop().time()
        last = self._put_to_witnesses.get(bid)
        if last is not None and now - last < WITNESS_RETRY:
            return False
        self._put_to_witnesses[bid] = now
        if len(self._put_to_witnesses) > WITNESS_ASKS_KEPT:  # the oldest forgotten
            del self._put_to_witnesses[min(self._put_to_witnesses, key=self._put_to_witnesses.__getitem__)]
        return True

    async def serve_evidence(self, peer: str, bid: str) -> EvidenceJSON:
        """Our evidence about a bulletin, for the nodes its envelope names as author or recipient."""
        header = await self.header_of(bid)
        if peer not in {header.author, *header.readers}:
            raise Forbidden(f"{peer} is neither the author nor a recipient of bulletin {bid}")
        evidence = await self.evidence(bid)

        # Audited once per partner and bulletin per TRACE_SERVED_EVERY: a partner asking in a loop
        # added an entry (and, through `evidence`, a checkpoint put to the witnesses) per request.
        def this_peer(entry: dict[str, Any]) -> bool:
            return entry.get("event") == AUDIT_TRACE_SERVED and entry.get("peer") == peer

        async with self._serving:  # requests at once: the first writes, the others then find it
            last, _ = await self.log_entries.of_bulletin(bid, this_peer, limit=1, newest_first=True)
            now = utc_now()
            if not last or str(last[0][2].get("at", "")) <= timestamp(now - TRACE_SERVED_EVERY):
                at = timestamp(now)
                served: AuditTraceServed = {"event": AUDIT_TRACE_SERVED, "at": at, "bulletin": bid, "peer": peer}
                await self.store.audit(served)
        return evidence

    async def collect_trace(self, bid: str) -> CollectedTrace:
        """Ask every node the bulletin's envelope names for its evidence about it; callers verify it."""
        header = await self.header_of(bid)
        nodes = sorted({header.author, *header.readers})

        async def ask(node: str) -> Mapping[str, Any]:
            if node == self.me:
                return await self.evidence(bid)
            try:
                answer = await self.transport.fetch(NodeId(node), evidence_path(bid))
            except ExchangeError as exc:
                return {"node": node, "error": exc.detail}
            if not isinstance(answer, dict) or answer.get("node") != node:
                return {"node": node, "error": "it answered for another node"}
            return answer

        evidence = await asyncio.gather(*(ask(n) for n in nodes))
        summary = TraceHeader(
            header.channel,
            header.author,
            header.seq,
            header.created,
            header.tlp,
            header.readers,
        )
        return CollectedTrace(bid, summary, list(evidence))

    async def trace(self, bid: str, user: str) -> CollectedTrace:
        """A bulletin's evidence from every node it names, the trace audited as asked by `user`."""
        trace = await self.collect_trace(bid)
        # Audited after the evidence is taken, so a trace does not need a checkpoint of its own.
        entry: AuditTrace = {"event": AUDIT_TRACE, "at": timestamp(), "bulletin": bid, "user": user}
        await self.store.audit(entry)
        return trace

    async def receipts_held(self, bid: str) -> list[HeldReceipt]:
        """The signed receipts this node holds for a bulletin that verify now, oldest first."""
        async with self.store.read() as conn:
            rows = await checked_receipts(conn, self.fed, bid)
        return [HeldReceipt(r.node, r.status, r.at) for r in rows]
