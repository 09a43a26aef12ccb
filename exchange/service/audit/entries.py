"""Reading this node's audit log: entries by index, filtered pages, a bulletin's entries (found
through the index by bulletin, not by reading the log), its evidence with inclusion proofs, and
export bundles. The keeper (exchange.service.audit.keeper) signs the checkpoints and gives the
proofs; this reads what the table holds, as it is.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from exchange.audit.events import TRACE_KINDS
from exchange.audit.keeper import (
    BundleRecord,
    EvidenceJSON,
    ProvenEntry,
    as_bytes,
    entry_lines,
    entry_record,
    evidence_records,
    header_record,
    mentions,
    record_line,
)
from exchange.clock import timestamp
from exchange.crypto import b64e
from exchange.errors import NotFound
from exchange.service.audit.table import PAGE, stream
from exchange.store import audit_checkpoints, audit_cosignatures, audit_log

if TYPE_CHECKING:
    from exchange.service.audit.keeper import LogKeeper, Sizes

EXPORT_RECENT = dt.timedelta(days=1)  # a full export carries every checkpoint this close to the latest
SCAN_LIMIT = 50_000  # rows one filtered listing request may scan before it returns a cursor

Match = Callable[[dict[str, Any]], bool]
Found = tuple[int, bytes, dict[str, Any]]  # (index, the entry as stored, the entry parsed)


def _parsed(data: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(data)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _stored(idx: Any, entry: Any, leaf: Any) -> tuple[int, bytes, bytes]:
    """A row as (index, entry, leaf hash), whatever types a tampered row now holds."""
    if type(entry) is bytes and type(leaf) is bytes:
        return idx, entry, leaf
    return int(idx), as_bytes(entry), as_bytes(leaf)


class LogEntries:
    """What auditors read from this node's log."""

    def __init__(self, keeper: LogKeeper) -> None:
        self.keeper = keeper
        self.store = keeper.store

    async def entry(self, index: int) -> bytes:
        """Entry `index` as stored."""
        async with self.store.read() as conn:
            raw = await conn.scalar(sa.select(audit_log.c.entry).where(audit_log.c.idx == index))
        if raw is None:
            raise NotFound(f"no audit entry {index}")
        return as_bytes(raw)

    async def after(self, after: int, limit: int) -> list[Any]:
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
                body = _parsed(data)
                if body is not None and match(body):
                    out.append((pos, data, body))
                    if len(out) == limit:
                        break
        return out, (pos if pos + 1 < end else None)

    async def of_bulletin(
        self,
        bulletin: str,
        match: Match | None = None,
        *,
        after: int = -1,
        before: int | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> tuple[list[Found], int | None]:
        """The entries about `bulletin` between the indices `after` and `before` that `match`, found
        through the index by bulletin (ix_audit_log_bulletin): a seek, whatever the log's size.

        Each is checked to name the bulletin as stored (the index column is only a pointer).
        Returns the matches, oldest first (or newest first), and the index to go on from when
        `limit` stopped it (None once there are no more).
        """
        lo, hi = after, before
        out: list[Found] = []
        while True:
            query = sa.select(audit_log.c.idx, audit_log.c.entry).where(
                audit_log.c.bulletin == bulletin, audit_log.c.idx > lo
            )
            if hi is not None:
                query = query.where(audit_log.c.idx < hi)
            query = query.order_by(audit_log.c.idx.desc() if newest_first else audit_log.c.idx).limit(PAGE)
            async with self.store.read() as conn:
                rows = (await conn.execute(query)).all()
            for idx, raw in rows:
                data = as_bytes(raw)
                body = _parsed(data)
                if body is not None and mentions(body, bulletin) and (match is None or match(body)):
                    out.append((int(idx), data, body))
                    if limit is not None and len(out) == limit:
                        return out, int(idx)
            if len(rows) < PAGE:
                return out, None
            if newest_first:
                hi = int(rows[-1][0])
            else:
                lo = int(rows[-1][0])

    async def evidence(self, bulletin: str) -> EvidenceJSON:
        """This log's entries about `bulletin`, each with an inclusion proof in a signed checkpoint."""
        found, _ = await self.of_bulletin(bulletin)
        keeper = self.keeper
        cp = await keeper.latest()  # a witnessed checkpoint if one covers them, else a new one
        # The traces of the bulletin (who asked for this evidence) do not call for a new checkpoint:
        # each request would sign one and put it to the witnesses. Those after the latest are left out.
        about = [idx for idx, _, body in found if body.get("event") not in TRACE_KINDS]
        if cp is None or (about and about[-1] >= cp.size):
            cp = await keeper.checkpoint()  # covers every committed entry, so every one found
        if cp is None:
            return {"node": keeper.me, "checkpoint": None, "entries": []}
        size = cp.size
        entries: list[ProvenEntry] = [
            {
                "idx": idx,
                "entry": data.decode("utf-8", "replace"),
                "proof": [b64e(p) for p in await keeper.inclusion(idx, size)],
            }
            for idx, data, _ in found
            if idx < size
        ]
        return {"node": keeper.me, "checkpoint": cp.full_note(), "size": size, "entries": entries}

    # -- export -----------------------------------------------------------------------------

    async def export(self, bulletin: str | None = None) -> AsyncIterator[BundleRecord]:
        """The records of an export bundle (see exchange.audit.log), ready to be written as lines.

        A full export reads the table as it is: it does not depend on this node trusting its
        own table, so a tampered log still exports, and the verifier names the bad entry.
        """
        keeper = self.keeper
        if bulletin is not None:
            ev = await self.evidence(bulletin)
            size = ev.get("size", 0)
            roster = keeper.signed_roster
            yield header_record(
                keeper.me, keeper.origin, roster, at=timestamp(), complete=False, size=size, bulletin=bulletin
            )
            for record in evidence_records(ev):
                yield record
            return
        # The checkpoints, read before the size: each covers entries committed before it was read,
        # so one larger than the table tells the verifier that signed entries are missing.
        signed = await keeper.checkpoints(among=await self._exported_checkpoints())
        await self.store.refresh_audit_size()  # other workers' entries too (exchange.store.workers)
        size = self.store.audit_size
        yield header_record(keeper.me, keeper.origin, keeper.signed_roster, at=timestamp(), complete=True, size=size)
        for cp in signed:
            yield {"type": "checkpoint", "note": cp.full_note()}
        count = 0
        async with aclosing(stream(self.store, 0, size, audit_log.c.entry, audit_log.c.leaf_hash)) as chunks:
            async for rows in chunks:
                for row in rows:
                    count += 1
                    yield entry_record(*_stored(*row))
        yield {"type": "end", "entries": count}

    async def _exported_checkpoints(self) -> Sizes:
        """The sizes of the checkpoints a full export carries, so that it grows with the days a
        node has run and not with its minutes (docs/audit.md, section 6): every checkpoint
        signed within EXPORT_RECENT of the latest, the last of each earlier UTC day, and the
        latest each witness co-signed. The latest of all is always among them."""
        cp, co = audit_checkpoints.c, audit_cosignatures.c
        async with self.store.read() as conn:
            latest = (await conn.execute(sa.select(cp.at).order_by(cp.size.desc()).limit(1))).scalar()
        try:
            at = dt.datetime.strptime(str(latest), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
            since = timestamp(at - EXPORT_RECENT) if at.year > 1000 else ""  # (compared as text: four digits)
        except (ValueError, OverflowError):  # no checkpoint, or a time that is not a node's (an edited row): all
            since = ""
        return sa.union(
            sa.select(cp.size).where(cp.at >= since),
            sa.select(sa.func.max(cp.size)).group_by(sa.func.substr(cp.at, 1, 10)),
            sa.select(sa.func.max(co.size)).group_by(co.witness),
        )

    async def export_lines(self, bulletin: str | None = None) -> AsyncIterator[bytes]:
        """The export bundle as JSON Lines, in chunks: first the header's line, then a page of
        entries per chunk. The lines of the records of `export`, entries written a page at a time."""
        keeper = self.keeper
        if bulletin is not None:
            records = self.export(bulletin)
            yield json.dumps(await anext(records), separators=(",", ":")).encode() + b"\n"
            yield b"".join([record_line(record) + b"\n" async for record in records])
            return
        signed = await keeper.checkpoints(among=await self._exported_checkpoints())  # before the size, as in `export`
        await self.store.refresh_audit_size()
        size = self.store.audit_size
        header = header_record(keeper.me, keeper.origin, keeper.signed_roster, at=timestamp(), complete=True, size=size)
        yield json.dumps(header, separators=(",", ":")).encode() + b"\n"
        yield b"".join(record_line({"type": "checkpoint", "note": cp.full_note()}) + b"\n" for cp in signed)
        count = 0
        async with aclosing(stream(self.store, 0, size, audit_log.c.entry, audit_log.c.leaf_hash)) as chunks:
            async for rows in chunks:
                count += len(rows)
                yield entry_lines(rows)
        yield record_line({"type": "end", "entries": count}) + b"\n"
