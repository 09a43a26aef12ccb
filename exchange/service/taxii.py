"""TAXII 2.1 reads of a node's channels (docs/stix.md): collections, objects, manifest, versions.

A TAXII read is plaintext leaving the node, so the rules live here, once: a collection is a
channel the user reads now (`Access`: contact points and feeds, their assigned channels); TLP:RED,
TLP:AMBER+STRICT and no-onward-sharing bulletins are never served; every read is audited
(`taxii.read`: who, which channel, what, how many objects).

Paging is by the bulletins' positions in their channel (`bulletins.channel_pos`, revision 0012)
and stateless: `next` names the position and the index of the object within that bulletin's
objects, so it holds across restarts and across several workers, and it counts the collection's
own bulletins only, not what the node stores in channels the reader cannot read. `date_added`
is made from the row (`date_added`): unique, and increasing in storage order as long as
`stored_at` is (docs/stix.md says when it is not).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from exchange.audit import events as ev
from exchange.clock import timestamp
from exchange.errors import InvalidInput, NotFound
from exchange.model import INT32_MAX, NodeId
from exchange.protocol.roster import Federation
from exchange.protocol.stix import (
    EXCHANGE_EXTENSION,
    EXCHANGE_IDENTITY,
    TLP_IDS,
    BulletinFacts,
    bulletin_objects,
    bulletin_prefix,
    bundle,
    collection_id,
    node_identity_id,
)
from exchange.service.access import Access
from exchange.service.catchup import POSITIONS
from exchange.service.sharing import onward_forbidden_sql, served_tlp
from exchange.service.summaries import read_summary, unreadable
from exchange.service.users import User
from exchange.store import Store, bulletins

STIX_MEDIA_TYPE = "application/stix+json;version=2.1"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
CHUNK = 200  # rows read at a time
MAX_EXPORT = 100_000  # objects in one STIX export (a bundle is one JSON document)
# Bulletins one STIX export of a whole channel looks through, whatever it keeps: a channel of a
# million withheld bulletins (no-onward-sharing, RED) had one request read every row.
MAX_EXPORT_SCAN = 500_000
MAX_SCAN = 5000  # rows one request looks at, whatever its filters: then `more` with a `next`
EMPTY_READS_EVERY = 3600.0  # seconds: a read that served nothing is audited once in this per user, channel, resource
EMPTY_READS_KEPT = 4096  # (user, channel, resource) remembered for that
# Whole-channel exports built at once (each holds its bundle, up to MAX_EXPORT objects, hundreds of
# MB): the others wait. Ten at once from one token (128 connections allowed) could fill the memory.
EXPORTS_AT_ONCE = 2
SHARED_SCANS = 20  # scans of MAX_SCAN rows a request for a shared object (a TLP marking) goes through
_NEXT = re.compile(r"^([0-9]{1,18})-([0-9]{1,5})$")
_TIME = re.compile(r"^([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,13}))?Z$")
START = (POSITIONS, 0)  # the first object of the first bulletin: a `next` as `parse_next` reads it
# How far out of storage order two bulletins' `stored_at` may be (`_first_after`): the time a
# writer may hold a row before its commit, with room to spare; a node's clock stepping back by
# more than this could make a read by `added_after` alone miss what was stored before the step.
STAMP_SLACK = dt.timedelta(minutes=1)
ADDED_AFTER = "added_after must be an RFC 3339 UTC timestamp, such as 2026-01-31T12:00:00.000Z"
FRACTION = 13  # digits of a date_added's fraction: milliseconds, position in the channel, object index

# What a scan reads of a row: its summary, and its content only where it has none (a row that
# revision 0003 could not summarise); never the envelope, whose no-onward mark the database keeps
# apart (`onward_forbidden_sql`, revision 0016). A row of megabytes (attachments) costs its summary.
ROW = (
    bulletins.c.channel_pos,
    bulletins.c.id,
    bulletins.c.channel,
    bulletins.c.author,
    bulletins.c.tlp,
    bulletins.c.created,
    bulletins.c.stored_at,
    bulletins.c.summary,
    sa.case((bulletins.c.summary.is_(None), bulletins.c.content), else_=sa.null()).label("content"),
)


def date_added(stored_at: str, pos: int, k: int) -> str:
    """The date_added of object `k` of the bulletin at position `pos` of its channel: its
    `stored_at` (ms), then six digits of the position and four of the object index, so that no
    two in a collection are equal."""
    return f"{stored_at[:19]}.{stored_at[20:23]}{pos % 1_000_000:06d}{k:04d}Z"


def next_token(pos: int, k: int) -> str:
    """The `next` that goes on from object `k` of the bulletin at position `pos` of its channel:
    POSITIONS + `pos`, as catch-up cursors are."""
    return f"{POSITIONS + pos}-{k}"


def _time_key(value: str) -> tuple[str, str]:
    """A TAXII timestamp as a comparable key; InvalidInput unless it is UTC ("Z") RFC 3339."""
    found = _TIME.fullmatch(value)
    if found is None:
        raise InvalidInput(ADDED_AFTER)
    return found.group(1), (found.group(2) or "").ljust(FRACTION, "0")


def parse_next(token: str | None) -> tuple[int, int]:
    """A `next` token: POSITIONS + a position in the channel, and an object index.

    One below POSITIONS was given before revision 0012 (a storage position `bulletins.n`, which
    counts every channel) and is refused: honoured, it would let a reader find the storage
    position of each bulletin of the collection by trying tokens, and so what the node stored
    between them in channels the reader may not read."""
    if token is None:
        return START
    found = _NEXT.fullmatch(token)
    if found is not None and int(found.group(1)) < POSITIONS:
        raise InvalidInput("next was given before this node was upgraded: page again from the start, or by added_after")
    if found is None or int(found.group(1)) > INT32_MAX:
        raise InvalidInput("next must be a token this server gave")
    return int(found.group(1)), int(found.group(2))


@dataclass(frozen=True)
class Collection:
    id: str
    channel: str
    title: str
    description: str

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "can_read": True,
            "can_write": False,
            "media_types": [STIX_MEDIA_TYPE],
        }


@dataclass(frozen=True)
class Served:
    """One STIX object as TAXII serves it."""

    date_added: str
    obj: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.obj.get("modified", self.obj["created"]))

    def manifest(self) -> dict[str, Any]:
        return {
            "id": self.obj["id"],
            "date_added": self.date_added,
            "version": self.version,
            "media_type": STIX_MEDIA_TYPE,
        }


@dataclass(frozen=True)
class Page:
    items: list[Served]
    more: bool = False
    next: str | None = None


@dataclass(frozen=True)
class Filters:
    """TAXII 2.1 filters of a read: match[id], match[type], match[version], match[spec_version]."""

    ids: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    versions: frozenset[str] = frozenset()
    spec_versions: frozenset[str] = frozenset()
    added_after: str | None = None
    after_key: tuple[str, str] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.added_after is not None:
            key = _time_key(self.added_after)
            try:  # a time of the calendar too: one that is none (month 19) matched no row and read the whole channel
                dt.datetime.fromisoformat(key[0])
            except ValueError:
                raise InvalidInput(ADDED_AFTER) from None
            object.__setattr__(self, "after_key", key)

    def keep(self, item: Served) -> bool:
        o = item.obj
        if self.after_key is not None and _time_key(item.date_added) <= self.after_key:
            return False
        if self.ids and o["id"] not in self.ids:
            return False
        if self.types and o["type"] not in self.types:
            return False
        wanted = self.versions - {"first", "last", "all"}
        if wanted and item.version not in wanted:
            return False
        return not (self.spec_versions and "2.1" not in self.spec_versions)


class Taxii:
    """What a local user may read through TAXII, as STIX 2.1 (exchange.protocol.stix)."""

    def __init__(self, me: NodeId, store: Store, fed: Federation, access: Access) -> None:
        self.me = me
        self.store = store
        self.fed = fed
        self.access = access
        self._exporting = asyncio.Semaphore(EXPORTS_AT_ONCE)
        self._quiet: dict[tuple[str, str, str], float] = {}  # (user, channel, resource) -> its last empty read audited

    def collections(self, user: User) -> list[Collection]:
        """One collection per channel the user reads now; none for administrators and auditors."""
        if user.role not in ("contact-point", "feed"):
            return []
        out = []
        for channel in self.access.readable_channels(user):
            state = self.access.channels.state(channel)
            out.append(Collection(collection_id(self.me, channel), channel, state.title, state.purpose))
        return out

    def collection(self, user: User, cid: str) -> Collection:
        """The collection `cid` if the user reads its channel now; else NotFound (no probing)."""
        for c in self.collections(user):
            if c.id == cid:
                return c
        raise NotFound(f"no collection {cid[:64]} for you")

    def _author_name(self, node: str) -> str:
        return self.fed.name_of(node)  # a former member: its name, marked no longer active

    def served_tlp(self, channel: str) -> tuple[str, ...]:
        """The TLP levels that may leave the node from `channel`, by the owner's current rule."""
        return served_tlp(self.access.channels.state(channel))

    def _objects_of(self, row: Any, served: tuple[str, ...]) -> list[dict[str, Any]] | None:
        """The STIX objects of a stored row, or None if it may not leave the node."""
        if row.tlp not in served or row.no_onward:
            return None
        content = read_summary(row, row.summary if row.summary is not None else row.content)
        if unreadable(content):  # nothing leaves the node that it cannot read (the database edited)
            return None
        facts = BulletinFacts(
            row.id, row.channel, row.author, self._author_name(row.author), row.tlp, row.created, content
        )
        return bulletin_objects(facts)

    async def read(
        self, user: User, cid: str, *, resource: str, limit: int, next_token: str | None, filters: Filters
    ) -> Page:
        """A page of the collection's objects in storage order (objects/ and manifest/), audited."""
        coll = self.collection(user, cid)
        page = await self._scan(coll.channel, parse_next(next_token), max(1, min(limit, MAX_LIMIT)), filters)
        await self._audit(user, coll.channel, resource, len(page.items))
        return page

    async def one(self, user: User, cid: str, object_id: str, *, resource: str, filters: Filters) -> Page:
        """Every served copy of one object (objects/{id}/ and versions/): NotFound if none."""
        coll = self.collection(user, cid)
        prefix = bulletin_prefix(object_id)
        only = Filters(
            ids=frozenset({object_id}),
            types=filters.types,
            versions=filters.versions,
            spec_versions=filters.spec_versions,
            added_after=filters.added_after,
        )
        if object_id in self._shared_ids():  # in every bulletin's objects: the first that has it
            page = await self._scan(coll.channel, START, 1, only)
            for _ in range(SHARED_SCANS):  # past a run of withheld bulletins (each scan stops at MAX_SCAN)
                if page.items or not page.more or page.next is None:
                    break
                page = await self._scan(coll.channel, parse_next(page.next), 1, only)
        elif prefix is not None:
            where = sa.and_(bulletins.c.id >= prefix, bulletins.c.id < prefix + "g")
            page = await self._scan(coll.channel, START, 1, only, where=where)
        else:
            page = Page([])
        if not page.items:
            raise NotFound(f"no object {object_id[:80]} in this collection")
        await self._audit(user, coll.channel, resource, len(page.items))
        return Page(page.items[:1])

    async def export(self, user: User, channel: str, bid: str | None = None) -> dict[str, Any]:
        """A STIX 2.1 bundle of the channel's servable objects (each id once), or of one bulletin's,
        under the TAXII policy; audited as one `taxii.read` of resource `export`. NotFound for a
        bulletin that is not servable here; InvalidInput past MAX_EXPORT objects, or past MAX_EXPORT_SCAN
        bulletins looked through (page by TAXII then)."""
        coll = next((c for c in self.collections(user) if c.channel == channel), None)
        if coll is None:
            raise NotFound(f"no channel {channel[:64]} you may export")
        if bid is None:  # a whole channel's bundle is held in memory (up to MAX_EXPORT objects): a few at once
            async with self._exporting:
                return await self._export(user, channel, None)
        return await self._export(user, channel, bid)

    async def _export(self, user: User, channel: str, bid: str | None) -> dict[str, Any]:
        where = None if bid is None else bulletins.c.id == bid
        out: dict[str, dict[str, Any]] = {}
        start = START
        while True:
            page = await self._scan(channel, start, MAX_LIMIT, Filters(), where=where)
            for item in page.items:
                out.setdefault(item.obj["id"], item.obj)
            if len(out) > MAX_EXPORT:
                raise InvalidInput(f"more than {MAX_EXPORT} STIX objects: page through the TAXII collection instead")
            if not page.more or page.next is None:
                break
            start = parse_next(page.next)
            if start[0] - POSITIONS > MAX_EXPORT_SCAN:  # a channel's positions count its bulletins
                raise InvalidInput(
                    f"more than {MAX_EXPORT_SCAN} bulletins to look through: page through the TAXII collection instead"
                )
        if bid is not None and not out:
            raise NotFound("no such bulletin that may leave this node in this channel")
        await self._audit(user, channel, "export", len(out), bulletin=bid)
        return bundle(list(out.values()), f"{self.me}:{channel}:{bid or 'all'}")

    def _shared_ids(self) -> set[str]:
        nodes = {n.id for n in self.fed.roster.nodes}
        return {*TLP_IDS.values(), EXCHANGE_IDENTITY, EXCHANGE_EXTENSION, *(node_identity_id(n) for n in nodes)}

    async def _scan(
        self,
        channel: str,
        start: tuple[int, int],
        limit: int,
        filters: Filters,
        *,
        where: Any = None,
    ) -> Page:
        token, skip = start
        pos = token - POSITIONS
        if filters.after_key is not None and start == START and where is None:
            first = await self._first_after(channel, filters.after_key)
            if first is None:
                return Page([])  # nothing stored at or after added_after
            pos = first
        served = self.served_tlp(channel)
        items: list[Served] = []
        scanned = 0
        keep: Callable[[Served], bool] = filters.keep
        while True:
            # The TLP judged here, not in SQL (`_objects_of`): a withheld row then counts towards
            # MAX_SCAN, where with `tlp IN` the database walked every withheld row to fill a chunk.
            query = sa.select(*ROW, onward_forbidden_sql(bulletins.c.id).label("no_onward")).where(
                bulletins.c.channel == channel, bulletins.c.channel_pos >= pos
            )
            if where is not None:
                query = query.where(where)
            async with self.store.read() as conn:
                rows: Sequence[Any] = (await conn.execute(query.order_by(bulletins.c.channel_pos).limit(CHUNK))).all()
            for row in rows:
                objects = self._objects_of(row, served) or []
                for k, obj in enumerate(objects):
                    if row.channel_pos == pos and k < skip:
                        continue
                    item = Served(date_added(row.stored_at, row.channel_pos, k), obj)
                    if not keep(item):
                        continue
                    if len(items) == limit:
                        return Page(items, more=True, next=next_token(row.channel_pos, k))
                    items.append(item)
                scanned += 1
                if scanned >= MAX_SCAN:
                    return Page(items, more=True, next=next_token(row.channel_pos + 1, 0))
            if len(rows) < CHUNK:
                return Page(items)
            pos, skip = rows[-1].channel_pos + 1, 0

    async def _first_after(self, channel: str, after: tuple[str, str]) -> int | None:
        """The first position in the channel whose stored_at (ms) is not before `added_after`'s
        (None: no row is): from a position stored more than STAMP_SLACK before it
        (`_last_stored_before`, a binary search), on to the first one stored at or after
        `added_after`. A few seeks and the rows of about STAMP_SLACK, whatever the channel holds.
        Positions follow the order bulletins were stored in, and their `stored_at` that order but
        for a moment's race between writers, far under STAMP_SLACK."""
        floor = f"{after[0]}.{after[1][:3]}Z"
        try:
            e = dt.datetime.fromisoformat(floor) - STAMP_SLACK
            early = f"{e.year:04d}-{e:%m-%dT%H:%M:%S}.{e.microsecond // 1000:03d}Z"  # as `timestamp`, any year
        except (ValueError, OverflowError):  # not a calendar time, or near the year 1
            early = ""
        mine = bulletins.c.channel == channel
        async with self.store.read() as conn:
            last = await _last_stored_before(conn, mine, early) if early else None
            since = bulletins.c.channel_pos > last if last is not None else sa.true()
            first = await conn.scalar(
                sa.select(bulletins.c.channel_pos)
                .where(mine, since, bulletins.c.stored_at >= floor)
                .order_by(bulletins.c.channel_pos)
                .limit(1)
            )
        return int(first) if first is not None else None

    def _empty_read_due(self, key: tuple[str, str, str]) -> bool:
        """Whether a read that served nothing is audited: once per user, channel and resource per
        EMPTY_READS_EVERY (in this process). A platform polling at its rate limit (200 a second)
        added an entry per poll, about 17 million a day, though nothing left the node."""
        now = asyncio.get_running_loop().time()
        last = self._quiet.get(key)
        if last is not None and now - last < EMPTY_READS_EVERY:
            return False
        self._quiet[key] = now
        if len(self._quiet) > EMPTY_READS_KEPT:
            _forget_oldest(self._quiet)
        return True

    async def _audit(self, user: User, channel: str, resource: str, count: int, *, bulletin: str | None = None) -> None:
        if count == 0 and not self._empty_read_due((user.name, channel, resource)):
            return  # nothing left the node, and the like was audited within EMPTY_READS_EVERY
        entry = ev.TaxiiRead(
            event=ev.TAXII_READ, at=timestamp(), user=user.name, channel=channel, resource=resource, objects=count
        )
        if bulletin is not None:
            entry["bulletin"] = bulletin
        await self.store.audit(entry)


