"""This node's own audit log: follow the audit table, sign checkpoints, serve entries, proofs, exports.

The keeper holds the log's frontier (O(log n) hashes) in memory and extends it from the table
as soon as the store's writer commits new entries, so what it signs is what this process wrote,
whatever happens to the table later. On start it resumes from its latest signed checkpoint,
whose signature and root authenticate the stored frontier, and refuses (AuditTampered) a table
that does not hold that checkpoint's log, before anything is written under a reused index.
Proofs come from `TreeLevels`, built from the table at start and checked against the frontier.
The pure parts (stored checkpoints, resuming, the records written) are `exchange.audit.keeper`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit.checkpoint import Checkpoint, log_origin, open_checkpoint, sign_checkpoint
from exchange.audit.keeper import (
    BundleRecord,
    EvidenceJSON,
    ProvenEntry,
    StoredCheckpoint,
    as_bytes,
    entry_record,
    evidence_records,
    first_unmatched,
    header_record,
    mentions,
    resumed_frontier,
    shorter_than_signed,
    unsigned_entry_problem,
)
from exchange.audit.tree import TreeLevels, consistency_path, inclusion_path
from exchange.clock import timestamp
from exchange.crypto import SigningKey, b64e
from exchange.errors import AuditTampered, BadSignature, InvalidInput, NotFound
from exchange.merkle import HASH_SIZE, Frontier
from exchange.store import AuditBuffer, Store, audit_checkpoints, audit_cosignatures, audit_log

FOLLOW_RETRY_SECONDS = 1.0

log = logging.getLogger("exchange.audit")

PAGE = 5000  # rows per read
SCAN_LIMIT = 50_000  # rows one filtered listing request may scan before it returns a cursor

Match = Callable[[dict[str, Any]], bool]
Found = tuple[int, bytes, dict[str, Any]]  # (index, the entry as stored, the entry parsed)

_CHECKPOINT_COLUMNS = (
    audit_checkpoints.c.size,
    audit_checkpoints.c.root,
    audit_checkpoints.c.note,
    audit_checkpoints.c.at,
)


class LogKeeper:
    """The node's own audit log, as signed checkpoints and proofs over the `audit_log` table."""

    def __init__(self, me: str, store: Store, key: SigningKey, signed_roster: Any = None) -> None:
        self.me = me
        self.origin = log_origin(me)
        self.store = store
        self.signed_roster = signed_roster
        self._key = key
        self._frontier = Frontier()
        self._levels: TreeLevels | None = None
        self._lock = asyncio.Lock()  # reading the table into the frontier and levels
        self._sign_lock = asyncio.Lock()
        self._follower: asyncio.Task[None] | None = None
        self._reported: str | None = None

    @property
    def size(self) -> int:
        """How many entries the keeper has taken in (and can sign)."""
        return self._frontier.size

    # -- start, follow, stop ----------------------------------------------------------------

    async def start(self) -> None:
        """Check the table against the latest own checkpoint and resume from it, then follow the table.

        Raises AuditTampered, naming the problem, before anything is written: the node must not
        start on a log that lost signed entries (it would write new ones under their indices) or
        that no longer gives the roots it signed.
        """
        await self._resume()
        await self._tree()  # every leaf hash in the table against the signed root, once per start
        self._follower = asyncio.create_task(self._follow(), name=f"audit-follow-{self.me}")

    async def close(self) -> None:
        """Stop following the table."""
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None

    async def held(self) -> tuple[int, int]:
        """How many rows the audit table holds, and one past its largest index."""
        async with self.store.read() as conn:
            row = (await conn.execute(sa.select(sa.func.count(), sa.func.max(audit_log.c.idx)))).one()
        return int(row[0]), 0 if row[1] is None else int(row[1]) + 1

    async def _resume(self) -> None:
        """Resume from the latest own checkpoint, whose signature and root vouch for its frontier;
        then take in the entries after it, which no signature covers yet, each checked against
        its leaf hash and index (after a clean stop, only those that admin commands wrote since)."""
        latest = await self.latest()
        if latest is not None:
            shorter = shorter_than_signed(*await self.held(), latest.size)
            if shorter is not None:
                raise AuditTampered(
                    f"{shorter}; the node does not start, since it would write new entries under their "
                    "indices: restore the audit_log table from a backup"
                )
            async with self.store.read() as conn:
                blob = await conn.scalar(
                    sa.select(audit_checkpoints.c.frontier).where(audit_checkpoints.c.size == latest.size)
                )
            try:
                cp, _ = open_checkpoint(latest.note, self._key.verify_key, self.origin)
            except (InvalidInput, BadSignature) as exc:
                raise AuditTampered(
                    f"this node's stored checkpoint of size {latest.size} does not verify with its own key "
                    f"({exc.detail}): it was changed in the database"
                ) from exc
            if (cp.size, cp.root) != (latest.size, latest.root):
                raise AuditTampered(
                    f"this node's stored checkpoint row of size {latest.size} does not match the note it holds "
                    f"(size {cp.size}): it was changed in the database"
                )
            try:
                self._frontier = resumed_frontier(latest.note, as_bytes(blob or b""), self._key.verify_key, self.origin)
            except ValueError as exc:
                log.error(
                    "%s: own checkpoint %d cannot be resumed from (%s); re-reading the log", self.me, cp.size, exc
                )
                await self.catch_up(upto=cp.size)
                if self._frontier.size != cp.size or self._frontier.root() != cp.root:
                    raise AuditTampered(
                        f"the audit table does not give the root this node signed in checkpoint {cp.size}: "
                        "an entry was changed, removed or inserted (`exchange audit verify` names the first bad one)"
                    ) from exc
        await self._take_in_unsigned()

    async def _take_in_unsigned(self) -> None:
        """Take in the entries after the frontier, checking each one's leaf hash and index."""
        async with self._lock:
            target = self.store.audit_size
            while self._frontier.size < target:
                lo = self._frontier.size
                rows = await self._rows(lo, min(target, lo + PAGE), audit_log.c.entry, audit_log.c.leaf_hash)
                for idx, entry, leaf in rows:
                    if idx != self._frontier.size:
                        break
                    problem = unsigned_entry_problem(idx, as_bytes(entry), as_bytes(leaf))
                    if problem is not None:
                        raise AuditTampered(f"audit entry {idx}, which no checkpoint covers yet, {problem}")
                    self._frontier.append(as_bytes(leaf))
                if self._frontier.size == lo or self._frontier.size < min(target, lo + PAGE):
                    raise AuditTampered(f"audit entry {self._frontier.size} is missing from the table or malformed")

    async def _follow(self) -> None:
        """Take in each commit's entries; a failed read (the database away) is logged and retried."""
        while True:
            appended = self.store.audit_appended
            try:
                await self.catch_up()
            except AuditTampered as exc:
                self._report(exc)
            except Exception:
                log.exception("%s: the audit keeper could not read the log; retrying", self.me)
                await asyncio.sleep(FOLLOW_RETRY_SECONDS)
                continue
            await appended.wait()

    def _report(self, exc: AuditTampered) -> None:
        if exc.detail != self._reported:  # once per distinct problem, not once per commit
            log.error("%s: %s", self.me, exc.detail)
            self._reported = exc.detail

    async def _rows(self, lo: int, hi: int, *columns: Any) -> list[Any]:
        async with self.store.read() as conn:
            query = sa.select(audit_log.c.idx, *columns).where(audit_log.c.idx >= lo, audit_log.c.idx < hi)
            return list((await conn.execute(query.order_by(audit_log.c.idx))).all())

    async def catch_up(self, upto: int | None = None) -> int:
        """Take in the entries the writer has committed since; return how many."""
        async with self._lock:
            target = self.store.audit_size if upto is None else min(upto, self.store.audit_size)
            start = self._frontier.size
            while self._frontier.size < target:
                lo = self._frontier.size
                for idx, raw in await self._rows(lo, min(target, lo + PAGE), audit_log.c.leaf_hash):
                    leaf = as_bytes(raw)
                    if idx != self._frontier.size or len(leaf) != HASH_SIZE:
                        break
                    self._frontier.append(leaf)
                    if self._levels is not None:
                        self._levels.append(leaf)
                if self._frontier.size == lo or self._frontier.size < min(target, lo + PAGE):
                    raise AuditTampered(f"audit entry {self._frontier.size} is missing from the table or malformed")
            return self._frontier.size - start

    async def _tree(self) -> TreeLevels:
        """The subtree levels for proofs, built once from the table and checked against the frontier."""
        async with self._lock:
            if self._levels is None:
                levels, size = TreeLevels(), self._frontier.size
                while levels.size < size:
                    lo = levels.size
                    for idx, raw in await self._rows(lo, min(size, lo + PAGE), audit_log.c.leaf_hash):
                        leaf = as_bytes(raw)
                        if idx != levels.size or len(leaf) != HASH_SIZE:
                            break
                        levels.append(leaf)
                    if levels.size == lo:
                        raise AuditTampered(f"audit entry {levels.size} is missing from the table or malformed")
                if levels.root_at(size) != self._frontier.root():
                    raise AuditTampered(await self._unmatched(levels))
                self._levels = levels
            return self._levels

    async def _unmatched(self, levels: TreeLevels) -> str:
        """Where the table's leaf hashes part from the roots this node signed, as precisely as the
        checkpoints allow (a hint: the stored roots are read from the table too)."""
        async with self.store.read() as conn:
            signed = (
                await conn.execute(
                    sa.select(audit_checkpoints.c.size, audit_checkpoints.c.root)
                    .where(audit_checkpoints.c.size <= levels.size)
                    .order_by(audit_checkpoints.c.size)
                )
            ).all()
        span = first_unmatched(((int(r.size), as_bytes(r.root)) for r in signed), levels.root_at)
        where = (
            f"entries {span[0]} to {span[1] - 1} no longer give the root signed in checkpoint {span[1]}"
            if span is not None
            else "its leaf hashes no longer give the root this node signed"
        )
        return (
            f"the audit table no longer matches the log this node signed: {where}; an entry was changed, "
            "removed or inserted (`exchange audit verify` names the first bad one)"
        )

    # -- checkpoints ------------------------------------------------------------------------

    async def _cosigned(self, conn: AsyncConnection, row: Any) -> StoredCheckpoint:
        lines = await conn.execute(
            sa.select(audit_cosignatures.c.witness, audit_cosignatures.c.line)
            .where(audit_cosignatures.c.size == row.size)
            .order_by(audit_cosignatures.c.witness)
        )
        return StoredCheckpoint(int(row.size), as_bytes(row.root), row.note, row.at, tuple((w, ln) for w, ln in lines))

    async def latest(self) -> StoredCheckpoint | None:
        """The largest checkpoint this node signed, with its cosignatures."""
        query = sa.select(*_CHECKPOINT_COLUMNS).order_by(audit_checkpoints.c.size.desc()).limit(1)
        async with self.store.read() as conn:
            row = (await conn.execute(query)).first()
            return None if row is None else await self._cosigned(conn, row)

    async def checkpoint_at(self, size: int) -> StoredCheckpoint:
        """The checkpoint of size `size` this node signed, or NotFound."""
        async with self.store.read() as conn:
            row = (await conn.execute(sa.select(*_CHECKPOINT_COLUMNS).where(audit_checkpoints.c.size == size))).first()
            if row is None:
                raise NotFound(f"this node signed no checkpoint of size {size}")
            return await self._cosigned(conn, row)

    async def recent(self, count: int) -> list[StoredCheckpoint]:
        """The `count` largest checkpoints this node signed, largest first, with their cosignatures."""
        query = sa.select(*_CHECKPOINT_COLUMNS).order_by(audit_checkpoints.c.size.desc()).limit(count)
        async with self.store.read() as conn:
            return [await self._cosigned(conn, row) for row in (await conn.execute(query)).all()]

    async def checkpoints(self, upto: int | None = None) -> list[StoredCheckpoint]:
        """Every checkpoint this node signed, smallest first, with their cosignatures."""
        query = sa.select(*_CHECKPOINT_COLUMNS).order_by(audit_checkpoints.c.size)
        if upto is not None:
            query = query.where(audit_checkpoints.c.size <= upto)
        async with self.store.read() as conn:
            rows = (await conn.execute(query)).all()
            lines = (
                await conn.execute(
                    sa.select(
                        audit_cosignatures.c.size, audit_cosignatures.c.witness, audit_cosignatures.c.line
                    ).order_by(audit_cosignatures.c.size, audit_cosignatures.c.witness)
                )
            ).all()
        cosigs: dict[int, list[tuple[str, str]]] = {}
        for size, witness, line in lines:
            cosigs.setdefault(int(size), []).append((witness, line))
        return [
            StoredCheckpoint(int(r.size), as_bytes(r.root), r.note, r.at, tuple(cosigs.get(int(r.size), [])))
            for r in rows
        ]

    async def checkpoint(self) -> StoredCheckpoint | None:
        """Sign a checkpoint of everything committed so far, unless the latest one already covers it."""
        async with self._sign_lock:
            await self.catch_up()
            latest = await self.latest()
            # No await between reading size, root and hashes: they must describe one tree.
            size, root, hashes = self._frontier.size, self._frontier.root(), self._frontier.hashes
            if size == 0:
                return latest
            if latest is not None and latest.size >= size:
                if latest.size > size:
                    raise AuditTampered(
                        f"this node signed a checkpoint of size {latest.size} but its log now holds only {size} entries"
                    )
                return latest
            note = sign_checkpoint(Checkpoint(self.origin, size, root), self._key).render()
            at = timestamp()

            async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
                await conn.execute(
                    sa.insert(audit_checkpoints).values(
                        size=size, root=root, note=note, frontier=b"".join(hashes), at=at
                    )
                )

            await self.store.write(job)
            log.info("%s: signed audit checkpoint %d", self.me, size)
            return StoredCheckpoint(size, root, note, at)

    async def add_cosignature(self, size: int, witness: str, line: str) -> None:
        """Keep a witness's cosignature line of checkpoint `size` (the first one it sent)."""
        at = timestamp()

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            where = sa.and_(audit_cosignatures.c.size == size, audit_cosignatures.c.witness == witness)
            if await conn.scalar(sa.select(audit_cosignatures.c.size).where(where)) is None:
                await conn.execute(sa.insert(audit_cosignatures).values(size=size, witness=witness, line=line, at=at))

        await self.store.write(job)

    async def cosigned_size(self, witness: str) -> int:
        """The largest checkpoint `witness` has co-signed (0 if none): its view of this log."""
        async with self.store.read() as conn:
            value = await conn.scalar(
                sa.select(sa.func.max(audit_cosignatures.c.size)).where(audit_cosignatures.c.witness == witness)
            )
        return int(value or 0)

    # -- proofs and entries -----------------------------------------------------------------

    async def inclusion(self, index: int, size: int) -> list[bytes]:
        """The inclusion proof of entry `index` in the tree of `size` entries."""
        tree = await self._tree()
        if not 0 <= index < size <= tree.size:
            raise InvalidInput(f"need 0 <= index < size <= {tree.size}")
        return inclusion_path(index, size, tree.root)

    async def consistency(self, old: int, new: int) -> list[bytes]:
        """The consistency proof from size `old` to size `new`."""
        tree = await self._tree()
        if not 0 < old <= new <= tree.size:
            raise InvalidInput(f"need 0 < from <= to <= {tree.size}")
        return consistency_path(old, new, tree.root)

    async def entry(self, index: int) -> bytes:
        """Entry `index` as stored."""
        async with self.store.read() as conn:
            raw = await conn.scalar(sa.select(audit_log.c.entry).where(audit_log.c.idx == index))
        if raw is None:
            raise NotFound(f"no audit entry {index}")
        return as_bytes(raw)

    async def entries_after(self, after: int, limit: int) -> list[Any]:
        """Up to `limit` entries after index `after`, oldest first, parsed, with no filter."""
        async with self.store.read() as conn:
            rows = await conn.execute(
                sa.select(audit_log.c.entry).where(audit_log.c.idx > after).order_by(audit_log.c.idx).limit(limit)
            )
            return [json.loads(r.entry) for r in rows]

    async def scan(
        self,
        match: Match,
        needle: bytes | None = None,
        *,
        after: int = -1,
        limit: int = 100,
        scan: int = SCAN_LIMIT,
    ) -> tuple[list[Found], int | None]:
        """Entries after `after` that `match`, oldest first; `needle` is a cheap byte prefilter.

        Returns the matches and a cursor to go on from, or None once the end is reached.
        """
        end, pos, scanned = self.store.audit_size, after, 0
        out: list[Found] = []
        while len(out) < limit and scanned < scan and pos + 1 < end:
            async with self.store.read() as conn:
                rows = (
                    await conn.execute(
                        sa.select(audit_log.c.idx, audit_log.c.entry)
                        .where(audit_log.c.idx > pos, audit_log.c.idx < end)
                        .order_by(audit_log.c.idx)
                        .limit(min(PAGE, scan - scanned))
                    )
                ).all()
            if not rows:
                pos = end - 1
                break
            for idx, raw in rows:
                pos, scanned = int(idx), scanned + 1
                data = as_bytes(raw)
                if needle is not None and needle not in data:
                    continue
                try:
                    body = json.loads(data)
                except ValueError:
                    continue
                if isinstance(body, dict) and match(body):
                    out.append((pos, data, body))
                    if len(out) == limit:
                        break
        return out, (pos if pos + 1 < end else None)

    async def evidence(self, bulletin: str) -> EvidenceJSON:
        """This log's entries about `bulletin`, each with an inclusion proof in a signed checkpoint."""
        needle = bulletin.encode()
        found: list[Found] = []
        cursor: int | None = -1
        while cursor is not None:
            page, cursor = await self.scan(lambda b: mentions(b, bulletin), needle, after=cursor, limit=1000)
            found += page
        cp = await self.latest()  # a witnessed checkpoint if one covers them, else a new one
        if cp is None or (found and found[-1][0] >= cp.size):
            cp = await self.checkpoint()  # covers every committed entry, so every one found
        if cp is None:
            return {"node": self.me, "checkpoint": None, "entries": []}
        tree = await self._tree()
        size = cp.size
        entries: list[ProvenEntry] = [
            {
                "idx": idx,
                "entry": data.decode("utf-8", "replace"),
                "proof": [b64e(p) for p in inclusion_path(idx, size, tree.root)],
            }
            for idx, data, _ in found
            if idx < size
        ]
        return {"node": self.me, "checkpoint": cp.full_note(), "size": size, "entries": entries}

    # -- export -----------------------------------------------------------------------------

    async def export(self, bulletin: str | None = None) -> AsyncIterator[BundleRecord]:
        """The records of an export bundle (see exchange.audit.log), ready to be written as lines.

        A full export reads the table as it is: it does not depend on this node trusting its
        own table, so a tampered log still exports, and the verifier names the bad entry.
        """
        if bulletin is not None:
            ev = await self.evidence(bulletin)
            size = ev.get("size", 0)
            yield header_record(
                self.me, self.origin, self.signed_roster, at=timestamp(), complete=False, size=size, bulletin=bulletin
            )
            for record in evidence_records(ev):
                yield record
            return
        # Every checkpoint, read before the size: each covers entries committed before it was read,
        # so one larger than the table tells the verifier that signed entries are missing.
        signed = await self.checkpoints()
        size = self.store.audit_size
        yield header_record(self.me, self.origin, self.signed_roster, at=timestamp(), complete=True, size=size)
        for cp in signed:
            yield {"type": "checkpoint", "note": cp.full_note()}
        count = 0
        for lo in range(0, size, PAGE):
            for idx, entry, leaf in await self._rows(
                lo, min(size, lo + PAGE), audit_log.c.entry, audit_log.c.leaf_hash
            ):
                count += 1
                yield entry_record(int(idx), as_bytes(entry), as_bytes(leaf))
        yield {"type": "end", "entries": count}
