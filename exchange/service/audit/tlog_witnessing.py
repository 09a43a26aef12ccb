"""This node as a C2SP tlog-witness (c2sp.org/tlog-witness) of foreign logs its operator configured:
`POST /c2sp/tlog-witness/add-checkpoint` (docs/audit.md, section 4).

The text protocol and the witness's rules are pure (`exchange.audit.tlog_witness`); this is the part
that remembers the latest checkpoint it co-signed of each log (`tlog_witnessed`) and co-signs with
the node's roster Ed25519 key under its witness name `exchange/witness/<node>` (cosignature/v1,
type 0x04); after a live rotation of that key, with the new one (`use_key`), so its verifier key
changes and the logs' operators configure the new one. A checkpoint is recorded before its
cosignature is returned, by compare-and-swap on the size and root read, so two requests racing for
one log cannot both advance it (the loser gets 409 with the size the winner recorded).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit.checkpoint import ORIGIN_PREFIX, cosign, witness_name
from exchange.audit.keeper import as_bytes
from exchange.audit.note import Note
from exchange.audit.tlog_witness import (
    LOG_KEY_TYPE,
    SIZE_CONTENT_TYPE,
    WITNESS_KEY_TYPE,
    LogCheckpoint,
    Refusal,
    cosignature_body,
    judge,
    open_request,
    parse_add_checkpoint,
    parse_verifier_key,
    verifier_key,
)
from exchange.clock import timestamp, utc_now
from exchange.config import TlogLogConfig
from exchange.crypto import SigningKey, VerifyKey
from exchange.errors import ConfigError, InvalidInput
from exchange.store import AuditBuffer, Job, Store
from exchange.store.tables import tlog_witnessed

log = logging.getLogger("exchange.audit")

TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class TlogAnswer:
    """What the route answers: status, body and content type, and why (for the audit of a refusal)."""

    status: int
    body: bytes
    content_type: str
    reason: str


@dataclass(frozen=True)
class TlogWitnessed:
    """The latest checkpoint of a foreign log this node co-signed."""

    origin: str
    size: int
    root: bytes
    note: str
    at: str


def foreign_logs(configs: Sequence[TlogLogConfig]) -> dict[str, tuple[str, VerifyKey]]:
    """origin -> (key name, Ed25519 key) of the configured foreign logs; ConfigError if a verifier
    key is malformed, of another type than 0x01, or an origin is configured twice."""
    logs: dict[str, tuple[str, VerifyKey]] = {}
    for config in configs:
        try:
            vkey = parse_verifier_key(config.vkey, LOG_KEY_TYPE)
        except InvalidInput as exc:
            raise ConfigError(f"tlog_logs: the log {config.origin!r}: {exc.detail}") from exc
        if config.origin in logs:
            raise ConfigError(f"tlog_logs: the log {config.origin!r} is configured twice")
        if config.origin.startswith(ORIGIN_PREFIX):
            # A federation member's log is witnessed by the federation's own rules (its roster key,
            # forks kept as evidence): co-signed here under another key, this node's cosignature
            # would vouch for whatever checkpoints that key signs of the member's log.
            raise ConfigError(
                f"tlog_logs: {config.origin!r} names a federation member's audit log ({ORIGIN_PREFIX}...),"
                " which this node witnesses through the federation, not as a foreign log"
            )
        logs[config.origin] = (vkey.name, vkey.key)
    return logs


def _answer(refusal: Refusal) -> TlogAnswer:
    body = refusal.body or (refusal.reason + "\n").encode()
    return TlogAnswer(refusal.status, body, refusal.content_type, refusal.reason)


class TlogWitnessing:
    """Co-sign checkpoints of the configured foreign logs that extend what this node co-signed."""

    def __init__(self, me: str, store: Store, key: SigningKey, logs: Sequence[TlogLogConfig]) -> None:
        self.name = witness_name(me)
        self.store = store
        self._key = key
        self._logs = foreign_logs(logs)

    def use_key(self, key: SigningKey) -> None:
        """Co-sign with `key` from now on, and show its verifier key (this node's signing key after a
        rotation, docs/protocol.md 6a.13): the roster no longer lists the old one as current."""
        self._key = key

    @property
    def vkey(self) -> str:
        """This node's witness verifier key, for the operators of the logs it witnesses."""
        return verifier_key(self.name, WITNESS_KEY_TYPE, self._key.verify_key).render()

    @property
    def origins(self) -> list[str]:
        """The origins of the logs this node witnesses."""
        return sorted(self._logs)

    async def add_checkpoint(self, body: bytes) -> TlogAnswer:
        """One add-checkpoint request: 200 with a cosignature line, or the refusal the specification
        gives (400, 403, 404, 409, 422); nothing is recorded unless the answer is 200."""
        try:
            request = parse_add_checkpoint(body)
        except InvalidInput as exc:
            return TlogAnswer(400, f"{exc.detail}\n".encode(), TEXT, exc.detail)
        opened = open_request(request, self._logs)
        if isinstance(opened, Refusal):
            return _answer(opened)
        name = self._logs[opened.origin][0]
        note = Note(request.note.text, tuple(request.note.by(name)))  # the log's lines only
        verdict = await self.store.write(self._advance(request.old_size, request.proof, opened, note.render()))
        if verdict is not None:
            if verdict.split_view:  # the log signed both notes: evidence against it, whoever sent them
                log.error("tlog-witness: log %r: %s", opened.origin, verdict.reason)
            elif verdict.status == 422:  # a proof anyone can get wrong: the request's fault, not the log's
                log.warning("tlog-witness: log %r: a request refused: %s", opened.origin, verdict.reason)
            return _answer(verdict)
        line = cosign(note.text, self.name, self._key, int(utc_now().timestamp()))
        return TlogAnswer(200, cosignature_body([line]), TEXT, "cosigned")

    def _advance(self, old_size: int, proof: list[bytes], cp: LogCheckpoint, note: str) -> Job[Refusal | None]:
        at = timestamp()

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> Refusal | None:
            where = tlog_witnessed.c.origin == cp.origin
            row = (await conn.execute(sa.select(tlog_witnessed.c.size, tlog_witnessed.c.root).where(where))).first()
            seen = None if row is None else (int(row.size), as_bytes(row.root))
            verdict = judge(old_size, proof, cp, seen)
            if verdict is not None:
                return verdict
            values = {"size": cp.size, "root": cp.root, "note": note, "at": at}
            if seen is None:
                await conn.execute(sa.insert(tlog_witnessed).values(origin=cp.origin, **values))
                return None
            swapped = await conn.execute(
                sa.update(tlog_witnessed)
                .where(where, tlog_witnessed.c.size == seen[0], tlog_witnessed.c.root == seen[1])
                .values(**values)
            )
            if swapped.rowcount != 1:  # another writer advanced it between the read and the swap
                size = await conn.scalar(sa.select(tlog_witnessed.c.size).where(where))
                return Refusal(409, "the log advanced meanwhile", f"{size}\n".encode(), SIZE_CONTENT_TYPE)
            return None

        return job

    async def witnessed(self) -> list[TlogWitnessed]:
        """The latest checkpoint this node co-signed of each foreign log, by origin."""
        async with self.store.read() as conn:
            rows = (await conn.execute(sa.select(tlog_witnessed).order_by(tlog_witnessed.c.origin))).all()
        return [TlogWitnessed(r.origin, int(r.size), as_bytes(r.root), r.note, r.at) for r in rows]
