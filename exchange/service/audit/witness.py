"""Witnessing: co-sign partners' checkpoints after a consistency check, ask partners to co-sign
ours, and catch a partner that shows two inconsistent histories (a split view) or goes back to a
smaller checkpoint than one it showed before (a rollback, recorded the same way).

The protocol and its rules are `exchange.audit.witness` (pure); this is the part that remembers
what it witnessed (`audit_witnessed`), keeps split-view evidence (`audit_split_views`) and talks
to partners through the `PeerTransport` it is given.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit.checkpoint import (
    Checkpoint,
    check_cosignature_time,
    cosign,
    log_origin,
    verify_cosignature,
    witness_name,
)
from exchange.audit.keeper import StoredCheckpoint, as_bytes
from exchange.audit.logkeys import key_that_signed
from exchange.audit.note import Note, parse_note, parse_signature_line
from exchange.audit.witness import (
    CHECKPOINT_INTERVAL,
    CHECKPOINT_PATH,
    COSIGN_PATH,
    COSIGNATURES_PATH,
    NO_CHECKPOINT,
    CosignAnswer,
    Seen,
    cosign_request,
    cosignature_body,
    is_new,
    open_logs_checkpoint,
    parse_cosign_request,
    parse_cosignature,
    parse_proof,
    shown_nothing,
    signed_by,
    split_detail,
    split_message,
    split_view_entry,
    went_back,
)
from exchange.audit.witness_sets import DEFAULT_WITNESSES, WitnessSets, witness_sets
from exchange.clock import stop_requested, timestamp, utc_now
from exchange.crypto import SigningKey, b64e
from exchange.errors import AuditTampered, BadSignature, Forbidden, InvalidInput, SplitView
from exchange.model import NodeId
from exchange.protocol.roster import Federation
from exchange.service.audit.keeper import LogKeeper
from exchange.service.audit.witness_failures import WitnessFailures
from exchange.service.transport import PeerTransport
from exchange.store import AuditBuffer, Store, audit_split_views, audit_witnessed
from exchange.store.workers import Role

log = logging.getLogger("exchange.audit")

# Split views kept as evidence per partner log, at most: the first proves the log signed two
# histories; more, each costing the log one signature, would only grow this node's tables and
# its audit log. Past the bound each is still refused (409) and logged, but not stored.
SWAP_TRIES = 3  # judgements of one checkpoint against what other workers recorded meanwhile
MAX_SPLIT_VIEWS = 16


@dataclass(frozen=True)
class WitnessedLog:
    """The largest checkpoint of a partner's log this node has co-signed."""

    node: str
    size: int
    root: str  # base64url
    at: str
    note: str


@dataclass(frozen=True)
class CaughtSplitView:
    """Evidence that a partner showed two histories: both notes are signed by its log."""

    node: str
    at: str
    detail: str
    seen: str
    shown: str


@dataclass(frozen=True)
class WitnessedView:
    """What this node has witnessed of its partners' logs, and every split view it caught."""

    logs: list[WitnessedLog]
    split_views: list[CaughtSplitView]
    c2sp_logs: list[WitnessedLog] = field(default_factory=list)  # foreign C2SP logs; `node` is the origin

    def to_json(self) -> dict[str, list[dict[str, Any]]]:
        """As the API shows it."""
        return {
            "c2sp_logs": [
                {"origin": w.node, "size": w.size, "root": w.root, "at": w.at, "note": w.note} for w in self.c2sp_logs
            ],
            "logs": [{"node": w.node, "size": w.size, "root": w.root, "at": w.at, "note": w.note} for w in self.logs],
            "split_views": [
                {"node": s.node, "at": s.at, "detail": s.detail, "seen": s.seen, "shown": s.shown}
                for s in self.split_views
            ],
        }


