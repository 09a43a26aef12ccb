"""Pages for contact points: their channels, an inbox per channel, one bulletin, the compose form, search.

Every listing, read and post goes through `NodeService` with the signed-in user, as the JSON API
does, so the console shows nothing the API would refuse. The SQL here only finds candidates
(page cursors, references, search hits) among channels the service has just said the user may
read; opening a bulletin is always `NodeService.read`, which audits it and signs the receipt.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.clock import timestamp
from exchange.crypto import b64d, b64e
from exchange.errors import Forbidden, InvalidInput, NotFound
from exchange.model import BULLETIN_KINDS, MAX_ATTACHMENT_BYTES, MAX_ATTACHMENTS, Bulletin
from exchange.node.appkeys import SERVICE
from exchange.node.client_api import channel_view
from exchange.node.service import NodeService
from exchange.node.users import User
from exchange.store import AuditBuffer, Store, bulletins, receipts, user_reads
from exchange.web.pages import TLP, redirect, render
from exchange.web.session import Session, posted_form, signed_in

PAGE = 50
SEARCH_CANDIDATES = 2000  # rows one search reads before it says it stopped
HEX64 = re.compile(r"^[0-9a-f]{64}$")
LIST_SPLIT = re.compile(r"[\s,;]+")


# -- what the service lets the user read ---------------------------------------------------------


async def readable_channels(service: NodeService, user: User) -> list[str]:
    """The user's channels the service lets them read now, asked of the service channel by channel."""
    await service.list_bulletins(user, limit=1)  # Forbidden for anyone who is not a contact point
    out = []
    for channel in sorted(user.channels):
        try:
            await service.list_bulletins(user, channel=channel, limit=1)
        except (Forbidden, NotFound):
            continue
        out.append(channel)
    return out


async def opened_by(store: Store, user: str, ids: Sequence[str]) -> set[str]:
    """Which of `ids` this user has opened (a bulletin is unread until its reader opens it)."""
    if not ids:
        return set()
    async with store.read() as conn:
        rows = await conn.scalars(
            sa.select(user_reads.c.bulletin_id).where(user_reads.c.user == user, user_reads.c.bulletin_id.in_(ids))
        )
        return set(rows)


async def mark_opened(store: Store, user: str, bid: str) -> None:
    async def job(conn: AsyncConnection, audit: AuditBuffer) -> None:
        where = sa.and_(user_reads.c.user == user, user_reads.c.bulletin_id == bid)
        if await conn.scalar(sa.select(user_reads.c.user).where(where)) is None:
            await conn.execute(sa.insert(user_reads).values(user=user, bulletin_id=bid, at=timestamp()))

    await store.write(job)


async def unread_counts(store: Store, user: str, channels: Sequence[str]) -> dict[str, tuple[int, int]]:
    """channel -> (unread, total) for this user."""
    if not channels:
        return {}
    read = sa.exists().where(user_reads.c.user == user, user_reads.c.bulletin_id == bulletins.c.id)
    unread = sa.func.sum(sa.case((read, 0), else_=1))
    async with store.read() as conn:
        rows = await conn.execute(
            sa.select(bulletins.c.channel, unread, sa.func.count())
            .where(bulletins.c.channel.in_(channels))
            .group_by(bulletins.c.channel)
        )
        return {r[0]: (int(r[1] or 0), int(r[2])) for r in rows}


# The columns a bulletin summary (`_summary`) is made from: no envelope, so lists stay light.
SUMMARY = (
    bulletins.c.id,
    bulletins.c.channel,
    bulletins.c.author,
    bulletins.c.created,
    bulletins.c.tlp,
    bulletins.c.content,
)


def _summary(row: Any) -> dict[str, Any]:
    content = json.loads(row.content)
    return {
        "id": row.id,
        "channel": row.channel,
        "author": row.author,
        "created": row.created,
        "tlp": row.tlp,
        "kind": content["kind"],
        "title": content["title"],
    }