def _forget_oldest(held: dict[tuple[str, str, str], float]) -> None:
    del held[min(held, key=held.__getitem__)]


async def _last_stored_before(conn: Any, mine: Any, early: str) -> int | None:
    """A position of the channel stored before `early` such that none before it was stored at or
    after `early` + STAMP_SLACK (None: no row was stored before `early`): a binary search over the
    positions, a seek each, as they follow storage order but for writers' races far under
    STAMP_SLACK. Walking back from the newest to it read every bulletin stored since `early`: an
    `added_after` early in a channel of a million read the million, at every first page."""
    pos, at = bulletins.c.channel_pos, bulletins.c.stored_at
    # Two subqueries: SQLite answers min() or max() alone from the index's end, both in one SELECT by
    # walking every entry of the channel.
    ends = (sa.select(f(pos)).where(mine).scalar_subquery() for f in (sa.func.min, sa.func.max))
    low, high = (await conn.execute(sa.select(*ends))).one()
    found = None
    while low is not None and high is not None and low <= high:
        middle = (low + high) // 2
        row = (await conn.execute(sa.select(pos, at).where(mine, pos >= middle).order_by(pos).limit(1))).first()
        if row is None or row.channel_pos > high:
            high = middle - 1
        elif row.stored_at < early:
            found, low = int(row.channel_pos), int(row.channel_pos) + 1
        else:
            high = middle - 1
    return found
