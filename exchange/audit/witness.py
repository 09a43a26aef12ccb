"""Witnessing: co-sign partners' checkpoints after a consistency check, ask partners to co-sign
ours, and catch a partner that shows two inconsistent histories (a split view).

It follows c2sp.org/tlog-witness, carried as JSON over the mutual-TLS federation API:

- push: a log POSTs `/fed/v1/audit/cosign` with `{"checkpoint", "old_size", "proof"}`, where
  `old_size` is the size it believes the witness last saw and `proof` a consistency proof from
  it. The witness answers `{"status": "cosigned", "cosignature": <line>}`, or `{"status":
  "stale", "size": n}` if it last saw size n (tlog-witness answers 409 there; a 200 keeps
  routine retries out of the audit trail of refused requests), or refuses with 409 if the
  proof fails: a split view, which it records, audits and never co-signs.
- pull: a witness GETs `/fed/v1/audit/checkpoint?from=<size it saw>` from the log, checks the
  same way, and POSTs its cosignature back to `/fed/v1/audit/cosignatures`. Pulling catches a
  log that stops asking.

A witness trusts the first checkpoint it sees of a log (trust on first use) and from then on
only checkpoints that extend it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit.checkpoint import (
    Checkpoint,
    cosign,
    log_origin,
    open_checkpoint,
    verify_cosignature,
    witness_name,
)
from exchange.audit.keeper import LogKeeper, StoredCheckpoint, as_bytes
from exchange.audit.note import Note, parse_note, parse_signature_line
from exchange.clock import timestamp, utc_now
from exchange.crypto import SigningKey, b64d, b64e
from exchange.errors import AuditTampered, InvalidInput, PeerError
from exchange.merkle import ProofError, verify_consistency
from exchange.protocol.roster import Federation
from exchange.store import AuditBuffer, Store, audit_split_views, audit_witnessed

log = logging.getLogger("exchange.audit")

CHECKPOINT_INTERVAL = 60.0  # seconds between rounds of signing, asking and pulling
COSIGN_PATH = "/fed/v1/audit/cosign"
COSIGNATURES_PATH = "/fed/v1/audit/cosignatures"
CHECKPOINT_PATH = "/fed/v1/audit/checkpoint"

Fetch = Callable[[str, str], Awaitable[Any]]  # (node, path) -> JSON
Send = Callable[[str, str, Any], Awaitable[Any]]  # (node, path, body) -> JSON


class SplitView(AuditTampered):
    """A log showed a checkpoint that does not extend one this node had witnessed."""

    title = "Split view"


@dataclass(frozen=True)
class Seen:
    """The largest checkpoint of a partner's log that this node has checked and co-signed."""

    size: int
    root: bytes
    note: str
    at: str


def _proof(body: dict[str, Any]) -> list[bytes]:
    raw = body.get("proof", [])
    if not isinstance(raw, list) or len(raw) > 128 or not all(isinstance(p, str) for p in raw):
        raise InvalidInput("proof must be a list of base64url hashes")
    return [b64d(p) for p in raw]


