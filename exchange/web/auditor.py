"""Pages for auditors: the audit log with filters, an entry with its inclusion proof, checkpoints and
witnesses, and the trace of one bulletin across nodes.

Auditors see metadata only: audit entries carry no bulletin content, and the trace is built from
the envelope's cleartext header and the nodes' audit entries. The work is done by `exchange.audit`
(the keeper, the witness, and the trace verifier) through the same objects the audit API uses.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from exchange.audit.keeper import LogKeeper
from exchange.audit.log import KeyRing, LogVerifier
from exchange.audit.trace import GAP, NONE, OK, REFUSED, Trace, assemble
from exchange.clock import timestamp
from exchange.errors import AuditTampered, InvalidInput, NotFound
from exchange.node.appkeys import SERVICE
from exchange.node.audit_api import AUDIT, collect_trace, entry_matcher
from exchange.node.service import NodeService
from exchange.store import audit_checkpoints, receipts
from exchange.web.pages import redirect, render, when
from exchange.web.session import posted_form, signed_in

PAGE = 50
CHUNK = 2000  # entries read per step when looking back through the log
BUDGET = 50_000  # entries one page may look through before it offers to go on
HEX64 = re.compile(r"^[0-9a-f]{64}$")
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
EVENTS = [
    ("bulletin.*", "Any bulletin event"),
    ("bulletin.posted", "Bulletin posted here"),
    ("bulletin.received", "Bulletin received from a partner"),
    ("bulletin.delivered", "Receipt: a partner received ours"),
    ("bulletin.opened", "Bulletin opened here"),
    ("bulletin.opened_by", "Receipt: a partner opened ours"),
    ("send.refused", "A partner refused what we sent"),
    ("channel.changed", "Channel membership changed"),
    ("request.rejected", "Request refused"),
    ("console.*", "Console sign-in and sign-out"),
    ("user.*", "Users and their rights"),
    ("audit.*", "Audit traces"),
]


# -- the log browser ------------------------------------------------------------------------------


def entry_filter(query: dict[str, str]) -> tuple[Callable[[dict[str, Any]], bool], bytes | None]:
    """A matcher for audit entries from the form: event kind, channel, peer, bulletin, UTC dates."""
    event, channel, peer, bulletin = (query.get(k) or None for k in ("event", "channel", "peer", "bulletin"))
    since, until = query.get("since") or None, query.get("until") or None
    for name, value in (("channel", channel), ("peer", peer)):
        if value is not None and not NAME.match(value):
            raise InvalidInput(f"{name} has an invalid form")
    if event is not None and not re.fullmatch(r"[a-z_.]{1,40}\*?", event):
        raise InvalidInput("event has an invalid form")
    if bulletin is not None and not HEX64.match(bulletin):
        raise InvalidInput("a bulletin id is 64 lowercase hexadecimal characters")
    for name, value in (("since", since), ("until", until)):
        if value is not None and not DATE.match(value):
            raise InvalidInput(f"{name} must be a date, YYYY-MM-DD")
    until_end = (dt.date.fromisoformat(until) + dt.timedelta(days=1)).isoformat() if until else None

    return entry_matcher(event=event, channel=channel, peer=peer, bulletin=bulletin, since=since, until=until_end)


async def newest(
    keeper: LogKeeper, match: Callable[[dict[str, Any]], bool], needle: bytes | None, before: int
) -> tuple[list[dict[str, Any]], int | None]:
    """Up to PAGE matching entries below index `before`, newest first, and where to go on from."""
    found: list[dict[str, Any]] = []
    hi, scanned = before, 0
    while hi > 0 and len(found) < PAGE and scanned < BUDGET:
        lo = max(0, hi - CHUNK)
        page, _ = await keeper.scan(match, needle, after=lo - 1, limit=hi - lo, scan=hi - lo)
        found += [body for _, _, body in reversed(page)]
        scanned += hi - lo
        hi = lo
    if len(found) > PAGE:
        found = found[:PAGE]
        return found, int(found[-1]["idx"])
    return found, (hi if hi > 0 else None)


def _keeper(request: web.Request) -> LogKeeper:
    return request.app[AUDIT].keeper


def describe(body: dict[str, Any]) -> str:
    """One line saying what an audit entry records, in words."""
    kind = body.get("event")
    g = body.get
    if kind == "bulletin.posted":
        return f"posted by {g('user')} (seq {g('seq')}) for {', '.join(g('recipients') or [])}"
    if kind == "bulletin.sent":
        return f"sent to {g('to')}"
    if kind == "bulletin.received":
        return f"received from {g('from')}" + (" (relayed)" if g("relayed") else "")
    if kind == "bulletin.delivered":
        return f"signed receipt from {g('to')}: received {when(g('receipt_at'))}"
    if kind == "bulletin.opened":
        return f"opened by {g('user')}"
    if kind == "bulletin.opened_by":
        return f"signed receipt from {g('to')}: opened {when(g('receipt_at'))}"
    if kind == "send.refused":
        return f"{g('to')} refused {g('kind')} {str(g('ref'))[:12]}: {g('reason')}"
    if kind == "channel.changed":
        change = g("change") or {}
        return f"log position {g('pos')}: {change.get('type')} {change.get('node') or ''}".rstrip()
    if kind == "request.rejected":
        who = g("user") or g("peer") or "anonymous"
        return f"{g('method')} {g('path')} refused ({g('status')}) for {who}: {g('reason')}"
    if kind == "audit.trace":
        return f"trace requested by {g('user')}"
    if kind == "audit.trace_served":
        return f"trace evidence served to {g('peer')}"
    who = g("user") or ("an unknown user name" if g("unknown_user") else "someone")
    by = f" by {g('actor')}" if g("actor") else ""
    texts = {
        "user.created": f"{who} created as {g('role')}{by}",
        "user.assigned": f"{who} assigned to {g('channel')}{by}",
        "user.unassigned": f"{who} taken off {g('channel')}{by}",
        "user.token_rotated": f"API token of {who} replaced{by}",
        "user.password_set": f"console password of {who} set{by}",
        "console.signed_in": f"{who} signed in from {g('address')}",
        "console.signed_out": f"{who} signed out",
        "console.signin_failed": f"failed sign-in as {who} from {g('address')}",
        "console.signin_throttled": f"sign-in as {who} from {g('address')} refused: too many failures by {g('limit')}",
    }
    return texts.get(str(kind), "")


async def log_page(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    session.user.require("auditor")
    service, keeper = request.app[SERVICE], _keeper(request)
    query = {k: v.strip() for k, v in request.query.items()}
    match, needle = entry_filter(query)
    size = service.store.audit_size
    before_raw = query.get("before", "")
    before = min(int(before_raw), size) if before_raw.isdigit() and len(before_raw) < 16 else size
    entries, go_on = await newest(keeper, match, needle, before)
    return render(
        request,
        "audit_log.html",
        session=session,
        entries=[{**e, "summary": describe(e)} for e in entries],
        go_on=go_on,
        searched_from=before,
        size=size,
        query=query,
        more_query={k: v for k, v in query.items() if k != "before" and v},
        events=EVENTS,
        channels=[s.channel for s in service.channels.all()],
        nodes=[n.id for n in service.fed.roster.nodes],
    )


# -- one entry and its inclusion proof ------------------------------------------------------------


async def proof_status(service: NodeService, keeper: LogKeeper, idx: int, raw: bytes) -> dict[str, Any]:
    """Is entry `idx` proven to be in a checkpoint this node signed? Checked as an offline verifier would."""
    latest = await keeper.latest()
    if latest is None:
        return {"state": "pending", "text": "No checkpoint has been signed yet, so no proof can be given."}
    if idx >= latest.size:
        return {
            "state": "pending",
            "text": f"Not covered yet: the latest checkpoint covers entries 0 to {latest.size - 1}.",
            "checkpoint": latest,
        }
    try:
        proof = await keeper.inclusion(idx, latest.size)
        verifier = LogVerifier(service.me, KeyRing.from_federation(service.fed))
        info = verifier.checkpoint(latest.full_note())
        verifier.proven_entry(idx, raw, info.size, proof)
    except (AuditTampered, InvalidInput) as exc:
        return {"state": "failed", "text": f"The proof does not verify: {exc.detail}", "checkpoint": latest}
    return {
        "state": "proven",
        "text": f"Included in the checkpoint of size {info.size}: the inclusion proof ({len(proof)} hashes) "
        "and the checkpoint's signature verify.",
        "checkpoint": latest,
        "witnesses": info.witnesses,
        "proof": [p.hex() for p in proof],
    }


async def entry_page(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    session.user.require("auditor")
    service, keeper = request.app[SERVICE], _keeper(request)
    raw_idx = request.match_info["idx"]
    if not raw_idx.isdigit() or len(raw_idx) > 15:
        raise NotFound(f"no audit entry {raw_idx}")
    idx = int(raw_idx)
    raw = await keeper.entry(idx)
    body = json.loads(raw)
    status = await proof_status(service, keeper, idx, raw)
    return render(
        request,
        "audit_entry.html",
        session=session,
        idx=idx,
        body=body,
        fields=sorted((k, v if isinstance(v, str | int) else json.dumps(v)) for k, v in body.items()),
        summary=describe(body),
        proof=status,
        canonical=raw.decode("utf-8", "replace"),
    )


# -- checkpoints and witnesses --------------------------------------------------------------------


async def checkpoints_page(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    session.user.require("auditor", "admin")
    service, audit = request.app[SERVICE], request.app[AUDIT]
    keeper = audit.keeper
    async with service.store.read() as conn:
        sizes = list(
            await conn.scalars(sa.select(audit_checkpoints.c.size).order_by(audit_checkpoints.c.size.desc()).limit(20))
        )
    recent = [await keeper.checkpoint_at(int(s)) for s in sizes]
    latest = recent[0] if recent else None
    verified: dict[str, Any] = {}
    if latest is not None:
        try:
            info = LogVerifier(service.me, KeyRing.from_federation(service.fed)).checkpoint(latest.full_note())
            verified = {"ok": True, "witnesses": info.witnesses}
        except (AuditTampered, InvalidInput) as exc:
            verified = {"ok": False, "error": exc.detail}
    partners = sorted({n for s in service.channels.all() for n in s.members} - {service.me})
    witnessing = [{"node": p, "size": await keeper.cosigned_size(p)} for p in partners]
    return render(
        request,
        "audit_checkpoints.html",
        session=session,
        latest=latest,
        recent=recent,
        verified=verified,
        witnessing=witnessing,
        witnessed=await audit.witness.view(),
        size=service.store.audit_size,
        outcome={k[2:]: v for k, v in request.query.items() if k.startswith("w.")},
    )


async def sign_checkpoint(request: web.Request) -> web.StreamResponse:
    """Sign a checkpoint now and ask the partners to co-sign it (as the audit API does)."""
    session, form = await posted_form(request)
    session.user.require("auditor", "admin")
    audit = request.app[AUDIT]
    cp = await audit.keeper.checkpoint()
    if cp is None:
        raise NotFound("the audit log is empty")
    outcomes = await audit.witness.request_cosignatures(cp)
    back = form.get("back", "")
    if re.fullmatch(r"/console/audit/entries/\d{1,15}", back):
        return redirect(back)
    query = "&".join(f"w.{k}={'ok' if v == 'cosigned' else 'failed'}" for k, v in sorted(outcomes.items()))
    return redirect(f"/console/audit/checkpoints?{query}")


# -- the trace of one bulletin --------------------------------------------------------------------


async def traced(request: web.Request, user: str, bid: str) -> dict[str, Any]:
    """The audit API's trace of `bid` across nodes, audited as a trace by `user`."""
    service = request.app[SERVICE]
    trace = await collect_trace(service, request.app[AUDIT], bid)
    await service.store.audit({"event": "audit.trace", "at": timestamp(), "bulletin": bid, "user": user})
    return trace


def timeline(trace: Trace) -> tuple[list[str], list[dict[str, Any]]]:
    """The lanes (author first) and every verified entry of every node, in time order."""
    lanes = [trace.author, *sorted(r for r in trace.recipients if r != trace.author)]
    rows = []
    for ev in trace.evidence:
        for e in ev.entries:
            if e.get("event") in ("audit.trace", "audit.trace_served"):
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
    if not HEX64.match(bid):
        raise InvalidInput("a bulletin id is 64 lowercase hexadecimal characters")
    raw = await traced(request, session.user.name, bid)
    trace = assemble(raw, KeyRing.from_federation(service.fed))
    lanes, rows = timeline(trace)
    async with service.store.read() as conn:
        held = (
            await conn.execute(
                sa.select(receipts.c.node, receipts.c.status, receipts.c.at)
                .where(receipts.c.bulletin_id == bid)
                .order_by(receipts.c.at)
            )
        ).all()
    return render(
        request,
        "trace.html",
        session=session,
        bid=bid,
        trace=trace,
        header=raw["header"],
        lanes=lanes,
        rows=rows,
        held=held,
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
