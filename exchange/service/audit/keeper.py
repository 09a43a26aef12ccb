"""This node's own audit log: follow the audit table, sign checkpoints, give proofs.

The keeper holds the log's frontier (O(log n) hashes) in memory and extends it as soon as the
store's writer commits new entries: with the leaf hashes the writer made (`Store.committed_leaves`),
not read back, and from the table for entries another process appended. So what it signs is what
this process wrote, whatever happens to the table later. On start it checks the table against the checkpoints it
signed since the last one a witness co-signed, resumes from there, and refuses (AuditTampered) a
table that does not hold that log, before anything is written under a reused index. Proofs come
from `TreeLevels`, built from the whole table in the background after start (hashed in a worker
thread, not on the event loop) and trusted once they give the frontier's root. Entries and
exports: `exchange.service.audit.entries`; the pure parts: `exchange.audit.keeper`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit.checkpoint import (
    Checkpoint,
    WitnessKeys,
    cosignatures,
    log_origin,
    open_checkpoint,
    sign_checkpoint,
)
from exchange.audit.keeper import (
    BundleRecord,
    StoredCheckpoint,
    as_bytes,
    checked_cosignatures,
    first_unmatched,
    page_leaves,
    resumed_frontier,
    shorter_than_signed,
    unsigned_entry_problem,
)
from exchange.audit.logkeys import key_that_signed
from exchange.audit.tree import TreeLevels, consistency_path, inclusion_path
from exchange.clock import cancel_and_wait, timestamp
from exchange.crypto import SigningKey, VerifyKey
from exchange.errors import AuditTampered, BadSignature, InvalidInput, NotFound
from exchange.merkle import Frontier
from exchange.service.audit.table import PAGE, cosignature_lines, keep_cosignature, rows, stream
from exchange.store import AuditBuffer, Store, audit_checkpoints, audit_cosignatures, audit_log

FOLLOW_RETRY_SECONDS = 1.0
WITNESSED_TRIED = 3  # co-signed checkpoints tried, largest first, for the start check to begin at

log = logging.getLogger("exchange.audit")

Sizes = sa.CompoundSelect[int]  # a query of checkpoint sizes

_CHECKPOINT_COLUMNS = (
    audit_checkpoints.c.size,
    audit_checkpoints.c.root,
    audit_checkpoints.c.note,
    audit_checkpoints.c.at,
)


def _missing(index: int) -> AuditTampered:
    return AuditTampered(f"audit entry {index} is missing from the table or malformed")


class LogKeeper:
    """The node's own audit log, as signed checkpoints and proofs over the `audit_log` table."""

    def __init__(
        self,
        me: str,
        store: Store,
        key: SigningKey,
        signed_roster: Any = None,
        witnesses: WitnessKeys | None = None,
    ) -> None:
        """`witnesses`: the roster's witness keys by key name (KeyRing.witnesses); a checkpoint one of
        them co-signed is where the start check begins."""
        self.me = me
        self.origin = log_origin(me)
        self.store = store
        self.signed_roster = signed_roster
        self._key, self._own = key, [key.verify_key]  # _own: keys its checkpoints may carry (use_key)
        self._witnesses = dict(witnesses or {})
        self._frontier = Frontier()
        self._levels: TreeLevels | None = None
        self._building: asyncio.Task[TreeLevels] | None = None
        self._taken_since: list[bytes] | None = None  # leaves taken in while the levels are built
        self._lock = asyncio.Lock()  # reading the table into the frontier and levels
        self._sign_lock = asyncio.Lock()
        self._follower: asyncio.Task[None] | None = None
        self._reported: str | None = None

    def use_key(self, key: SigningKey, former: Sequence[VerifyKey] = ()) -> None:
        """Sign with `key` from now on; `former`: earlier keys of this node (docs/protocol.md 6a.13)."""
        self._key, self._own = key, [key.verify_key, *former]

    def set_witnesses(self, witnesses: WitnessKeys) -> None:
        """The roster changed: the witness keys a checkpoint's cosignatures are checked with from now on."""
        self._witnesses = dict(witnesses)

    @property
    def size(self) -> int:
        """How many entries the keeper has taken in (and can sign)."""
        return self._frontier.size

    # -- start, follow, stop ----------------------------------------------------------------

    async def start(self) -> None:
        """Check the table against the checkpoints this node signed since the last one a witness
        co-signed and resume from them, then follow the table and build the proof levels.

        Raises AuditTampered, naming the problem, before anything is written: the node must not
        start on a log that lost signed entries (it would write new ones under their indices) or
        whose recent entries no longer give the roots it signed. The entries before that witnessed
        checkpoint are checked once the proof levels are built, soon after start, and by
        `exchange audit verify`, entry by entry.
        """
        await self._resume()
        self.store.hand_over_leaves = True
        self._follower = asyncio.create_task(self._follow(), name=f"audit-follow-{self.me}")
        self._start_building()

    def _start_building(self) -> asyncio.Task[TreeLevels]:
        """Build the proof levels in the background (at start, so the first proof need not wait)."""
        task = self._building = asyncio.create_task(self._build_tree(), name=f"audit-tree-{self.me}")
        task.add_done_callback(self._built)
        return task

    async def close(self) -> None:
        """Stop following the table and building the proof levels."""
        for task in (self._follower, self._building):
            if task is not None and not task.done():
                await cancel_and_wait(task)
        self._follower = None

    async def end(self) -> int:
        """One past the largest index in the audit table: a seek, where counting its rows reads
        them all. Rows missing below it are found where they are read (`_missing`)."""
        async with self.store.read() as conn:
            top = await conn.scalar(sa.select(sa.func.max(audit_log.c.idx)))
        return 0 if top is None else int(top) + 1

    async def refuse_if_shorter(self) -> StoredCheckpoint | None:
        """The latest own checkpoint; AuditTampered if the table is shorter: nothing may be written
        before this holds, a new entry would go under a lost index (`NodeService.load` too)."""
        latest = await self.latest()
        end = await self.end() if latest is not None else 0
        if latest is not None and (shorter := shorter_than_signed(end, end, latest.size)) is not None:
            raise AuditTampered(
                f"{shorter}; the node does not start, since it would write new entries under their "
                "indices: restore the audit_log table from a backup"
            )
        return latest

    async def _resume(self) -> None:
        """Resume from the latest own checkpoint: check the table from the last one a witness co-signed
        up to it (the frontier it signed); then take in the entries after it, each checked against
        its leaf hash and index (after a clean stop, only those admin commands wrote since)."""
        latest = await self.refuse_if_shorter()
        if latest is not None:
            try:
                own = key_that_signed(latest.note, self.origin, self._own)
                cp, _ = open_checkpoint(latest.note, own, self.origin, self._own)
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
            self._frontier = await self._witnessed_frontier(cp.size)
            await self._check_signed(cp)
        await self._take_in_unsigned()

    async def _witnessed_frontier(self, upto: int) -> Frontier:
        """The frontier of the largest own checkpoint up to `upto` that a witness co-signed (the
        cosignature checked with the roster's key, the frontier with the signed root), or the empty
        log's: where the start check begins. Entries before it are vouched for by a signature that
        is not in this database."""
        cosigned = sa.select(audit_cosignatures.c.size).where(audit_cosignatures.c.size == audit_checkpoints.c.size)
        query = (
            sa.select(*_CHECKPOINT_COLUMNS, audit_checkpoints.c.frontier)
            .where(audit_checkpoints.c.size <= upto, cosigned.exists())
            .order_by(audit_checkpoints.c.size.desc())
            .limit(WITNESSED_TRIED)
        )
        if not self._witnesses:
            return Frontier()
        async with self.store.read() as conn:
            found = [(await self._cosigned(conn, row), as_bytes(row.frontier)) for row in await conn.execute(query)]
        for stored, blob in found:
            try:
                own = key_that_signed(stored.note, self.origin, self._own)
                _, note = open_checkpoint(stored.full_note(), own, self.origin, self._own)
                if cosignatures(note, self._witnesses):
                    return resumed_frontier(stored.note, blob, own, self.origin)
            except (InvalidInput, BadSignature, ValueError):
                continue
        return Frontier()

    async def _check_signed(self, latest: Checkpoint) -> None:
        """Take in the leaf hashes from the frontier's size to the latest checkpoint; at each own
        checkpoint on the way the root must be the signed one, and at the latest it must be."""
        lo = self._frontier.size
        async with self.store.read() as conn:
            signed = [
                (int(size), as_bytes(root))
                for size, root in await conn.execute(
                    sa.select(audit_checkpoints.c.size, audit_checkpoints.c.root)
                    .where(audit_checkpoints.c.size > lo, audit_checkpoints.c.size < latest.size)
                    .order_by(audit_checkpoints.c.size)
                )
            ]
        sizes = [size for size, _ in signed] + [latest.size]
        roots = {lo: self._frontier.root()}
        async with contextlib.aclosing(stream(self.store, lo, latest.size, audit_log.c.leaf_hash)) as chunks:
            async for chunk in chunks:
                leaves = page_leaves(chunk, self._frontier.size)
                cut = len(leaves) < len(chunk)
                while leaves:
                    stop = min(len(leaves), sizes[0] - self._frontier.size)
                    self._frontier.extend(leaves[:stop])
                    leaves = leaves[stop:]
                    if self._frontier.size == sizes[0]:
                        roots[sizes.pop(0)] = self._frontier.root()
                if cut:
                    raise _missing(self._frontier.size)
        if self._frontier.size != latest.size:
            raise _missing(self._frontier.size)
        if self._frontier.root() != latest.root:
            span = first_unmatched([(lo, roots[lo]), *signed, (latest.size, latest.root)], roots.__getitem__)
            first, end = span if span is not None else (lo, latest.size)
            raise AuditTampered(
                f"the audit table no longer matches the log this node signed: entries {first} to {end - 1} no "
                f"longer give the root signed in checkpoint {end}; an entry was changed, removed or inserted "
                "(`exchange audit verify` names the first bad one)"
            )

    def _take(self, leaf: bytes) -> None:
        self._frontier.append(leaf)
        if self._levels is not None:
            self._levels.append(leaf)
        elif self._taken_since is not None:
            self._taken_since.append(leaf)

    async def _take_in_unsigned(self) -> None:
        """Take in the entries after the frontier, checking each one's leaf hash and index."""
        async with self._lock:
            target = self.store.audit_size
            while self._frontier.size < target:
                lo = self._frontier.size
                found = await rows(self.store, lo, min(target, lo + PAGE), audit_log.c.entry, audit_log.c.leaf_hash)
                for idx, entry, leaf in found:
                    if idx != self._frontier.size:
                        break
                    problem = unsigned_entry_problem(idx, as_bytes(entry), as_bytes(leaf))
                    if problem is not None:
                        raise AuditTampered(f"audit entry {idx}, which no checkpoint covers yet, {problem}")
                    self._take(as_bytes(leaf))
                if self._frontier.size == lo or self._frontier.size < min(target, lo + PAGE):
                    raise _missing(self._frontier.size)

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
            await self.store.appended(appended)  # or, shared by workers, a poll of the table

    def _report(self, exc: AuditTampered) -> None:
        if exc.detail != self._reported:  # once per distinct problem, not once per commit
            log.error("%s: %s", self.me, exc.detail)
            self._reported = exc.detail

    async def catch_up(self, upto: int | None = None) -> int:
        """Take in the entries the writer has committed since; return how many."""
        await self.store.refresh_audit_size()  # other workers' entries too (exchange.store.workers)
        async with self._lock:
            target = self.store.audit_size if upto is None else min(upto, self.store.audit_size)
            start = self._frontier.size
            while self._frontier.size < target:
                lo = self._frontier.size
                # What this process's writer committed, as it hashed it; the table for the rest
                # (other processes' entries, or more than the writer holds).
                handed = self.store.committed_leaves(lo, target)
                if handed:
                    for leaf in handed:
                        self._take(leaf)
                    continue
                for leaf in page_leaves(await rows(self.store, lo, min(target, lo + PAGE), audit_log.c.leaf_hash), lo):
                    self._take(leaf)
                if self._frontier.size == lo or self._frontier.size < min(target, lo + PAGE):
                    raise _missing(self._frontier.size)
            return self._frontier.size - start

    # -- the proof levels -------------------------------------------------------------------

    async def _tree(self) -> TreeLevels:
        """The subtree levels for proofs, once built (see `_build_tree`). A build that failed to
        read is tried again by the next caller; one that found the table changed is not."""
        if self._levels is not None:
            if self.store.shared:  # another worker's checkpoint may cover entries not taken in yet
                await self.catch_up()
            return self._levels
        task = self._building
        if task is None or (task.done() and (task.cancelled() or not isinstance(task.exception(), AuditTampered))):
            task = self._start_building()
        return await asyncio.shield(task)

    def _built(self, task: asyncio.Task[TreeLevels]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, AuditTampered):
            self._report(exc)
        elif exc is not None:
            log.warning(
                "%s: the proof levels could not be built (%s); the next proof request tries again", self.me, exc
            )

    async def _build_tree(self) -> TreeLevels:
        """Every leaf hash in the table, up to the frontier, into new levels, read by one streamed
        query and hashed in a worker thread (so the event loop keeps serving), without holding the
        lock that taking in new entries needs; then, under it, the entries taken in meanwhile, and
        the check that the levels give the frontier's root."""
        levels, size = TreeLevels(), self._frontier.size
        self._taken_since = []
        try:
            async with contextlib.aclosing(stream(self.store, 0, size, audit_log.c.leaf_hash)) as chunks:
                async for chunk in chunks:
                    leaves = page_leaves(chunk, levels.size)
                    await asyncio.to_thread(levels.extend, leaves)
                    if len(leaves) < len(chunk):
                        raise _missing(levels.size)
            if levels.size < size:
                raise _missing(levels.size)
            async with self._lock:
                levels.extend(self._taken_since)
                if levels.root_at(levels.size) != self._frontier.root():
                    raise AuditTampered(await self._unmatched(levels))
                self._levels = levels
        finally:
            self._taken_since = None
        return levels

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
        query = sa.select(audit_cosignatures.c.witness, audit_cosignatures.c.line)
        query = query.where(audit_cosignatures.c.size == row.size).order_by(audit_cosignatures.c.witness)
        lines = tuple((str(w), str(ln)) for w, ln in await conn.execute(query))
        checked = tuple(w for w, _ in checked_cosignatures(row.note, lines, self._witnesses))  # shown: checked
        return StoredCheckpoint(int(row.size), as_bytes(row.root), row.note, row.at, lines, checked)

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

    async def checkpoints(self, upto: int | None = None, among: Sizes | None = None) -> list[StoredCheckpoint]:
        """Every checkpoint this node signed (or those of the sizes `among` selects), smallest
        first, with their cosignatures."""
        query = sa.select(*_CHECKPOINT_COLUMNS).order_by(audit_checkpoints.c.size)
        co = audit_cosignatures.c
        lines_query = sa.select(co.size, co.witness, co.line).order_by(co.size, co.witness)
        if upto is not None:
            query = query.where(audit_checkpoints.c.size <= upto)
        if among is not None:
            query, lines_query = query.where(audit_checkpoints.c.size.in_(among)), lines_query.where(co.size.in_(among))
        async with self.store.read() as conn:
            rows = (await conn.execute(query)).all()
            lines = (await conn.execute(lines_query)).all()
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
            latest = await self.latest()  # first: another worker's is then covered by what is caught up
            await self.catch_up()
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
                where = audit_checkpoints.c.size == size  # another worker's of this size: the same note
                if self.store.shared and await conn.scalar(sa.select(audit_checkpoints.c.size).where(where)):
                    return
                await conn.execute(
                    sa.insert(audit_checkpoints).values(
                        size=size, root=root, note=note, frontier=b"".join(hashes), at=at
                    )
                )

            await self.store.write(job)
            log.info("%s: signed audit checkpoint %d", self.me, size)
            return StoredCheckpoint(size, root, note, at)

    async def add_cosignature(self, size: int, witness: str, line: str) -> None:
        """Keep a witness's checked cosignature line of checkpoint `size` (`keep_cosignature`)."""
        await keep_cosignature(self.store, size, witness, line, self._witnesses)

    async def cosigned_size(self, witness: str) -> int:
        """The largest checkpoint `witness` has co-signed by a line that verifies (0 if none)."""
        lines = await cosignature_lines(self.store, witness, 8)
        return next(
            (size for size, note, line in lines if checked_cosignatures(note, [(witness, line)], self._witnesses)), 0
        )

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

    # -- reading ----------------------------------------------------------------------------

    def export(self, bulletin: str | None = None) -> AsyncIterator[BundleRecord]:
        """The records of an export bundle: see `LogEntries.export`."""
        from exchange.service.audit.entries import LogEntries  # it reads through this keeper

        return LogEntries(self).export(bulletin)