class Witness:
    """This node as a witness of its partners' logs, and as a log that its partners witness."""

    def __init__(
        self,
        me: str,
        store: Store,
        key: SigningKey,
        fed: Federation,
        keeper: LogKeeper,
        fetch: Fetch,
        send: Send,
        partners: Callable[[], Sequence[str]],
    ) -> None:
        self.me = me
        self.name = witness_name(me)
        self.store = store
        self.fed = fed
        self.keeper = keeper
        self._key = key
        self._fetch = fetch
        self._send = send
        self._partners = partners
        self._locks: dict[str, asyncio.Lock] = {}

    # -- as a witness -----------------------------------------------------------------------

    async def seen(self, node: str) -> Seen | None:
        """The largest checkpoint of `node`'s log this node has checked, if any."""
        async with self.store.read() as conn:
            row = (await conn.execute(sa.select(audit_witnessed).where(audit_witnessed.c.node == node))).first()
        return None if row is None else Seen(int(row.size), as_bytes(row.root), row.note, row.at)

    def _open(self, node: str, note_text: str) -> tuple[Checkpoint, Note]:
        """The checkpoint, signed by `node` for its own log; only the log's own signature lines kept."""
        cp, note = open_checkpoint(note_text, self.fed.verify_key(node), log_origin(node))
        return cp, Note(note.text, tuple(note.by(cp.origin)))

    async def cosign(self, peer: str, body: Any) -> dict[str, Any]:
        """Push: `peer` asks this node to co-sign a checkpoint of its own log."""
        if not isinstance(body, dict) or not isinstance(body.get("checkpoint"), str):
            raise InvalidInput('the body must be {"checkpoint": ..., "old_size": ..., "proof": [...]}')
        old = body.get("old_size", 0)
        if type(old) is not int or old < 0:
            raise InvalidInput("old_size must be a non-negative integer")
        return await self._witness(peer, body["checkpoint"], old, _proof(body))

    async def _witness(self, node: str, note_text: str, old_size: int, proof: list[bytes]) -> dict[str, Any]:
        cp, note = self._open(node, note_text)
        async with self._locks.setdefault(node, asyncio.Lock()):
            seen = await self.seen(node)
            if seen is not None:
                if cp.size < seen.size or old_size != seen.size:
                    return {"status": "stale", "size": seen.size}
                try:
                    verify_consistency(seen.size, cp.size, proof, seen.root, cp.root)
                except ProofError as exc:
                    await self._split_view(node, seen, cp, note.render(), str(exc))
            await self._remember(node, cp, note.render())
        line = cosign(note.text, self.name, self._key, int(utc_now().timestamp())).line()
        return {"status": "cosigned", "cosignature": line}

    async def _remember(self, node: str, cp: Checkpoint, note: str) -> None:
        at = timestamp()

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            values = {"size": cp.size, "root": cp.root, "note": note, "at": at}
            done = await conn.execute(sa.update(audit_witnessed).where(audit_witnessed.c.node == node).values(**values))
            if done.rowcount == 0:
                await conn.execute(sa.insert(audit_witnessed).values(node=node, **values))

        await self.store.write(job)

    async def _split_view(self, node: str, seen: Seen, cp: Checkpoint, shown: str, detail: str) -> NoReturn:
        """Record and audit the evidence (both notes are signed by the log), then raise SplitView."""
        message = (
            f"split view: {node} showed a checkpoint of size {cp.size} that does not extend the checkpoint "
            f"of size {seen.size} this node witnessed ({detail})"
        )
        shown_hash = hashlib.sha256(shown.encode()).hexdigest()
        at = timestamp()

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> bool:
            known = await conn.scalar(
                sa.select(audit_split_views.c.n).where(
                    audit_split_views.c.node == node, audit_split_views.c.shown_hash == shown_hash
                )
            )
            if known is not None:
                return False
            await conn.execute(
                sa.insert(audit_split_views).values(
                    node=node, seen=seen.note, shown=shown, shown_hash=shown_hash, detail=detail, at=at
                )
            )
            audit.add(
                {
                    "event": "audit.split_view",
                    "at": at,
                    "node": node,
                    "seen_size": seen.size,
                    "seen_root": b64e(seen.root),
                    "shown_size": cp.size,
                    "shown_root": b64e(cp.root),
                    "detail": detail,
                }
            )
            return True

        if await self.store.write(job):
            log.error("%s: %s", self.me, message)
        raise SplitView(message)

    async def pull(self, node: str) -> str:
        """Pull: fetch `node`'s latest checkpoint and a proof from what we saw; co-sign and return it."""
        seen = await self.seen(node)
        answer = await self._fetch(node, f"{CHECKPOINT_PATH}?from={seen.size if seen else 0}")
        if not isinstance(answer, dict) or not isinstance(answer.get("checkpoint"), str):
            return "nothing to witness"
        cp, note = self._open(node, answer["checkpoint"])
        if seen is not None and cp.size < seen.size:
            await self._split_view(node, seen, cp, note.render(), f"it went back to size {cp.size}")
        mine = any(s.name == self.name for s in parse_note(answer["checkpoint"]).signatures)
        if seen is not None and (cp.size, cp.root) == (seen.size, seen.root) and mine:
            return "up to date"
        result = await self._witness(node, answer["checkpoint"], seen.size if seen else 0, _proof(answer))
        if result["status"] != "cosigned":
            return str(result["status"])
        await self._send(node, COSIGNATURES_PATH, {"size": cp.size, "cosignature": result["cosignature"]})
        return "cosigned"

    async def view(self) -> dict[str, Any]:
        """What this node has witnessed of its partners' logs, and every split view it caught."""
        async with self.store.read() as conn:
            seen = (await conn.execute(sa.select(audit_witnessed).order_by(audit_witnessed.c.node))).all()
            splits = (await conn.execute(sa.select(audit_split_views).order_by(audit_split_views.c.n))).all()
        return {
            "logs": [
                {"node": r.node, "size": int(r.size), "root": b64e(as_bytes(r.root)), "at": r.at, "note": r.note}
                for r in seen
            ],
            "split_views": [
                {"node": r.node, "at": r.at, "detail": r.detail, "seen": r.seen, "shown": r.shown} for r in splits
            ],
        }

    # -- as a log ---------------------------------------------------------------------------

    async def store_cosignature(self, peer: str, body: Any) -> None:
        """Pull's return leg: `peer` sends its cosignature of one of our checkpoints."""
        if (
            not isinstance(body, dict)
            or type(body.get("size")) is not int
            or not isinstance(body.get("cosignature"), str)
        ):
            raise InvalidInput('the body must be {"size": ..., "cosignature": ...}')
        cp = await self.keeper.checkpoint_at(body["size"])
        sig = parse_signature_line(body["cosignature"].rstrip("\n"))
        verify_cosignature(parse_note(cp.note).text, sig, witness_name(peer), self.fed.verify_key(peer))
        await self.keeper.add_cosignature(cp.size, peer, sig.line())

    async def request_cosignatures(
        self, cp: StoredCheckpoint, witnesses: Sequence[str] | None = None
    ) -> dict[str, str]:
        """Push `cp` to each witness (default: every partner); return witness -> outcome."""
        names = list(self._partners() if witnesses is None else witnesses)
        outcomes = await asyncio.gather(*(self._ask(w, cp) for w in names))
        return dict(zip(names, outcomes, strict=True))

    async def _ask(self, witness: str, cp: StoredCheckpoint) -> str:
        if witness in cp.witnesses:
            return "cosigned"
        text = parse_note(cp.note).text
        try:
            old = await self.keeper.cosigned_size(witness)
            for _ in range(3):
                if old > cp.size:
                    return f"refused: {witness} already co-signed size {old}, beyond {cp.size}"
                proof = await self.keeper.consistency(old, cp.size) if 0 < old < cp.size else []
                body = {"checkpoint": cp.note, "old_size": old, "proof": [b64e(p) for p in proof]}
                answer = await self._send(witness, COSIGN_PATH, body)
                status = answer.get("status") if isinstance(answer, dict) else None
                if status == "cosigned":
                    sig = parse_signature_line(str(answer["cosignature"]).rstrip("\n"))
                    verify_cosignature(text, sig, witness_name(witness), self.fed.verify_key(witness))
                    await self.keeper.add_cosignature(cp.size, witness, sig.line())
                    return "cosigned"
                if status != "stale" or type(answer.get("size")) is not int:
                    return f"unexpected answer from {witness}"
                old = answer["size"]
            return "stale"
        except Exception as exc:  # one witness's failure must not stop the others
            # A partner that is down is routine (the next round retries); a refusal is not.
            down = isinstance(exc, PeerError) and " answered " not in exc.detail
            log.log(
                logging.INFO if down else logging.WARNING,
                "%s: %s did not co-sign checkpoint %d: %s",
                self.me,
                witness,
                cp.size,
                exc,
            )
            return f"{type(exc).__name__}: {getattr(exc, 'detail', exc)}"

    # -- the periodic round -----------------------------------------------------------------

    async def tick(self) -> dict[str, Any]:
        """Sign a checkpoint if the log grew, ask partners to co-sign it, and pull theirs."""
        partners = list(self._partners())
        outcome: dict[str, Any] = {}
        try:
            cp = await self.keeper.checkpoint()
        except AuditTampered as exc:
            log.error("%s: not signing: %s", self.me, exc.detail)
            cp = None
        if cp is not None and partners:
            outcome["cosign"] = await self.request_cosignatures(cp, partners)
        pulled = await asyncio.gather(*(self._pull_quietly(p) for p in partners))
        outcome["pull"] = dict(zip(partners, pulled, strict=True))
        return outcome

    async def _pull_quietly(self, node: str) -> str:
        try:
            return await self.pull(node)
        except Exception as exc:  # a partner's failure is reported, never fatal to the round
            return f"{type(exc).__name__}: {getattr(exc, 'detail', exc)}"

    async def run(self, interval: float = CHECKPOINT_INTERVAL) -> None:
        """A round every `interval` seconds, the first one an interval after start.

        Not at start: partners starting together would only find each other down, and a
        checkpoint on demand (or for a trace) is signed at once anyway.
        """
        while True:
            await asyncio.sleep(interval)  # a timer between rounds, not a wait for another task
            try:
                await self.tick()
            except Exception:
                log.exception("%s: audit witnessing round failed", self.me)