class Witness:
    """This node as a witness of its partners' logs, and as a log that its partners witness."""

    def __init__(
        self,
        me: str,
        store: Store,
        key: SigningKey,
        fed: Federation,
        keeper: LogKeeper,
        transport: PeerTransport,
        partners: Callable[[], Sequence[str]],
        *,
        per_log: int = DEFAULT_WITNESSES,
        c2sp: Callable[[StoredCheckpoint], Awaitable[dict[str, str]]] | None = None,
        failures: WitnessFailures | None = None,
    ) -> None:
        self.me = me
        self.name = witness_name(me)
        self.store = store
        self.fed = fed
        self.keeper = keeper
        self._key = key
        self._transport = transport
        self._partners = partners
        self.per_log = per_log  # witnesses per log, federation-wide (exchange.audit.witness_sets)
        self._locks: dict[str, asyncio.Lock] = {}
        # As a log: pushes to one witness go one at a time, and never a smaller checkpoint than
        # one it may have seen, which it would only answer `stale`. Other workers keep their own
        # (exchange.store.workers), so a witness may still get a smaller one late: not an alarm.
        self._push_locks: dict[str, asyncio.Lock] = {}
        self._pushed: dict[str, int] = {}
        # C2SP tlog-witnesses of our log, asked beside the partners each round (TlogPush.push).
        self.c2sp = c2sp
        # failed pulls and pushes, logged and counted (GET /metrics); the C2SP pushes' too (TlogPush)
        self.failures = failures if failures is not None else WitnessFailures(me)
        # Split views (log, hash of what it showed) logged this round: one recorded already is
        # logged again in each round that sees it, but once, however often the log shows it.
        self._told: set[tuple[str, str]] = set()

    # -- witness sets (docs/audit.md, section 12) ------------------------------------------

    def sets(self) -> WitnessSets:
        """Every log's designated witnesses, from the roster held now (a live install moves them)."""
        return witness_sets(self.fed.node_ids, self.per_log)

    async def prepared_sets(self) -> WitnessSets:
        """`sets`, computed in a thread when the roster is new to this process: n² hashes (about
        0.1 s at 200 nodes) would otherwise stall the event loop once per roster."""
        return await asyncio.to_thread(self.sets)

    def my_witnesses(self) -> list[str]:
        """The designated witnesses of our log: we push our checkpoints to these only."""
        return list(self.sets().witnesses(self.me))

    def logs_witnessed(self) -> list[str]:
        """The logs we are a designated witness of: we pull these only (any partner may still push)."""
        return list(self.sets().witnessed_by(self.me))

    # -- as a witness -----------------------------------------------------------------------

    async def seen(self, node: str) -> Seen | None:
        """The largest checkpoint of `node`'s log this node has checked, if any."""
        async with self.store.read() as conn:
            row = (await conn.execute(sa.select(audit_witnessed).where(audit_witnessed.c.node == node))).first()
        return None if row is None else Seen(int(row.size), as_bytes(row.root), row.note, row.at)

    def _open(self, node: str, note_text: str, *, new: bool = False) -> tuple[Checkpoint, Note]:
        """The checkpoint, signed with a key of `node` that checks what it signed before (across
        rotations), or, if `new` to this witness, with one that signs new items (`is_new`)."""
        key = key_that_signed(note_text, log_origin(node), self.fed.signing_keys(node, stored=not new))
        try:
            return open_logs_checkpoint(node, note_text, key, self.fed.signing_keys(node, stored=True))
        except BadSignature as exc:
            if not new:
                raise
            raise BadSignature(
                f"{exc.detail}: a checkpoint new to this witness must be signed with {node}'s active or "
                "retiring key, not a verify-only one"
            ) from exc

    def use_key(self, key: SigningKey) -> None:
        """Co-sign with `key` from now on (this node's signing key after a rotation)."""
        self._key = key

    async def cosign(self, peer: str, body: Any) -> CosignAnswer:
        """Push: `peer` asks this node to co-sign a checkpoint of its own log."""
        request = parse_cosign_request(body)
        return await self._witness(peer, request.checkpoint, request.old_size, request.proof)

    async def _witness(self, node: str, note_text: str, old_size: int, proof: list[bytes]) -> CosignAnswer:
        cp, note = self._open(node, note_text)
        async with self._locks.setdefault(node, asyncio.Lock()):  # this process's; the swap below, all workers'
            for _ in range(SWAP_TRIES):
                seen = await self.seen(node)
                if is_new(seen, cp):
                    self._open(node, note_text, new=True)
                verdict = split_detail(seen, cp, old_size, proof)
                if isinstance(verdict, dict):
                    return verdict
                if verdict is not None and seen is not None:
                    await self._split_view(node, seen, cp, note.render(), verdict)
                if await self._remember(node, cp, note.render(), seen):
                    break
            else:  # other workers kept moving it: judged again at the log's next push
                return {"status": "stale", "size": seen.size if seen is not None else 0}
        line = cosign(note.text, self.name, self._key, int(utc_now().timestamp())).line()
        return {"status": "cosigned", "cosignature": line}

    async def _remember(self, node: str, cp: Checkpoint, note: str, seen: Seen | None) -> bool:
        """Record `cp` as the largest checkpoint of `node`'s log checked here, if what is recorded
        is still `seen` (a compare-and-swap): False if another worker of this node (PostgreSQL)
        recorded another one since `seen` was read, and `cp` must be judged again against it.
        Without it, two workers could each co-sign one of two checkpoints of one size with
        different roots, pushed at once. Write transactions of all workers are serialised (the
        writer's lock), so the read and the update below see no other worker's in between."""
        at = timestamp()

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> bool:
            row = (
                await conn.execute(
                    sa.select(audit_witnessed.c.size, audit_witnessed.c.root).where(audit_witnessed.c.node == node)
                )
            ).first()
            now = None if row is None else (int(row.size), as_bytes(row.root))
            if now != (None if seen is None else (seen.size, seen.root)):
                return False
            values = {"size": cp.size, "root": cp.root, "note": note, "at": at}
            if row is None:
                await conn.execute(sa.insert(audit_witnessed).values(node=node, **values))
            else:
                await conn.execute(sa.update(audit_witnessed).where(audit_witnessed.c.node == node).values(**values))
            return True

        swapped: bool = await self.store.write(job)
        return swapped

    async def _split_view(self, node: str, seen: Seen, cp: Checkpoint, shown: str, detail: str) -> NoReturn:
        """Record and audit the evidence (both notes are signed by the log), then raise SplitView."""
        message = split_message(node, seen, cp, detail)
        shown_hash = hashlib.sha256(shown.encode()).hexdigest()
        at = timestamp()

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> str:
            known = await conn.scalar(
                sa.select(audit_split_views.c.n).where(
                    audit_split_views.c.node == node, audit_split_views.c.shown_hash == shown_hash
                )
            )
            if known is not None:
                return "known"
            kept = await conn.scalar(
                sa.select(sa.func.count()).select_from(audit_split_views).where(audit_split_views.c.node == node)
            )
            if (kept or 0) >= MAX_SPLIT_VIEWS:
                return "over the bound"
            await conn.execute(
                sa.insert(audit_split_views).values(
                    node=node, seen=seen.note, shown=shown, shown_hash=shown_hash, detail=detail, at=at
                )
            )
            audit.add(split_view_entry(node, seen, cp, detail, at))
            return "stored"

        kept = await self.store.write(job)
        told = (node, shown_hash) in self._told
        if kept != "over the bound":  # at most the 16 kept per log
            self._told.add((node, shown_hash))
        if kept == "stored":
            log.error("%s: %s", self.me, message)
        elif kept == "known" and not told:  # still going on: an operator must not miss it
            log.error("%s: %s (seen again: recorded already)", self.me, message)
        elif kept == "over the bound":  # refused and logged, not stored (docs/audit.md, 4)
            log.error(
                "%s: %s (not stored: %d split views of %s are kept already)", self.me, message, MAX_SPLIT_VIEWS, node
            )
        raise SplitView(message)

    async def pull(self, node: str) -> str:
        """Pull: fetch `node`'s latest checkpoint and a proof from what we saw; co-sign and return it."""
        seen = await self.seen(node)
        answer = await self._transport.fetch(NodeId(node), f"{CHECKPOINT_PATH}?from={seen.size if seen else 0}")
        if not isinstance(answer, dict) or not isinstance(answer.get("checkpoint"), str):
            nothing = shown_nothing(seen, node, answer)
            if nothing is not None and seen is not None:
                await self._split_view(node, seen, nothing[0], nothing[1], NO_CHECKPOINT)
            return "nothing to witness"
        cp, note = self._open(node, answer["checkpoint"])
        back = went_back(seen, cp)
        if back is not None and seen is not None:
            await self._split_view(node, seen, cp, note.render(), back)
        mine = signed_by(answer["checkpoint"], self.name)
        if seen is not None and (cp.size, cp.root) == (seen.size, seen.root) and mine:
            return "up to date"
        result = await self._witness(node, answer["checkpoint"], seen.size if seen else 0, parse_proof(answer))
        if result["status"] != "cosigned":
            return str(result["status"])
        await self._transport.send(NodeId(node), COSIGNATURES_PATH, cosignature_body(cp.size, result["cosignature"]))
        return "cosigned"

    async def view(self) -> WitnessedView:
        """What this node has witnessed of its partners' logs, and every split view it caught."""
        async with self.store.read() as conn:
            seen = (await conn.execute(sa.select(audit_witnessed).order_by(audit_witnessed.c.node))).all()
            splits = (await conn.execute(sa.select(audit_split_views).order_by(audit_split_views.c.n))).all()
        return WitnessedView(
            [WitnessedLog(r.node, int(r.size), b64e(as_bytes(r.root)), r.at, r.note) for r in seen],
            [CaughtSplitView(r.node, r.at, r.detail, r.seen, r.shown) for r in splits],
        )

    # -- as a log ---------------------------------------------------------------------------

    async def store_cosignature(self, peer: str, body: Any) -> None:
        """Pull's return leg: `peer` sends its cosignature of one of our checkpoints. Only our
        designated witnesses pull us: a line from any other roster node is refused, or enough of
        them could push the note past what a verifier parses (note.MAX_SIGNATURES)."""
        if peer not in self.my_witnesses():
            raise Forbidden(f"{peer} is not a designated witness of {self.me}'s log: its cosignature is not kept")
        size, line = parse_cosignature(body)
        cp = await self.keeper.checkpoint_at(size)
        sig = parse_signature_line(line.rstrip("\n"))
        verify_cosignature(parse_note(cp.note).text, sig, witness_name(peer), self.fed.verify_key(peer))
        check_cosignature_time(sig, cp.at, int(utc_now().timestamp()))
        await self.keeper.add_cosignature(cp.size, peer, sig.line())

    async def request_cosignatures(
        self, cp: StoredCheckpoint, witnesses: Sequence[str] | None = None
    ) -> dict[str, str]:
        """Push `cp` to each witness (default: our designated ones); return witness -> outcome."""
        names = list(self.my_witnesses() if witnesses is None else witnesses)
        outcomes = await asyncio.gather(*(self._ask(w, cp) for w in names))
        return dict(zip(names, outcomes, strict=True))

    async def _ask(self, witness: str, cp: StoredCheckpoint) -> str:
        if witness in cp.witnesses:
            return "cosigned"
        async with self._push_locks.setdefault(witness, asyncio.Lock()):
            # Neither smaller than one put to it before, nor than our latest, which it may have pulled.
            latest = await self.keeper.latest()
            floor = max(self._pushed.get(witness, 0), latest.size if latest else 0)
            if cp.size < floor:
                return f"superseded by checkpoint {floor}"
            self._pushed[witness] = cp.size
            return await self._push(witness, cp)

    async def _push(self, witness: str, cp: StoredCheckpoint) -> str:
        text = parse_note(cp.note).text
        try:
            old = await self.keeper.cosigned_size(witness)
            for _ in range(3):
                if old > cp.size:
                    return f"superseded: {witness} co-signed checkpoint {old} already"
                proof = await self.keeper.consistency(old, cp.size) if 0 < old < cp.size else []
                answer = await self._transport.send(NodeId(witness), COSIGN_PATH, cosign_request(cp.note, old, proof))
                status = answer.get("status") if isinstance(answer, dict) else None
                if status == "cosigned":
                    sig = parse_signature_line(str(answer["cosignature"]).rstrip("\n"))
                    verify_cosignature(text, sig, witness_name(witness), self.fed.verify_key(witness))
                    check_cosignature_time(sig, cp.at, int(utc_now().timestamp()))
                    await self.keeper.add_cosignature(cp.size, witness, sig.line())
                    return "cosigned"
                if status != "stale" or type(answer.get("size")) is not int:
                    raise InvalidInput(f"unexpected answer from {witness}")
                old = answer["size"]
            return "stale"
        except Exception as exc:  # one witness's failure must not stop the others
            return self.failures.record(witness, "push", exc, f"{witness} did not co-sign checkpoint {cp.size}")

    # -- the periodic round -----------------------------------------------------------------

    async def tick(self) -> dict[str, Any]:
        """Sign a checkpoint if the log grew, ask our designated witnesses to co-sign it, and pull
        the logs we are a designated witness of: O(k) requests, whatever the federation's size."""
        await self.prepared_sets()
        partners, logs = self.my_witnesses(), self.logs_witnessed()
        outcome: dict[str, Any] = {}
        self.new_round()
        try:
            cp = await self.keeper.checkpoint()
        except AuditTampered as exc:
            log.error("%s: not signing: %s", self.me, exc.detail)
            cp = None
        if cp is not None and partners:
            outcome["cosign"] = await self.request_cosignatures(cp, partners)
        if cp is not None and self.c2sp is not None:
            outcome["c2sp"] = await self.c2sp(cp)
        pulled = await asyncio.gather(*(self._pull_quietly(p) for p in logs))
        outcome["pull"] = dict(zip(logs, pulled, strict=True))
        return outcome

    def new_round(self) -> None:
        """From now on, a split view recorded already is logged again once (each round, every worker)."""
        self._told = set()

    async def _pull_quietly(self, node: str) -> str:
        try:
            return await self.pull(node)
        except Exception as exc:  # a partner's failure is reported, never fatal to the round
            return self.failures.record(node, "pull", exc, f"could not witness {node}'s log")

    async def run(self, interval: float = CHECKPOINT_INTERVAL) -> None:
        """A round every `interval` seconds, the first one an interval after start.

        Not at start: partners starting together would only find each other down, and a
        checkpoint on demand (or for a trace) is signed at once anyway.
        """
        # Workers sharing a database: one of them runs the round (signs, witnesses), taken over
        # by another when it dies (exchange.store.workers).
        role = Role(self.store.engine, "audit-round")
        await self.prepared_sets()  # before any request asks for them
        try:
            while True:
                await asyncio.sleep(interval)  # a timer between rounds, not a wait for another task
                await self.prepared_sets()  # in every worker: a roster installed since moves them
                self.new_round()  # workers that do not run the round are pushed to as witnesses too
                try:
                    if await role.held():
                        await self.tick()
                except Exception:
                    if not stop_requested():  # else no failure: the node stops (below)
                        log.exception("%s: audit witnessing round failed", self.me)
                if stop_requested():  # cancelled in a wait that ended otherwise (exchange.clock)
                    raise asyncio.CancelledError
        finally:
            await role.release()
