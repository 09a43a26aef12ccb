"""Pages for auditors: the audit log with filters, an entry with its inclusion proof, checkpoints and
witnesses, and the trace of one bulletin across nodes.

Auditors see metadata only: audit entries carry no bulletin content, and the trace is built from
the envelope's cleartext header and the nodes' audit entries. The work is done by the application
layer's `AuditService` (`exchange.service.audit`), the one the audit API uses, and the trace
verifier of `exchange.audit.trace`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from typing import Any

from aiohttp import web

from exchange.audit import events as kinds
from exchange.audit.log import KeyRing
from exchange.audit.trace import GAP, NONE, OK, REFUSED, Trace, assemble
from exchange.errors import InvalidInput, NotFound
from exchange.http.appkeys import SERVICE
from exchange.service.audit.service import AuditService
from exchange.service.audit.views import EntryFilter
from exchange.web.pages import redirect, render, when
from exchange.web.session import posted_form, signed_in

# Used with fullmatch, in ASCII: "$" lets a trailing newline through, and \d takes any script's digits.
HEX64 = re.compile(r"[0-9a-f]{64}")
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
DIGITS = re.compile(r"[0-9]{1,15}")
EVENTS = [
    ("bulletin.*", "Any bulletin event"),
    (kinds.BULLETIN_POSTED, "Bulletin posted here"),
    (kinds.BULLETIN_RECEIVED, "Bulletin received from a partner"),
    (kinds.BULLETIN_DELIVERED, "Receipt: a partner received ours"),
    (kinds.BULLETIN_OPENED, "Bulletin opened here"),
    (kinds.BULLETIN_OPENED_BY, "Receipt: a partner opened ours"),
    (kinds.SEND_REFUSED, "A partner refused what we sent"),
    (kinds.CHANNEL_CHANGED, "Channel membership changed"),
    (kinds.REQUEST_REJECTED, "Request refused"),
    (kinds.REQUESTS_REFUSED, "Refused requests, counted per address"),
    (kinds.BULLETIN_UNVERIFIED, "Bulletin failed its check and was not shown"),
    ("node.*", "Node started or stopped"),
    ("console.*", "Console sign-in and sign-out"),
    ("user.*", "Users and their rights"),
    ("audit.*", "Audit traces"),
]


def _audit(request: web.Request) -> AuditService:
    return request.app[SERVICE].audit


# -- the log browser ------------------------------------------------------------------------------


def _date(name: str, value: str) -> dt.date:
    """A calendar date written YYYY-MM-DD (2025-02-30 is not one), or InvalidInput."""
    try:
        if DATE.fullmatch(value):
            return dt.date.fromisoformat(value)
    except ValueError:
        pass
    raise InvalidInput(f"{name} must be a date, YYYY-MM-DD")


def entry_filter(query: dict[str, str]) -> EntryFilter:
    """Which audit entries the form asks for: event kind, channel, peer, bulletin, UTC dates."""
    event, channel, peer, bulletin = (query.get(k) or None for k in ("event", "channel", "peer", "bulletin"))
    since, until = query.get("since") or None, query.get("until") or None
    for name, value in (("channel", channel), ("peer", peer)):
        if value is not None and not NAME.fullmatch(value):
            raise InvalidInput(f"{name} has an invalid form")
    if event is not None and not re.fullmatch(r"[a-z_.]{1,40}\*?", event):
        raise InvalidInput("event has an invalid form")
    if bulletin is not None and not HEX64.fullmatch(bulletin):
        raise InvalidInput("a bulletin id is 64 lowercase hexadecimal characters")
    if since is not None:
        _date("since", since)
    until_end = None  # "until" is a whole day: entries before the next one (none after 9999-12-31)
    if until is not None and (last := _date("until", until)) < dt.date.max:
        until_end = (last + dt.timedelta(days=1)).isoformat()
    return EntryFilter(event=event, channel=channel, peer=peer, bulletin=bulletin, since=since, until=until_end)


def describe(body: dict[str, Any]) -> str:
    """One line saying what an audit entry records, in words."""
    kind = body.get("event")
    g = body.get
    if kind == kinds.BULLETIN_POSTED:
        return f"posted by {g('user')} (seq {g('seq')}) for {', '.join(g('recipients') or [])}"
    if kind == kinds.BULLETIN_SENT:
        return f"sent to {g('to')}"
    if kind == kinds.BULLETIN_RECEIVED:
        return f"received from {g('from')}" + (" (relayed)" if g("relayed") else "")
    if kind == kinds.BULLETIN_DELIVERED:
        return f"signed receipt from {g('to')}: received {when(g('receipt_at'))}"
    if kind == kinds.BULLETIN_OPENED:
        return f"opened by {g('user')}"
    if kind == kinds.BULLETIN_OPENED_BY:
        return f"signed receipt from {g('to')}: opened {when(g('receipt_at'))}"
    if kind == kinds.SEND_REFUSED:
        return f"{g('to')} refused {g('kind')} {str(g('ref'))[:12]}: {g('reason')}"
    if kind == kinds.CHANNEL_CHANGED:
        change = g("change") or {}
        return f"log position {g('pos')}: {change.get('type')} {change.get('node') or ''}".rstrip()
    if kind == kinds.REQUEST_REJECTED:
        who = g("user") or g("peer") or "anonymous"
        return f"{g('method')} {g('path')} refused ({g('status')}) for {who}: {g('reason')}"
    if kind == kinds.REQUESTS_REFUSED:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted((g("reasons") or {}).items()))
        return f"{g('count')} requests from {g('address')} refused since {when(g('since'))}: {reasons}"
    if kind == kinds.BULLETIN_UNVERIFIED:
        return f"not shown to {g('user')}: {g('problem')}"
    if kind == kinds.NODE_STOPPED:
        return "stopped cleanly; checkpoint signed"
    if kind == kinds.AUDIT_TRACE:
        return f"trace requested by {g('user')}"
    if kind == kinds.AUDIT_TRACE_SERVED:
        return f"trace evidence served to {g('peer')}"
    who = g("user") or ("an unknown user name" if g("unknown_user") else "someone")
    by = f" by {g('actor')}" if g("actor") else ""
    texts = {
        kinds.USER_CREATED: f"{who} created as {g('role')}{by}",
        kinds.USER_ASSIGNED: f"{who} assigned to {g('channel')}{by}",
        kinds.USER_UNASSIGNED: f"{who} taken off {g('channel')}{by}",
        kinds.USER_TOKEN_ROTATED: f"API token of {who} replaced{by}",
        kinds.USER_PASSWORD_SET: f"console password of {who} set{by}",
        kinds.CONSOLE_SIGNED_IN: f"{who} signed in from {g('address')}",
        kinds.CONSOLE_SIGNED_OUT: f"{who} signed out",
        kinds.CONSOLE_SIGNIN_FAILED: f"failed sign-in as {who} from {g('address')}",
        kinds.CONSOLE_SIGNIN_THROTTLED: (
            f"sign-in as {who} from {g('address')} refused: too many failures by {g('limit')}"
        ),
    }
    return texts.get(str(kind), "")


async def log_page(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    session.user.require("auditor")
    service, audit = request.app[SERVICE], _audit(request)
    query = {k: v.strip() for k, v in request.query.items()}
    where = entry_filter(query)
    size = audit.size
    before_raw = query.get("before", "")
    if before_raw and not DIGITS.fullmatch(before_raw):
        raise InvalidInput("before must be an entry number")
    before = min(int(before_raw), size) if before_raw else size
    found = await audit.recent(where, before)
    return render(
        request,
        "audit_log.html",
        session=session,
        entries=[{**e, "summary": describe(e)} for e in found.entries],
        go_on=found.go_on,
        searched_from=before,
        size=size,
        query=query,
        more_query={k: v for k, v in query.items() if k != "before" and v},
        events=EVENTS,
        channels=[s.channel for s in service.channels.all()],
        nodes=[n.id for n in service.fed.roster.nodes],
    )


# -- one entry and its inclusion proof ------------------------------------------------------------


async def entry_page(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    session.user.require("auditor")
    audit = _audit(request)
    raw_idx = request.match_info["idx"]
    if not DIGITS.fullmatch(raw_idx) or int(raw_idx) >= audit.size:  # nor past the end: no query
        raise NotFound(f"no audit entry {raw_idx[:20]}")
    entry = await audit.entry_with_proof(int(raw_idx))
    body = entry.body
    return render(
        request,
        "audit_entry.html",
        session=session,
        idx=entry.idx,
        body=body,
        fields=sorted((k, v if isinstance(v, str | int) else json.dumps(v)) for k, v in body.items()),
        summary=describe(body),
        proof={f.name: getattr(entry.proof, f.name) for f in dataclasses.fields(entry.proof)},
        canonical=entry.raw.decode("utf-8", "replace"),
    )


# -- checkpoints and witnesses --------------------------------------------------------------------


async def checkpoints_page(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    session.user.require("auditor", "admin")
    service, audit = request.app[SERVICE], _audit(request)
    recent = await audit.recent_checkpoints(20)
    latest = recent[0] if recent else None
    partners = sorted({n for s in service.channels.all() for n in s.members} - {service.me})
    verified = audit.check_checkpoint(latest) if latest is not None else None
    # What sign_checkpoint's redirect says the witnesses answered is shown only where the latest
    # checkpoint's verified cosignatures agree: a link cannot make the page claim a cosignature.
    cosigned = set(verified.witnesses) if verified is not None and verified.ok else set()
    outcome = {
        node: said
        for node, said in ((k[2:], v) for k, v in request.query.items() if k.startswith("w."))
        if node in partners and said in ("ok", "failed") and (said == "ok") == (node in cosigned)
    }
    return render(
        request,
        "audit_checkpoints.html",
        session=session,
        latest=latest,
        recent=recent,
        verified=verified,
        witnessing=await audit.cosigned_by(partners),
        witnessed=await audit.witnessed(),
        size=audit.size,
        outcome=outcome,
    )


async def sign_checkpoint(request: web.Request) -> web.StreamResponse:
    """Sign a checkpoint now and ask the partners to co-sign it (as the audit API does)."""
    session, form = await posted_form(request)
    session.user.require("auditor", "admin")
    signed = await _audit(request).sign_checkpoint(witness=True)
    back = form.get("back", "")
    if re.fullmatch(r"/console/audit/entries/\d{1,15}", back):
        return redirect(back)
    outcomes = signed.witnessing or {}
    query = "&".join(f"w.{k}={'ok' if v == 'cosigned' else 'failed'}" for k, v in sorted(outcomes.items()))
    return redirect(f"/console/audit/checkpoints?{query}")


# -- the trace of one bulletin --------------------------------------------------------------------


def timeline(trace: Trace) -> tuple[list[str], list[dict[str, Any]]]:
    """The lanes (author first) and every verified entry of every node, in time order."""
    lanes = [trace.author, *sorted(r for r in trace.recipients if r != trace.author)]
    rows = []
    for ev in trace.evidence:
        for e in ev.entries:
            if e.get("event") in kinds.TRACE_KINDS:
                continue  # tracing itself is not part of the bulletin's journey
            rows.append(
                {
                    "node": ev.node,
                    "at": e.get("at", ""),
                    "idx": e.get("idx"),
                    "event": e.get("event"),
                    "text": describe(e),
                }
            )
    rows.sort(key=lambda r: (r["at"], lanes.index(r["node"]) if r["node"] in lanes else 99))
    return lanes, rows


async def trace_page(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    session.user.require("auditor")
    service = request.app[SERVICE]
    bid = request.query.get("bulletin", "").strip().lower()
    if not bid:
        return render(request, "trace.html", session=session, bid="", trace=None)
    if not HEX64.fullmatch(bid):
        raise InvalidInput("a bulletin id is 64 lowercase hexadecimal characters")
    audit = _audit(request)
    collected = await audit.trace(bid, session.user.name)
    trace = assemble(collected.to_json(), KeyRing.from_federation(service.fed))
    lanes, rows = timeline(trace)
    return render(
        request,
        "trace.html",
        session=session,
        bid=bid,
        trace=trace,
        header=collected.header,
        lanes=lanes,
        rows=rows,
        held=await audit.receipts_held(bid),
        marks={OK: "✓", GAP: "✗", NONE: "\u2013", REFUSED: "⊘"},
    )


def routes(prefix: str) -> list[web.RouteDef]:
    return [
        web.get(prefix + "/audit", log_page),
        web.get(prefix + "/audit/entries/{idx}", entry_page),
        web.get(prefix + "/audit/checkpoints", checkpoints_page),
        web.post(prefix + "/audit/checkpoints", sign_checkpoint),
        web.get(prefix + "/audit/trace", trace_page),
    ]
