"""Pages for contact points: their channels, an inbox per channel, one bulletin, the compose form, search.

Every listing, read, search and post goes through `NodeService` with the signed-in user, as the
JSON API does, and "may read / may post here" is `service.access`, so the console shows and
offers nothing the API would refuse. Opening a bulletin is always `NodeService.read`, which
audits it and signs the receipt. This module parses forms and renders pages; it holds no query.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from exchange.crypto import b64d, b64e
from exchange.errors import InvalidInput
from exchange.http.appkeys import SERVICE
from exchange.model import BULLETIN_KINDS, MAX_ATTACHMENT_BYTES, MAX_ATTACHMENTS, Bulletin
from exchange.protocol.indicators import Problem, indicator_problems
from exchange.service.node import NodeService
from exchange.service.sharing import TLP_ORDER
from exchange.service.users import User
from exchange.service.views import channel_view
from exchange.web.i18n import N_, Text
from exchange.web.pages import TLP, file_name, redirect, render
from exchange.web.session import Session, client_address, posted_form, read_form, signed_in

HEX64 = re.compile(r"[0-9a-f]{64}")  # always with fullmatch: "$" would let a trailing newline in
LIST_SPLIT = re.compile(r"[\s,;]+")


# -- channels and inboxes -------------------------------------------------------------------------


async def channels_page(request: web.Request) -> web.StreamResponse:
    """Contact points see their channels with unread counts; others see all, as in the API."""
    session = await signed_in(request)
    channels = await request.app[SERVICE].inbox.channel_summaries(session.user)
    counts = {c.id: (c.unread, c.total) for c in channels if c.readable}
    return render(request, "channels.html", session=session, channels=channels, counts=counts)


def _int_query(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    # ASCII: "²".isdigit(), and int("²") fails. At most PostgreSQL's INTEGER, which it is compared with.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 10 or int(raw) > 2**31 - 1:
        raise InvalidInput(f"{name} must be a whole number below 2^31")
    return int(raw)


async def inbox_page(request: web.Request) -> web.StreamResponse:
    """A channel's bulletins, newest first, with what this user has not opened yet marked unread."""
    session = await signed_in(request)
    user, service = session.user, request.app[SERVICE]
    channel = request.match_info["channel"]
    before = _int_query(request, "before")
    # Before the page, and of every channel the user reads: the live inbox follows them all and
    # takes up from here (of this channel alone, it replayed the others' newer bulletins as new).
    service.access.require_readable(user, channel)
    head = await service.follow.head(user)
    page = await service.inbox.page(user, channel, before)
    posted = request.query.get("posted")
    return render(
        request,
        "inbox.html",
        session=session,
        channel=channel_view(service.channels.state(channel)),
        can_post=service.access.may_post(user, channel),
        items=page.items,
        older=page.older,
        newest=before is not None,
        head=head,
        # Only for a bulletin of this node's on the page: a link cannot make it claim a post.
        posted=posted if posted and any(i.id == posted and i.author == service.me for i in page.items) else None,
    )


async def rfis_page(request: web.Request) -> web.StreamResponse:
    """A channel's requests for information: open, overdue (past their due date) and answered, by whom."""
    session = await signed_in(request)
    service = request.app[SERVICE]
    channel = request.match_info["channel"]
    board = await service.rfis.board(session.user, channel)
    return render(
        request, "rfis.html", session=session, channel=channel_view(service.channels.state(channel)), board=board
    )


# The detail of `Inbox.read`'s NotFound for an attachment index it does not hold, which the error
# page translates (marked here for the catalogue: the service does not translate).
NO_SUCH_ATTACHMENT = N_("no such attachment")


