"""Reading: what local contact points see of their channels, and what opening a bulletin records.

Opening a bulletin (`load`, `read`: the API, the CLI and the console) checks the stored row
against its signed envelope each time, so "signature verified" is a claim checked now; a row
that fails is not shown (`BulletinUnverified`, naming what failed). Listings, search and
references show stored metadata and titles (`bulletins.summary`, and searches match
`bulletins.search_text`: never the content with its attachments), unchecked, and claim nothing
about them.

Also the console's reading views (channel summaries with unread counts, inbox pages, references
both ways, search, receipts per recipient): each is computed only among the channels that
`Access` lets the user read now, so no adapter needs a query or a rule of its own.

No query here grows with the store: pages are index seeks per channel (exchange.service.summaries),
unread counts are read from counts the database keeps (revision 0003), and search and referrers
look at a stated number of the newest bulletins only.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit import events as ev
from exchange.audit.keeper import as_bytes
from exchange.clock import timestamp
from exchange.crypto import NodeKeys, b64d, sha256
from exchange.errors import BulletinUnverified, ExchangeError, InvalidInput, NotFound
from exchange.model import Bulletin, BulletinId, ChannelId, Envelope, NodeId
from exchange.protocol.envelope import bulletin_id, check_signature, open_envelope, parse_envelope
from exchange.protocol.receipt import make_receipt
from exchange.protocol.roster import Federation
from exchange.service.access import Access
from exchange.service.envelopes_v2 import stored_v2, verified_v2_held, view_v2
from exchange.service.epochs import EpochBook
from exchange.service.held_receipts import checked_receipts
from exchange.service.outbox import Outbox, ReceiptRef, queued_row
from exchange.service.records import receipt_row
from exchange.service.sharing import TLP_ORDER, onward_forbidden_sql
from exchange.service.summaries import SUMMARY, newest_start, positions, search_texts, summarised, summary_line
from exchange.service.users import User
from exchange.service.views import (
    BulletinSummary,
    BulletinView,
    ChannelSummary,
    InboxLine,
    InboxPage,
    RecipientStatus,
    Reference,
    ReplyTo,
    SearchResults,
    channel_view,
)
from exchange.store import AuditBuffer, Store, bulletins, outbox, receipts, user_reads
from exchange.store.tables import channel_counts, user_channel_reads

log = logging.getLogger("exchange.inbox")

PAGE = 50  # bulletins on one inbox page, and search results at most
SEARCH_SCAN = 2000  # the newest bulletins (of the channels searched) one search looks at
SEARCH_CANDIDATES = 2 * PAGE  # of those, the newest SQL finds (its LIKE is the match itself, checked again here)
REFERRERS = 100  # bulletins that refer to one, at most
REFERRER_SCAN = 5000  # the newest bulletins (of the readable channels) looked at for them
THREAD_FROM = 64 * 1024  # envelope bytes from which the check on opening runs off the event loop
# Why a referenced bulletin is not shown: the same whether this node holds it in a channel the user
# does not read or not at all, so that a reference cannot probe for ids (the console translates it).
NOT_AVAILABLE = "not available to you"


def _verified_bulletin(row: Any, me: NodeId, fed: Federation, key: NodeKeys) -> tuple[Envelope, Bulletin]:
    """The envelope and bulletin of a stored row, checked now against each other.

    Raises BulletinUnverified whose detail names the first check that failed (never the content).

    In order: the envelope parses; the author's roster key signed its header and wrapped keys;
    the header hashes to the row's id; the ciphertext matches the hash the header commits to;
    the row's channel, author, seq, TLP, created and state columns are the header's; and the
    stored content is byte for byte what the envelope decrypts to with this node's key. One
    signature check, one key unwrap and one decryption: the cost of opening a bulletin, not of
    listing them.
    """
    try:
        env = parse_envelope(as_bytes(row.envelope))
    except ExchangeError as exc:
        raise BulletinUnverified(f"its stored envelope does not parse ({exc.detail[:120]})") from exc
    h = env.header
    if fed.former_key_state(h.author, h.signer) == "compromised":  # not a change to the envelope: say so
        raise BulletinUnverified(
            f"{h.author} signed it with key {h.signer}, which the roster now marks compromised "
            "(docs/protocol.md 6a.7): its signature is no longer trusted"
        )
    try:
        check_signature(env, fed, stored=True)  # taken in earlier: a key since verify-only still checks it
    except ExchangeError as exc:
        raise BulletinUnverified(
            f"the signature of {h.author} over its stored envelope does not verify ({exc.detail[:120]}): "
            "the envelope was changed"
        ) from exc
    if bulletin_id(h) != row.id:
        raise BulletinUnverified("its signed header hashes to another id: the stored id or envelope was changed")
    try:
        intact = hmac.compare_digest(sha256(b64d(env.ciphertext)), b64d(h.ciphertext_sha256))
    except InvalidInput:
        intact = False
    if not intact:
        raise BulletinUnverified(
            "its ciphertext does not match the hash its signed header commits to: the ciphertext was changed"
        )
    columns = {
        "channel": (row.channel, h.channel),
        "author": (row.author, h.author),
        "seq": (row.seq, h.seq),
        "TLP": (row.tlp, h.handling.tlp),
        "created": (row.created, h.created),
        "state position": (row.state_pos, h.state.pos),
    }
    for name, (stored, signed) in columns.items():
        if stored != signed:
            raise BulletinUnverified(
                f"its stored {name} ({str(stored)[:64]!r}) differs from the signed header's ({signed!r}): "
                f"the {name} was changed"
            )
    if me not in [r.node for r in h.recipients]:
        raise BulletinUnverified(
            "this node is not one of its envelope's readers, so its stored content cannot be checked"
        )
    try:
        bulletin = open_envelope(env, row.id, me, key)
    except ExchangeError as exc:
        raise BulletinUnverified("its envelope no longer decrypts with this node's key") from exc
    content = row.content.encode("utf-8") if isinstance(row.content, str) else b""
    if not hmac.compare_digest(content, bulletin.payload_bytes):
        raise BulletinUnverified(
            "its stored content differs from what its signed envelope decrypts to: the content was changed"
        )
    return env, bulletin


def _line(summary: BulletinSummary, unread: bool) -> InboxLine:
    return InboxLine(**summary.as_json(), unread=unread)


class Inbox:
    """Listing and reading bulletins, within the reader's rights."""

    def __init__(
        self,
        me: NodeId,
        store: Store,
        fed: Federation,
        keys: NodeKeys,
        access: Access,
        out: Outbox,
        epochs: EpochBook | None = None,
    ) -> None:
        self.me = me
        self.store = store
        self.fed = fed
        self.keys = keys
        self.access = access
        self.outbox = out
        self.epochs = epochs  # envelope v2 (docs/protocol.md, 15): None, v1 only
        self._reported: set[tuple[str, str]] = set()

    async def list_bulletins(
        self, user: User, channel: str | None = None, after: int = 0, limit: int = 50
    ) -> list[BulletinSummary]:
        """Bulletins of the user's channels, in the order this node stored them.

        Stored metadata and titles, not checked against the envelopes (that is done when one is
        opened): a listing makes no claim about signatures.
        """
        user.require("contact-point")
        if channel is not None:
            self.access.require_readable(user, channel)
            wanted = [channel]
        else:
            wanted = self.access.readable_channels(user)
        if not wanted:
            return []
        window = positions(wanted, max(1, min(limit, 500)), after=after, dialect=self.store.engine.dialect.name)
        query = sa.select(*SUMMARY).where(bulletins.c.n.in_(window)).order_by(bulletins.c.n)
        async with self.store.read() as conn:
            rows = await summarised(conn, (await conn.execute(query)).all())
        return [summary_line(r, content) for r, content in rows]

    async def load(self, user: User, bid: str) -> BulletinView:
        """One bulletin in full, if it is in a channel the user reads now, checked against its signed
        envelope now (`_verified_bulletin`); nothing is recorded unless the check fails.

        A row that fails is not shown: BulletinUnverified names what failed, and the failure is
        logged and audited (`bulletin.unverified`, once per bulletin and problem in a run).
        """
        user.require("contact-point")
        async with self.store.read() as conn:
            row = (await conn.execute(sa.select(bulletins).where(bulletins.c.id == bid))).first()
            if row is None or not self.access.may_read(user, row.channel):
                # Same answer whether it does not exist or is not the user's: no probing.
                raise NotFound(f"no bulletin {bid} in your channels")
            # Shown only if they verify now, as the console's are: a row written by hand is left out.
            got = await checked_receipts(conn, self.fed, bid)
        args = (row, self.me, self.fed, self.keys)
        try:
            if self.epochs is not None and stored_v2(as_bytes(row.envelope)):  # 15: under its epoch's key
                return view_v2(await verified_v2_held(row, self.fed, self.epochs), self.fed, [r.receipt for r in got])
            # Tens of milliseconds for a 4 MB envelope: not on the loop that serves the others.
            if isinstance(row.envelope, bytes | bytearray | memoryview) and len(row.envelope) > THREAD_FROM:
                env, bulletin = await asyncio.to_thread(_verified_bulletin, *args)
            else:
                env, bulletin = _verified_bulletin(*args)
        except BulletinUnverified as failed:
            await self._unverified(user, bid, failed.detail)
            raise BulletinUnverified(f"bulletin {bid} is not shown: {failed.detail}") from None
        return BulletinView(
            id=BulletinId(bid),
            channel=ChannelId(env.header.channel),
            author=NodeId(env.header.author),
            author_name=self.fed.name_of(env.header.author),
            seq=env.header.seq,
            created=env.header.created,
            signature_verified=True,  # by _verified_bulletin, for this request
            signer=env.header.signer,
            recipients=[NodeId(r.node) for r in env.header.recipients],
            bulletin=bulletin.model_dump(mode="json"),
            receipts=[json.loads(r.receipt) for r in got],
        )

    async def _unverified(self, user: User, bid: str, problem: str) -> None:
        """Log and audit a failed check, once per bulletin and problem in this run."""
        if (bid, problem) in self._reported:
            return
        self._reported.add((bid, problem))
        log.error("%s: bulletin %s does not verify against its signed envelope: %s", self.me, bid, problem)
        await self.store.audit(
            ev.BulletinUnverified(
                event=ev.BULLETIN_UNVERIFIED, at=timestamp(), bulletin=bid, user=user.name, problem=problem
            )
        )

    async def read(self, user: User, bid: str, *, attachment: int | None = None) -> BulletinView:
        """One bulletin in full, with its receipts; the open is audited and signed as a receipt.
        `attachment`: the one to be downloaded, which must exist (NotFound before anything is
        recorded: a refused request stores nothing)."""
        shown = await self.load(user, bid)
        if attachment is not None and not 0 <= attachment < len(shown.bulletin["attachments"]):
            raise NotFound("no such attachment")
        now = timestamp()
        opened = make_receipt(bid, self.me, "opened", now, self.keys.signing)
        # Sent to the author only by a recipient: a grantee of earlier epochs (docs/protocol.md,
        # 15.7) is no reader of theirs, and the author would refuse the receipt and its transaction.
        owed = shown.author != self.me and self.me in shown.recipients

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
            audit.add(
                ev.BulletinOpened(event=ev.BULLETIN_OPENED, at=now, bulletin=bid, channel=shown.channel, user=user.name)
            )
            # Read by this user, wherever they opened it (console, API or CLI): no longer unread.
            seen = sa.and_(user_reads.c.user == user.name, user_reads.c.bulletin_id == bid)
            if await conn.scalar(sa.select(user_reads.c.user).where(seen)) is None:
                await conn.execute(sa.insert(user_reads).values(user=user.name, bulletin_id=bid, at=now))
            exists = await conn.scalar(
                sa.select(receipts.c.node).where(
                    receipts.c.bulletin_id == bid, receipts.c.node == self.me, receipts.c.status == "opened"
                )
            )
            if exists is None:
                await conn.execute(sa.insert(receipts).values(**receipt_row(opened)))
                if owed:
                    await conn.execute(
                        sa.insert(outbox).values(**queued_row(shown.author, "receipt", ReceiptRef(bid, "opened")))
                    )

        await self.store.write(job)
        if owed:
            self.outbox.wake([shown.author])
        return shown

    # -- the console's views ----------------------------------------------------------------

    async def channel_summaries(self, user: User) -> list[ChannelSummary]:
        """Contact points get their channels with unread counts; others every channel, as in the API."""
        states = self.access.channels.all()
        readable: list[str] = []
        counts: dict[str, tuple[int, int]] = {}
        if user.role == "contact-point":
            states = [s for s in states if s.channel in user.channels]
            readable = self.access.readable_channels(user)
            counts = await self.unread_counts(user, readable)
        out = []
        for s in states:
            unread, total = counts.get(s.channel, (0, 0))
            out.append(
                ChannelSummary(
                    **channel_view(s),
                    my_rights=sorted(s.rights(self.me)),
                    readable=s.channel in readable,
                    unread=unread,
                    total=total,
                )
            )
        return out

    async def unread_counts(self, user: User, channels: Sequence[str]) -> dict[str, tuple[int, int]]:
        """channel -> (unread, total) for this user, among `channels` the user reads now.

        Exact, and one row per channel to read whatever the store holds: the database keeps the
        number of bulletins per channel and of those each user has opened (triggers of revision 0003).
        """
        wanted = [c for c in channels if self.access.may_read(user, c)]
        if not wanted:
            return {}
        mine = sa.and_(user_channel_reads.c.user == user.name, user_channel_reads.c.channel == channel_counts.c.channel)
        async with self.store.read() as conn:
            rows = await conn.execute(
                sa.select(channel_counts.c.channel, channel_counts.c.bulletins, user_channel_reads.c.opened)
                .select_from(channel_counts.outerjoin(user_channel_reads, mine))
                .where(channel_counts.c.channel.in_(wanted), channel_counts.c.bulletins > 0)
            )
            return {r[0]: (max(0, int(r[1]) - int(r[2] or 0)), int(r[1])) for r in rows}

    async def opened_by(self, user: User, ids: Sequence[str]) -> set[str]:
        """Which of `ids` this user has opened (a bulletin is unread until its reader opens it)."""
        if not ids:
            return set()
        async with self.store.read() as conn:
            rows = await conn.scalars(
                sa.select(user_reads.c.bulletin_id).where(
                    user_reads.c.user == user.name, user_reads.c.bulletin_id.in_(list(ids))
                )
            )
            return set(rows)

    async def _lines(self, user: User, summaries: Sequence[BulletinSummary]) -> list[InboxLine]:
        opened = await self.opened_by(user, [s.id for s in summaries])
        return [_line(s, s.id not in opened) for s in summaries]

    async def page(self, user: User, channel: str, before: int | None = None, size: int = PAGE) -> InboxPage:
        """The `size` newest bulletins of a channel below cursor `before`, newest first, marked unread."""
        user.require("contact-point")
        self.access.require_readable(user, channel)
        # One more than a page: whether there is an older page, without counting the channel.
        window = positions([channel], size + 1, newest=True, before=before)  # one channel: the same everywhere
        query = sa.select(*SUMMARY).where(bulletins.c.n.in_(window)).order_by(bulletins.c.n.desc())
        async with self.store.read() as conn:
            found = (await conn.execute(query)).all()
            items = [summary_line(r, content) for r, content in await summarised(conn, found[:size])]
        return InboxPage(items=await self._lines(user, items), older=items[-1].cursor if len(found) > size else None)

    async def references(self, user: User, ids: Sequence[str]) -> list[Reference]:
        """Referenced bulletins: title and place in the user's readable channels, else one reason
        (no content) whether this node holds it elsewhere or not at all, as `load` answers both
        alike: no probing. Only rows in readable channels are read."""
        if not ids:
            return []
        readable = self.access.readable_channels(user)
        rows: dict[str, tuple[Any, dict[str, Any]]] = {}
        if readable:
            where = sa.and_(bulletins.c.id.in_(list(ids)), bulletins.c.channel.in_(readable))
            async with self.store.read() as conn:
                found = (await conn.execute(sa.select(*SUMMARY).where(where))).all()
                rows = {r.id: (r, content) for r, content in await summarised(conn, found)}
        out = []
        for bid in ids:
            row, content = rows.get(bid, (None, {}))
            if row is None:
                out.append(Reference(id=bid, visible=False, why=NOT_AVAILABLE))
            else:
                s = summary_line(row, content)
                out.append(
                    Reference(id=bid, visible=True, channel=s.channel, title=s.title, kind=s.kind, created=s.created)
                )
        return out

    async def reply_to(self, user: User, bid: str) -> ReplyTo | None:
        """What an answer to `bid` starts from, if the user may read it (None otherwise, whether
        this node holds it or not)."""
        readable = self.access.readable_channels(user)
        if not readable:
            return None
        no_onward = onward_forbidden_sql(bulletins.c.id).label("no_onward")
        where = sa.and_(bulletins.c.id == bid, bulletins.c.channel.in_(readable))
        async with self.store.read() as conn:
            found = (await conn.execute(sa.select(*SUMMARY, no_onward).where(where))).all()
            rows = list(await summarised(conn, found))
        if not rows:
            return None
        row, content = rows[0]
        s = summary_line(row, content)
        tlp = s.tlp if s.tlp in TLP_ORDER else "RED"  # a stored label that is none (edited by hand): the strictest
        return ReplyTo(id=bid, channel=s.channel, title=s.title, tlp=tlp, no_onward_sharing=bool(row.no_onward))

    async def referrers(self, user: User, bid: str) -> list[BulletinSummary]:
        """Bulletins in the user's readable channels that refer to `bid` (answers, feedback, forwards),
        newest first, among the newest REFERRER_SCAN of those channels (answers follow what they answer)."""
        readable = self.access.readable_channels(user)
        if not readable:
            return []
        mentions = sa.func.coalesce(bulletins.c.summary, bulletins.c.content).contains(bid, autoescape=True)
        query = sa.select(*SUMMARY).where(bulletins.c.channel.in_(readable), mentions)
        async with self.store.read() as conn:
            oldest, _ = await newest_start(conn, readable, REFERRER_SCAN)
            query = query.where(bulletins.c.n >= oldest).order_by(bulletins.c.n.desc()).limit(REFERRERS)
            rows = await summarised(conn, (await conn.execute(query)).all())
        return [summary_line(r, content) for r, content in rows if bid in content.get("references", [])]

    async def recipient_statuses(self, shown: BulletinView) -> list[RecipientStatus]:
        """Per recipient node of a bulletin the user has just read: when it received and opened it,
        as far as this node knows (read afresh, so the opening `read` has just signed is among them),
        by the signed receipts it holds that verify when shown."""
        async with self.store.read() as conn:  # only those whose signed receipts verify now
            held = {(r.node, r.status): r.at for r in await checked_receipts(conn, self.fed, shown.id)}
        return [
            RecipientStatus(
                node=node,
                author=node == shown.author,
                received=held.get((node, "received")),
                opened=held.get((node, "opened")),
                known=shown.author == self.me or node == self.me,
            )
            for node in shown.recipients
        ]

    async def search(self, user: User, text: str, channel: str = "", kind: str = "") -> SearchResults:
        """Free text and indicators over the bulletins of the channels the user reads, newest first.

        Only the newest SEARCH_SCAN bulletins of the channels searched are looked at (`stopped` says
        there were older ones), so a search costs the same at a million bulletins as at a thousand.
        SQL narrows them (`LIKE` over the stored, case-folded search text); the match is on that
        text and the parsed summary. Finding a bulletin does not open it.
        """
        readable = self.access.readable_channels(user)
        words = [w.casefold() for w in text.strip()[:200].split()][:10]
        wanted = [c for c in readable if not channel or c == channel]
        found: list[BulletinSummary] = []
        stopped = False
        if (words or kind) and wanted:
            # The stored search text is case-folded already, so a plain LIKE (no lower(), no ILIKE)
            # narrows; a row stored without one is matched on its content, lower-cased by the database.
            hay = sa.func.coalesce(bulletins.c.search_text, sa.func.lower(bulletins.c.content))
            query = sa.select(*SUMMARY, bulletins.c.search_text).where(bulletins.c.channel.in_(wanted))
            for word in words:
                query = query.where(hay.contains(word, autoescape=True))
            if kind:  # canonical JSON escapes every quote inside a string, so this is the kind member
                kind_member = f'"kind":{json.dumps(kind)}'
                query = query.where(sa.func.coalesce(bulletins.c.summary, bulletins.c.content).contains(kind_member))
            async with self.store.read() as conn:
                oldest, stopped = await newest_start(conn, wanted, SEARCH_SCAN)
                query = query.where(bulletins.c.n >= oldest).order_by(bulletins.c.n.desc())
                rows = (await conn.execute(query.limit(SEARCH_CANDIDATES))).all()
                texts = await search_texts(conn, rows)
                parsed = await summarised(conn, rows)
            for r, content in parsed:
                if kind and content.get("kind") != kind:
                    continue
                if all(w in texts[r.n] for w in words):
                    found.append(summary_line(r, content))
                if len(found) == PAGE:
                    break
        return SearchResults(
            channels=readable,
            results=await self._lines(user, found),
            searched=bool(words or kind),
            stopped=stopped,
            looked_at=SEARCH_SCAN,
        )