async def describe(service: NodeService, readable: Sequence[str], ids: Sequence[str]) -> list[dict[str, Any]]:
    """Referenced bulletins: title and link in the `readable` channels, else why not (no content)."""
    if not ids:
        return []
    async with service.store.read() as conn:
        rows = {r.id: r for r in await conn.execute(sa.select(*SUMMARY).where(bulletins.c.id.in_(list(ids))))}
    out = []
    for bid in ids:
        row = rows.get(bid)
        if row is None:
            out.append({"id": bid, "visible": False, "why": "not held at this node"})
        elif row.channel not in readable:
            out.append({"id": bid, "visible": False, "why": "outside your channels"})
        else:
            out.append({**_summary(row), "visible": True})
    return out


async def referring(service: NodeService, readable: Sequence[str], bid: str) -> list[dict[str, Any]]:
    """Bulletins in the `readable` channels that refer to `bid` (answers, feedback, forwards)."""
    if not readable:
        return []
    async with service.store.read() as conn:
        rows = (
            await conn.execute(
                sa.select(*SUMMARY)
                .where(bulletins.c.channel.in_(readable), bulletins.c.content.contains(bid, autoescape=True))
                .order_by(bulletins.c.n.desc())
                .limit(100)
            )
        ).all()
    return [_summary(r) for r in rows if bid in json.loads(r.content).get("references", [])]


# -- channels and inboxes -------------------------------------------------------------------------


async def channels_page(request: web.Request) -> web.StreamResponse:
    """Contact points see their channels with unread counts; others see all, as in the API."""
    session = await signed_in(request)
    user, service = session.user, request.app[SERVICE]
    states = service.channels.all()
    counts: dict[str, tuple[int, int]] = {}
    readable: list[str] = []
    if user.role == "contact-point":
        states = [s for s in states if s.channel in user.channels]  # the API's list_channels rule
        readable = await readable_channels(service, user)
        counts = await unread_counts(service.store, user.name, readable)
    views = [
        {**channel_view(s), "my_rights": sorted(s.rights(service.me)), "readable": s.channel in readable}
        for s in states
    ]
    return render(request, "channels.html", session=session, channels=views, counts=counts)


async def _page_start(store: Store, channel: str, before: int | None) -> int:
    """The cursor after which the PAGE newest bulletins (below `before`) of a channel begin."""
    query = sa.select(bulletins.c.n).where(bulletins.c.channel == channel)
    if before is not None:
        query = query.where(bulletins.c.n < before)
    async with store.read() as conn:
        value = await conn.scalar(query.order_by(bulletins.c.n.desc()).offset(PAGE).limit(1))
    return int(value or 0)