async def attachment_download(request: web.Request) -> web.StreamResponse:
    """One attachment, as a download (never rendered inline); fetching it is an audited open."""
    session = await signed_in(request)
    index = int(request.match_info["index"])
    shown = await request.app[SERVICE].read(session.user, request.match_info["id"], attachment=index)
    item = shown.bulletin["attachments"][index]
    quoted = urllib.parse.quote(file_name(item["name"]), safe="")
    return web.Response(
        body=b64d(item["data"]),
        content_type="application/octet-stream",
        headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{quoted}",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def stix_export(request: web.Request) -> web.StreamResponse:
    """A channel (or `?bulletin=<id>` in it) as a STIX 2.1 bundle file, under the TAXII policy:
    `Taxii.export` decides what may leave the node and audits it."""
    session = await signed_in(request)
    channel = request.match_info["channel"]
    bid = request.query.get("bulletin")
    if bid is not None and not HEX64.fullmatch(bid):
        raise InvalidInput(N_("bulletin must be a full bulletin id (64 hex digits)"))
    result = await request.app[SERVICE].taxii.export(session.user, channel, bid)
    name = f"{channel}-{bid[:12]}.stix.json" if bid else f"{channel}.stix.json"
    return web.Response(
        body=json.dumps(result, indent=2).encode(),
        content_type="application/stix+json",
        headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{urllib.parse.quote(name, safe='')}",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def bulletin_page(request: web.Request) -> web.StreamResponse:
    """One bulletin in full; opening it is audited, signed as a receipt and sent to its author."""
    session = await signed_in(request)
    user, service = session.user, request.app[SERVICE]
    bid = request.match_info["id"]
    shown = await service.read(user, bid)  # also marks it read for this user
    bulletin = shown.bulletin
    return render(
        request,
        "bulletin.html",
        session=session,
        b=shown,
        bulletin=bulletin,
        tlp=bulletin["handling"]["tlp"],
        # None for an author no longer in the roster (suspended, revoked): the page names it as gone
        author=service.fed.node(shown.author) if service.fed.listed(shown.author) else None,
        receipts=await service.inbox.recipient_statuses(shown),
        references=await service.inbox.references(user, bulletin["references"]),
        referrers=await service.inbox.referrers(user, bid),
    )


# -- compose ------------------------------------------------------------------------------------

# Console messages (translated where shown; %(files)d and %(mib)d are filled in with the limits).
FIELD_HELP = {
    "attachments": N_("At most %(files)d files, %(mib)d MiB together."),
    "title": N_("Give the bulletin a title of at most 200 characters."),
    "body": N_("The text may hold at most 200,000 characters."),
    "kind": N_("Choose one of the kinds offered."),
    "tlp": N_("Choose one of the TLP labels offered."),
    "air_waybills": N_("Air waybill numbers look like 176-12345675: the airline prefix, a dash, eight digits."),
    "hs_codes": N_("HS codes have 4 to 10 digits, for example 8443.99 or 844399."),
    "airports": N_("Airports are IATA codes of three letters, for example NBO."),
    "flights": N_("Flight numbers look like KQ100 or BA2517."),
    "companies": N_("One company or consignee per line, at most 200 characters each."),
    "risk_indicators": N_("One risk indicator per line, at most 200 characters each."),
    "references": N_("A reference is the id of an earlier bulletin: 64 hexadecimal characters."),
    "language": N_("A language tag such as en, fr or pt-BR."),
    "expires": N_("A date, written YYYY-MM-DD."),
}
CHOOSE_AGAIN = {  # the same, when the form comes back without them
    N_("At most %(files)d files."): N_("At most %(files)d files. Choose them again."),
    N_("The files are larger than %(mib)d MiB together."): N_(
        "The files are larger than %(mib)d MiB together. Choose them again."
    ),
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
    """Uploaded files as bulletin attachments, or why they cannot be sent (a console message)."""
    chosen = [f for f in files if f.filename]
    if len(chosen) > MAX_ATTACHMENTS:
        return [], N_("At most %(files)d files.")
    out, total = [], 0
    for f in chosen:
        data = f.file.read(MAX_ATTACHMENT_BYTES + 1)
        total += len(data)
        if total > MAX_ATTACHMENT_BYTES:
            return [], N_("The files are larger than %(mib)d MiB together.")
        # The base name, with control and direction characters replaced (pages.file_name).
        name = file_name(f.filename)[:200].strip() or "file"
        media = (
            f.content_type.lower()
            if re.fullmatch(r"[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*", f.content_type.lower())
            else "application/octet-stream"
        )
        out.append({"name": name, "media_type": media, "data": b64e(data)})
    return out, None


def bulletin_from_form(
    form: dict[str, str], attachments: list[dict[str, str]] | None = None
) -> tuple[Bulletin | None, dict[str, str | Text]]:
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
        errors: dict[str, str | Text] = {}
        for err in exc.errors():
            loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
            field = loc[1] if loc[:1] in (["indicators"], ["handling"]) and len(loc) > 1 else (loc[0] if loc else "")
            errors.setdefault(field, FIELD_HELP.get(field, str(err["msg"])))
        return None, errors


def _postable(service: NodeService, user: User) -> list[dict[str, str]]:
    """The channels to offer in the form: those `Access` lets the user post in now (the service
    decides again when the bulletin is posted)."""
    out = []
    for channel in service.access.postable_channels(user):
        state = service.channels.state(channel)
        out.append({"id": channel, "title": state.title, "tlp": state.default_handling.tlp})
    return out


def _compose(
    request: web.Request, session: Session, form: dict[str, str], errors: dict[str, str | Text], *, status: int = 200
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
    answered = await service.inbox.reply_to(user, reply) if HEX64.fullmatch(reply) else None
    if answered is not None:
        form.update(channel=answered.channel, kind="feedback", references=reply, title=f"Re: {answered.title}"[:200])
    chosen = next((c for c in channels if c["id"] == form["channel"]), channels[0] if channels else None)
    form["tlp"] = chosen["tlp"] if chosen else "AMBER"
    if answered is not None:
        # The answer carries the answered bulletin's title: it starts with that bulletin's handling
        # where it is stricter than the channel's default, else a TLP:RED or no-onward title went
        # out, as offered, under the channel's TLP:AMBER, to every feed (found by a read-only review).
        form["tlp"] = max(form["tlp"], answered.tlp, key=TLP_ORDER.index)
        if answered.no_onward_sharing:
            form["no_onward_sharing"] = "on"
    return _compose(request, session, form, {})


# What the indicators and their rules (exchange.protocol.indicators) are called, marked for the
# console's catalogue; tests/web/test_french.py holds these to the rules' own words.
INDICATOR_NOUNS = (N_("air waybill"), N_("HS code"), N_("airport"), N_("flight"), N_("country"))
INDICATOR_RULES = (
    N_("should be a 3-digit airline prefix, a dash and an 8-digit serial, e.g. 176-12345675"),
    N_("check digit should be %(check)s (serial mod 7)"),
    N_("should have 2, 4, 6, 8 or 10 digits, e.g. 8443 or 8443.99"),
    N_("chapter %(chapter)s is reserved for future use in the Harmonized System"),
    N_("chapter %(chapter)s does not exist in the Harmonized System (chapters 01 to 97)"),
    N_("heading 00 does not exist in chapter %(chapter)s (headings are numbered from 01)"),
    N_("should be an IATA airport code of three capital letters, e.g. NBO"),
    N_("is the IATA code of a city (%(city)s), not an airport: name one of %(airports)s"),
    N_("is not an IATA airport code"),
    N_("should be an airline designator, a 1 to 4 digit flight number and an optional letter, e.g. KQ100"),
    N_("airline designator %(airline)s should not be two digits (IATA: letters, or a letter and a digit)"),
    N_("airline designator %(airline)s of three characters should be an ICAO code of three letters"),
    N_("should be an ISO 3166-1 code of two capital letters, e.g. KE"),
    N_("is not an ISO 3166-1 country code"),
)


def indicator_error(problem: Problem) -> Text:
    """An indicator's problem as the compose form shows it by its field, in the reader's language."""
    why = Text(problem.why.text, dict(problem.why.values))
    return Text(
        N_("%(indicator)s %(value)s: %(why)s"),
        {"indicator": Text(problem.noun, {}), "value": problem.value, "why": why},
    )


async def compose_post(request: web.Request) -> web.StreamResponse:
    session, form = await posted_form(request)
    user, service = session.user, request.app[SERVICE]
    user.require("contact-point")
    files = [v for v in (await read_form(request)).getall("attachments", []) if isinstance(v, web.FileField)]
    attachments, too_big = attachments_from_form(files)
    bulletin, errors = bulletin_from_form(form, attachments)
    if too_big:
        errors["attachments"] = CHOOSE_AGAIN[too_big]
    for problem in indicator_problems(bulletin.indicators) if bulletin is not None else ():
        # The domain rules the service applies again when it posts: shown by the field, the draft kept
        errors.setdefault(problem.field, indicator_error(problem))
    channel = form.get("channel", "")
    if not channel:
        errors["channel"] = N_("Choose the channel to post to.")
    if bulletin is None or errors:
        fields = ", ".join(sorted(errors))
        await service.audit_rejection(
            method="POST",
            path=request.path,
            status=422,
            reason=f"invalid {fields}",
            peer=None,
            user=user.name,
            address=client_address(request),
        )
        return _compose(request, session, form, errors, status=422)
    # One's own bulletin is not news to oneself: marked seen in the post's own transaction.
    posted = await service.post(user, channel, bulletin, seen=True)
    return redirect(f"/console/channels/{channel}?posted={posted.id}")


# -- search -------------------------------------------------------------------------------------


async def search_page(request: web.Request) -> web.StreamResponse:
    """Free text and indicators over the bulletins of the channels the user may read."""
    session = await signed_in(request)
    q = request.query.get("q", "").strip()[:200]
    channel = request.query.get("channel", "")
    kind = request.query.get("kind", "")
    found = await request.app[SERVICE].inbox.search(session.user, q, channel=channel, kind=kind)
    return render(
        request,
        "search.html",
        session=session,
        q=q,
        channel=channel,
        kind=kind,
        channels=found.channels,
        kinds=BULLETIN_KINDS,
        results=found.results,
        searched=found.searched,
        stopped=found.stopped,
        looked_at=found.looked_at,
    )


def routes(prefix: str) -> list[web.RouteDef]:
    return [
        web.get(prefix + "/channels", channels_page),
        web.get(prefix + "/channels/{channel}", inbox_page),
        web.get(prefix + "/channels/{channel}/stix", stix_export),
        web.get(prefix + "/channels/{channel}/rfis", rfis_page),
        web.get(prefix + "/bulletins/{id}", bulletin_page),
        web.get(prefix + "/bulletins/{id}/attachments/{index:\\d{1,2}}", attachment_download),
        web.get(prefix + "/compose", compose_page),
        web.post(prefix + "/compose", compose_post),
        web.get(prefix + "/search", search_page),
    ]