def _int_query(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 12:
        raise InvalidInput(f"{name} must be a whole number")
    return int(raw)


async def inbox_page(request: web.Request) -> web.StreamResponse:
    """A channel's bulletins, newest first, with what this user has not opened yet marked unread."""
    session = await signed_in(request)
    user, service = session.user, request.app[SERVICE]
    channel = request.match_info["channel"]
    before = _int_query(request, "before")
    start = await _page_start(service.store, channel, before)
    items = await service.list_bulletins(user, channel=channel, after=start, limit=PAGE)
    if before is not None:
        items = [i for i in items if i["cursor"] < before]
    items.reverse()
    opened = await opened_by(service.store, user.name, [i["id"] for i in items])
    state = service.channels.state(channel)
    posted = request.query.get("posted")
    return render(
        request,
        "inbox.html",
        session=session,
        channel=channel_view(state),
        can_post="post" in state.rights(service.me) and not state.closed,
        items=[{**i, "unread": i["id"] not in opened} for i in items],
        older=items[-1]["cursor"] if items and start else None,
        newest=before is not None,
        posted=posted if posted and HEX64.match(posted) else None,
    )


async def held_receipts(store: Store, bid: str) -> dict[tuple[str, str], str]:
    """(node, status) -> time of the signed receipts this node holds for a bulletin, read after
    `NodeService.read` so that the opening it has just signed is among them."""
    async with store.read() as conn:
        rows = await conn.execute(
            sa.select(receipts.c.node, receipts.c.status, receipts.c.at).where(receipts.c.bulletin_id == bid)
        )
        return {(r.node, r.status): r.at for r in rows}


def receipt_rows(shown: dict[str, Any], held: dict[tuple[str, str], str], me: str) -> list[dict[str, Any]]:
    """Per recipient node: when it received and opened the bulletin, as far as this node knows.

    Receipts travel to the author's node only, so a reader knows its own and no one else's.
    """
    return [
        {
            "node": node,
            "author": node == shown["author"],
            "received": held.get((node, "received")),
            "opened": held.get((node, "opened")),
            "known": shown["author"] == me or node == me,
        }
        for node in shown["recipients"]
    ]


async def attachment_download(request: web.Request) -> web.StreamResponse:
    """One attachment, as a download (never rendered inline); fetching it is an audited open."""
    session = await signed_in(request)
    shown = await request.app[SERVICE].read(session.user, request.match_info["id"])
    attachments = shown["bulletin"]["attachments"]
    index = int(request.match_info["index"])
    if index >= len(attachments):
        raise NotFound("no such attachment")
    item = attachments[index]
    quoted = urllib.parse.quote(item["name"], safe="")
    return web.Response(
        body=b64d(item["data"]),
        content_type="application/octet-stream",
        headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{quoted}",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def bulletin_page(request: web.Request) -> web.StreamResponse:
    """One bulletin in full; opening it is audited, signed as a receipt and sent to its author."""
    session = await signed_in(request)
    user, service = session.user, request.app[SERVICE]
    bid = request.match_info["id"]
    shown = await service.read(user, bid)  # also marks it read for this user
    bulletin = shown["bulletin"]
    readable = await readable_channels(service, user)
    return render(
        request,
        "bulletin.html",
        session=session,
        b=shown,
        bulletin=bulletin,
        tlp=bulletin["handling"]["tlp"],
        author=service.fed.node(shown["author"]),
        receipts=receipt_rows(shown, await held_receipts(service.store, bid), service.me),
        references=await describe(service, readable, bulletin["references"]),
        referrers=await referring(service, readable, bid),
    )


# -- compose ------------------------------------------------------------------------------------

FIELD_HELP = {
    "attachments": f"At most {MAX_ATTACHMENTS} files, {MAX_ATTACHMENT_BYTES // (1024 * 1024)} MiB together.",
    "title": "Give the bulletin a title of at most 200 characters.",
    "body": "The text may hold at most 200,000 characters.",
    "kind": "Choose one of the kinds offered.",
    "tlp": "Choose one of the TLP labels offered.",
    "air_waybills": "Air waybill numbers look like 176-12345675: the airline prefix, a dash, eight digits.",
    "hs_codes": "HS codes have 4 to 10 digits, for example 8443.99 or 844399.",
    "airports": "Airports are IATA codes of three letters, for example NBO.",
    "flights": "Flight numbers look like KQ100 or BA2517.",
    "companies": "One company or consignee per line, at most 200 characters each.",
    "risk_indicators": "One risk indicator per line, at most 200 characters each.",
    "references": "A reference is the id of an earlier bulletin: 64 hexadecimal characters.",
    "language": "A language tag such as en, fr or pt-BR.",
    "expires": "A date, written YYYY-MM-DD.",
}
INDICATOR_FIELDS = ("air_waybills", "hs_codes", "airports", "flights", "companies", "risk_indicators")
PER_LINE = ("companies", "risk_indicators")


def _items(field: str, raw: str) -> list[str]:
    if field in PER_LINE:
        return [line.strip() for line in raw.splitlines() if line.strip()]
    values = [v for v in LIST_SPLIT.split(raw.strip()) if v]
    if field in ("airports", "flights"):
        values = [v.upper() for v in values]
    if field == "air_waybills":
        values = [f"{v[:3]}-{v[3:]}" if v.isdigit() and len(v) == 11 else v for v in values]
    return values


def attachments_from_form(files: list[web.FileField]) -> tuple[list[dict[str, str]], str | None]:
    """Uploaded files as bulletin attachments, or why they cannot be sent."""
    chosen = [f for f in files if f.filename]
    if len(chosen) > MAX_ATTACHMENTS:
        return [], f"At most {MAX_ATTACHMENTS} files."
    out, total = [], 0
    for f in chosen:
        data = f.file.read(MAX_ATTACHMENT_BYTES + 1)
        total += len(data)
        if total > MAX_ATTACHMENT_BYTES:
            return [], f"The files are larger than {MAX_ATTACHMENT_BYTES // (1024 * 1024)} MiB together."
        name = re.sub(r"[/\\\x00-\x1f]", "_", f.filename.rsplit("/", 1)[-1])[:200] or "file"
        media = (
            f.content_type.lower()
            if re.fullmatch(r"[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*", f.content_type.lower())
            else "application/octet-stream"
        )
        out.append({"name": name, "media_type": media, "data": b64e(data)})
    return out, None


def bulletin_from_form(
    form: dict[str, str], attachments: list[dict[str, str]] | None = None
) -> tuple[Bulletin | None, dict[str, str]]:
    """The bulletin a compose form describes, or the message for each field that is wrong."""
    raw: dict[str, Any] = {
        "attachments": attachments or [],
        "kind": form.get("kind", ""),
        "handling": {"tlp": form.get("tlp", ""), "no_onward_sharing": form.get("no_onward_sharing") == "on"},
        "title": form.get("title", ""),
        "body": form.get("body", "").replace("\r\n", "\n"),
        "indicators": {f: _items(f, form.get(f, "")) for f in INDICATOR_FIELDS},
        "references": _items("references", form.get("references", "").lower()),
        "language": form.get("language", "").strip() or "en",
    }
    if form.get("expires", "").strip():
        raw["expires"] = form["expires"].strip()
    try:
        return Bulletin.model_validate(raw), {}
    except ValidationError as exc:
        errors: dict[str, str] = {}
        for err in exc.errors():
            loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
            field = loc[1] if loc[:1] in (["indicators"], ["handling"]) and len(loc) > 1 else (loc[0] if loc else "")
            errors.setdefault(field, FIELD_HELP.get(field, str(err["msg"])))
        return None, errors


def _postable(service: NodeService, user: User) -> list[dict[str, Any]]:
    """The channels to offer in the form (the service decides again when the bulletin is posted)."""
    return [
        {"id": s.channel, "title": s.title, "tlp": s.default_handling.tlp}
        for s in service.channels.all()
        if s.channel in user.channels and "post" in s.rights(service.me) and not s.closed
    ]


def _compose(
    request: web.Request, session: Session, form: dict[str, str], errors: dict[str, str], *, status: int = 200
) -> web.Response:
    service = request.app[SERVICE]
    return render(
        request,
        "compose.html",
        status=status,
        session=session,
        channels=_postable(service, session.user),
        kinds=BULLETIN_KINDS,
        max_files=MAX_ATTACHMENTS,
        max_mib=MAX_ATTACHMENT_BYTES // (1024 * 1024),
        tlps=list(TLP),
        form=form,
        errors=errors,
    )


async def compose_page(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    user, service = session.user, request.app[SERVICE]
    user.require("contact-point")
    channels = _postable(service, user)
    form = {"channel": request.query.get("channel", ""), "kind": "alert"}
    reply = request.query.get("reply", "")
    if HEX64.match(reply):
        (ref,) = await describe(service, await readable_channels(service, user), [reply])
        if ref["visible"]:
            form.update(channel=ref["channel"], kind="feedback", references=reply, title=f"Re: {ref['title']}"[:200])
    chosen = next((c for c in channels if c["id"] == form["channel"]), channels[0] if channels else None)
    form["tlp"] = chosen["tlp"] if chosen else "AMBER"
    return _compose(request, session, form, {})


async def compose_post(request: web.Request) -> web.StreamResponse:
    session, form = await posted_form(request)
    user, service = session.user, request.app[SERVICE]
    user.require("contact-point")
    files = [v for v in (await request.post()).getall("attachments", []) if isinstance(v, web.FileField)]
    attachments, too_big = attachments_from_form(files)
    bulletin, errors = bulletin_from_form(form, attachments)
    if too_big:
        errors["attachments"] = too_big + " Choose them again."
    channel = form.get("channel", "")
    if not channel:
        errors["channel"] = "Choose the channel to post to."
    if bulletin is None or errors:
        fields = ", ".join(sorted(errors))
        await service.audit_rejection(
            {"method": "POST", "path": request.path, "status": 422, "reason": f"invalid {fields}", "user": user.name}
        )
        return _compose(request, session, form, errors, status=422)
    posted = await service.post(user, channel, bulletin)
    await mark_opened(service.store, user.name, posted["id"])  # one's own bulletin is not news to oneself
    return redirect(f"/console/channels/{channel}?posted={posted['id']}")


# -- search -------------------------------------------------------------------------------------


def _haystack(content: dict[str, Any]) -> str:
    indicators = content.get("indicators", {})
    parts = [content.get("title", ""), content.get("body", ""), content.get("kind", "")]
    parts += [str(v) for values in indicators.values() for v in values]
    return "\n".join(parts).casefold()


async def search_page(request: web.Request) -> web.StreamResponse:
    """Free text and indicators over the bulletins of the channels the user may read."""
    session = await signed_in(request)
    user, service = session.user, request.app[SERVICE]
    readable = await readable_channels(service, user)
    q = request.query.get("q", "").strip()[:200]
    channel = request.query.get("channel", "")
    kind = request.query.get("kind", "")
    words = [w.casefold() for w in q.split()][:10]
    wanted = [c for c in readable if not channel or c == channel]
    results: list[dict[str, Any]] = []
    stopped = False
    if (words or kind) and wanted:
        query = sa.select(*SUMMARY).where(bulletins.c.channel.in_(wanted))
        for word in words:
            # a cheap, case-insensitive prefilter in SQL; the real match is on the parsed fields below
            query = query.where(sa.func.lower(bulletins.c.content).contains(word.lower(), autoescape=True))
        async with service.store.read() as conn:
            rows = (await conn.execute(query.order_by(bulletins.c.n.desc()).limit(SEARCH_CANDIDATES))).all()
        stopped = len(rows) == SEARCH_CANDIDATES
        for r in rows:
            content = json.loads(r.content)
            if kind and content.get("kind") != kind:
                continue
            hay = _haystack(content)
            if all(w in hay for w in words):
                results.append(_summary(r))
            if len(results) == PAGE:
                break
        opened = await opened_by(service.store, user.name, [r["id"] for r in results])
        results = [{**r, "unread": r["id"] not in opened} for r in results]
    return render(
        request,
        "search.html",
        session=session,
        q=q,
        channel=channel,
        kind=kind,
        channels=readable,
        kinds=BULLETIN_KINDS,
        results=results,
        searched=bool(words or kind),
        stopped=stopped,
    )


def routes(prefix: str) -> list[web.RouteDef]:
    return [
        web.get(prefix + "/channels", channels_page),
        web.get(prefix + "/channels/{channel}", inbox_page),
        web.get(prefix + "/bulletins/{id}", bulletin_page),
        web.get(prefix + "/bulletins/{id}/attachments/{index:\\d{1,2}}", attachment_download),
        web.get(prefix + "/compose", compose_page),
        web.post(prefix + "/compose", compose_post),
        web.get(prefix + "/search", search_page),
    ]
