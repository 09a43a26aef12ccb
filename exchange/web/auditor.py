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
from exchange.audit.trace import GAP, NONE, OK, REFUSED, Step, Trace, assemble
from exchange.errors import InvalidInput, NotFound
from exchange.http.appkeys import SERVICE
from exchange.service.audit.service import AuditService
from exchange.service.audit.views import EntryFilter, EntryWithProof
from exchange.web.i18n import DEFAULT, N_, language, number, say, when
from exchange.web.pages import redirect, render
from exchange.web.session import posted_form, signed_in

# Used with fullmatch, in ASCII: "$" lets a trailing newline through, and \d takes any script's digits.
HEX64 = re.compile(r"[0-9a-f]{64}")
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
DIGITS = re.compile(r"[0-9]{1,15}")
EVENTS = [
    ("bulletin.*", N_("Any bulletin event")),
    (kinds.BULLETIN_POSTED, N_("Bulletin posted here")),
    (kinds.BULLETIN_RECEIVED, N_("Bulletin received from a partner")),
    (kinds.BULLETIN_DELIVERED + "*", N_("Receipt: a partner received ours")),  # and bulletin.delivered_to
    (kinds.BULLETIN_OPENED, N_("Bulletin opened here")),
    (kinds.BULLETIN_OPENED_BY, N_("Receipt: a partner opened ours")),
    (kinds.SEND_REFUSED, N_("Sends stopped: refused by a partner, cancelled, or missing here")),
    (kinds.CHANNEL_CHANGED, N_("Channel membership changed")),
    (kinds.REQUEST_REJECTED, N_("Request refused")),
    (kinds.REQUESTS_REFUSED, N_("Refused requests, counted per address")),
    (kinds.BULLETIN_UNVERIFIED, N_("Bulletin failed its check and was not shown")),
    ("node.*", N_("Node started or stopped")),
    ("console.*", N_("Console sign-in and sign-out")),
    ("user.*", N_("Users and their rights")),
    ("audit.*", N_("Audit traces")),
    ("epoch.*", N_("Channel epochs: keys, history grants, an owner's equivocation")),
]


BAD_DATE = {"since": N_("since must be a date, YYYY-MM-DD"), "until": N_("until must be a date, YYYY-MM-DD")}
BAD_NAME = {"channel": N_("channel has an invalid form"), "peer": N_("peer has an invalid form")}


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
    raise InvalidInput(BAD_DATE[name])


def entry_filter(query: dict[str, str]) -> EntryFilter:
    """Which audit entries the form asks for: event kind, channel, peer, bulletin, UTC dates."""
    event, channel, peer, bulletin = (query.get(k) or None for k in ("event", "channel", "peer", "bulletin"))
    since, until = query.get("since") or None, query.get("until") or None
    for name, value in (("channel", channel), ("peer", peer)):
        if value is not None and not NAME.fullmatch(value):
            raise InvalidInput(BAD_NAME[name])
    if event is not None and not re.fullmatch(r"[a-z_.]{1,40}\*?", event):
        raise InvalidInput(N_("event has an invalid form"))
    if bulletin is not None and not HEX64.fullmatch(bulletin):
        raise InvalidInput(N_("a bulletin id is 64 lowercase hexadecimal characters"))
    if since is not None:
        _date("since", since)
    until_end = None  # "until" is a whole day: entries before the next one (none after 9999-12-31)
    if until is not None and (last := _date("until", until)) < dt.date.max:
        until_end = (last + dt.timedelta(days=1)).isoformat()
    return EntryFilter(event=event, channel=channel, peer=peer, bulletin=bulletin, since=since, until=until_end)


NODES_SHOWN = 8  # recipients named in a line; a global channel's entry may name 200


def _nodes(to: object, lang: str) -> str:
    """The recipients of a many-recipient entry, the first few by name and the rest counted."""
    names = sorted(to) if isinstance(to, dict) else []
    shown = ", ".join(names[:NODES_SHOWN])
    if len(names) > NODES_SHOWN:
        return say(lang, N_("%(nodes)s and %(count)s more"), nodes=shown, count=number(len(names) - NODES_SHOWN, lang))
    return shown


def describe(body: dict[str, Any], lang: str = DEFAULT) -> str:
    """One line saying what an audit entry records, in words of `lang` (the values as recorded)."""
    kind = body.get("event")
    g = body.get

    def t(message: str, **values: object) -> str:
        return say(lang, message, **values)

    if kind == kinds.BULLETIN_POSTED:
        recipients = ", ".join(g("recipients") or [])
        return t(
            N_("posted by %(user)s (seq %(seq)s) for %(recipients)s"),
            user=g("user"),
            seq=g("seq"),
            recipients=recipients,
        )
    if kind == kinds.BULLETIN_SENT:
        return t(N_("sent to %(node)s"), node=g("to"))
    if kind == kinds.BULLETIN_SENT_TO:
        if len(one := kinds.sent_to(body)) == 1:  # worded as the one-recipient kind
            return t(N_("sent to %(node)s"), node=next(iter(one)))
        return t(N_("sent to %(nodes)s"), nodes=_nodes(g("to"), lang))
    if kind == kinds.BULLETIN_RECEIVED:
        if g("relayed"):
            return t(N_("received from %(node)s (relayed)"), node=g("from"))
        return t(N_("received from %(node)s"), node=g("from"))
    if kind == kinds.BULLETIN_DELIVERED:
        return t(N_("signed receipt from %(node)s: received %(at)s"), node=g("to"), at=when(g("receipt_at"), lang))
    if kind == kinds.BULLETIN_DELIVERED_TO:
        if len(got := kinds.delivered_to(body)) == 1:
            ((node, at),) = got.items()
            return t(N_("signed receipt from %(node)s: received %(at)s"), node=node, at=when(at, lang))
        return t(N_("signed receipts from %(nodes)s"), nodes=_nodes(g("to"), lang))
    if kind == kinds.BULLETIN_OPENED:
        return t(N_("opened by %(user)s"), user=g("user"))
    if kind == kinds.BULLETIN_OPENED_BY:
        return t(N_("signed receipt from %(node)s: opened %(at)s"), node=g("to"), at=when(g("receipt_at"), lang))
    if kind == kinds.SEND_REFUSED:
        return t(
            N_("stopped sending %(kind)s %(ref)s to %(node)s: %(reason)s"),
            node=g("to"),
            kind=g("kind"),
            ref=str(g("ref"))[:12],
            reason=g("reason"),
        )
    if kind == kinds.CHANNEL_CHANGED:
        change = g("change") or {}
        what = f"{change.get('type')} {change.get('node') or ''}".rstrip()
        return t(N_("log position %(pos)s: %(change)s"), pos=g("pos"), change=what)
    if kind == kinds.REQUEST_REJECTED:
        who = g("user") or g("peer") or t(N_("anonymous"))
        return t(
            N_("%(method)s %(path)s refused (%(status)s) for %(who)s: %(reason)s"),
            method=g("method"),
            path=g("path"),
            status=g("status"),
            who=who,
            reason=g("reason"),
        )
    if kind == kinds.REQUESTS_REFUSED:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted((g("reasons") or {}).items()))
        return t(
            N_("%(count)s requests from %(address)s refused since %(since)s: %(reasons)s"),
            count=g("count"),
            address=g("address"),
            since=when(g("since"), lang),
            reasons=reasons,
        )
    if kind == kinds.BULLETIN_UNVERIFIED:
        return t(N_("not shown to %(user)s: %(problem)s"), user=g("user"), problem=g("problem"))
    if kind == kinds.NODE_STOPPED:
        return t(N_("stopped cleanly; checkpoint signed"))
    if kind == kinds.AUDIT_TRACE:
        return t(N_("trace requested by %(user)s"), user=g("user"))
    if kind == kinds.AUDIT_TRACE_SERVED:
        return t(N_("trace evidence served to %(node)s"), node=g("peer"))
    if kind == kinds.EPOCH_EQUIVOCATION:
        return t(
            N_("%(owner)s signed two epochs %(n)s of %(channel)s: %(held)s kept, %(other)s refused"),
            owner=g("owner"),
            n=g("n"),
            channel=g("channel"),
            held=str(g("held"))[:12],
            other=str(g("other"))[:12],
        )
    who = g("user") or (t(N_("an unknown user name")) if g("unknown_user") else t(N_("someone")))
    by = t(N_(" by %(actor)s"), actor=g("actor")) if g("actor") else ""
    texts = {
        kinds.USER_CREATED: (N_("%(who)s created as %(role)s%(by)s"), {"role": g("role")}),
        kinds.USER_ASSIGNED: (N_("%(who)s assigned to %(channel)s%(by)s"), {"channel": g("channel")}),
        kinds.USER_UNASSIGNED: (N_("%(who)s taken off %(channel)s%(by)s"), {"channel": g("channel")}),
        kinds.USER_TOKEN_ROTATED: (N_("API token of %(who)s replaced%(by)s"), {}),
        kinds.USER_PASSWORD_SET: (N_("console password of %(who)s set%(by)s"), {}),
        kinds.USER_DISABLED: (N_("%(who)s disabled%(by)s: token, password and sessions ended"), {}),
        kinds.USER_ENABLED: (N_("%(who)s enabled again%(by)s, with a new API token"), {}),
        kinds.CONSOLE_SIGNED_IN: (N_("%(who)s signed in from %(address)s"), {"address": g("address")}),
        kinds.CONSOLE_SIGNED_OUT: (N_("%(who)s signed out"), {}),
        kinds.CONSOLE_SIGNIN_FAILED: (N_("failed sign-in as %(who)s from %(address)s"), {"address": g("address")}),
        kinds.CONSOLE_SIGNIN_THROTTLED: (
            N_("sign-in as %(who)s from %(address)s refused: too many failures by %(limit)s"),
            {"address": g("address"), "limit": g("limit")},
        ),
    }
    if str(kind) not in texts:
        return ""
    message, values = texts[str(kind)]
    return t(message, who=who, by=by, **values)


def proof_text(entry: EntryWithProof, lang: str) -> str:
    """What the inclusion proof of an entry shows, in words of `lang` (from its state and numbers)."""
    proof, cp = entry.proof, entry.proof.checkpoint
    if proof.state == "proven" and cp is not None:
        return say(
            lang,
            N_(
                "Included in the checkpoint of size %(size)s: the inclusion proof (%(hashes)s hashes) "
                "and the checkpoint's signature verify."
            ),
            size=number(cp.size, lang),
            hashes=len(proof.proof or []),
        )
    if proof.state == "pending" and cp is None:
        return say(lang, N_("No checkpoint has been signed yet, so no proof can be given."))
    if proof.state == "pending" and cp is not None:
        return say(
            lang,
            N_("Not covered yet: the latest checkpoint covers entries 0 to %(last)s."),
            last=number(cp.size - 1, lang),
        )
    failed = "The proof does not verify: "
    if proof.text.startswith(failed):
        return say(lang, N_("The proof does not verify: %(problem)s"), problem=proof.text[len(failed) :])
    return str(proof.text)


async def log_page(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    session.user.require("auditor")
    service, audit = request.app[SERVICE], _audit(request)
    query = {k: v.strip() for k, v in request.query.items()}
    where = entry_filter(query)
    size = audit.size
    before_raw = query.get("before", "")
    if before_raw and not DIGITS.fullmatch(before_raw):
        raise InvalidInput(N_("before must be an entry number"))
    before = min(int(before_raw), size) if before_raw else size
    found = await audit.recent(where, before)
    return render(
        request,
        "audit_log.html",
        session=session,
        entries=[{**e, "summary": describe(e, language(request))} for e in found.entries],
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
        summary=describe(body, language(request)),
        proof={
            **{f.name: getattr(entry.proof, f.name) for f in dataclasses.fields(entry.proof)},
            "text": proof_text(entry, language(request)),
        },
        canonical=entry.raw.decode("utf-8", "replace"),
    )


# -- checkpoints and witnesses --------------------------------------------------------------------


async def checkpoints_page(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    session.user.require("auditor", "admin")
    service, audit = request.app[SERVICE], _audit(request)
    recent = await audit.recent_checkpoints(20)
    latest = recent[0] if recent else None
    partners = service.audit.witness.my_witnesses()  # our log's designated witnesses (docs/audit.md, 12)
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


def timeline(trace: Trace, lang: str = DEFAULT) -> tuple[list[str], list[dict[str, Any]]]:
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
                    "text": describe(e, lang),
                }
            )
    rows.sort(key=lambda r: (r["at"], lanes.index(r["node"]) if r["node"] in lanes else 99))
    return lanes, rows


Details = dict[tuple[str, int] | tuple[str, int, str], str]


def step_details(trace: Trace, lang: str) -> Details:
    """What each recorded step says in `lang`, keyed by (node, entry number), and for an entry
    that names several recipients by (node, entry number, recipient). The verifier words a step
    in English; in another language the console words it again from the entry it rests on.
    Steps without an entry (gaps, what did not happen) keep the verifier's words."""
    if lang == DEFAULT:
        return {}
    out: Details = {}
    for ev in trace.evidence:
        for e in ev.entries:
            if isinstance(e.get("idx"), int):
                out[(ev.node, e["idx"])] = describe(e, lang)
                # One recipient's step of a many-recipient entry: worded as its own entry would be.
                for r, txn in kinds.sent_to(e).items():
                    out[(ev.node, e["idx"], r)] = describe({"event": kinds.BULLETIN_SENT, "to": r, "txn": txn}, lang)
                for r, at in kinds.delivered_to(e).items():
                    single = {"event": kinds.BULLETIN_DELIVERED, "to": r, "receipt_at": at}
                    out[(ev.node, e["idx"], r)] = describe(single, lang)
        opened = [e for e in ev.entries if e.get("event") == kinds.BULLETIN_OPENED]
        if opened and isinstance(opened[0].get("idx"), int):  # the step names every opening there
            who = "; ".join(
                say(lang, N_("%(user)s at %(at)s"), user=e.get("user"), at=when(e.get("at"), lang)) for e in opened
            )
            out[(ev.node, opened[0]["idx"])] = say(lang, N_("opened by %(users)s"), users=who)
    return out


def step_detail(step: Step, details: Details, lang: str, recipient: str | None = None) -> str:
    """A step's words in `lang`: from its entry (for `recipient`'s leg, its part of an entry that
    names several), or for the common "not opened" as the console says it."""
    if step.idx is not None and recipient is not None and (step.node, step.idx, recipient) in details:
        return details[(step.node, step.idx, recipient)]
    if step.idx is not None and (step.node, step.idx) in details:
        return details[(step.node, step.idx)]
    if lang != DEFAULT and step.status == NONE and step.detail == f"not opened at {step.node}":
        return say(lang, N_("not opened at %(node)s"), node=step.node)
    return step.detail


async def trace_page(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    session.user.require("auditor")
    service = request.app[SERVICE]
    bid = request.query.get("bulletin", "").strip().lower()
    if not bid:
        return render(request, "trace.html", session=session, bid="", trace=None)
    if not HEX64.fullmatch(bid):
        raise InvalidInput(N_("a bulletin id is 64 lowercase hexadecimal characters"))
    audit = _audit(request)
    collected = await audit.trace(bid, session.user.name)
    trace = assemble(collected.to_json(), service.audit.keyring())  # C2SP witnesses' keys too
    lanes, rows = timeline(trace, language(request))
    details = step_details(trace, language(request))
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
        detail=lambda step, recipient=None: step_detail(step, details, language(request), recipient),
    )


def routes(prefix: str) -> list[web.RouteDef]:
    return [
        web.get(prefix + "/audit", log_page),
        web.get(prefix + "/audit/entries/{idx}", entry_page),
        web.get(prefix + "/audit/checkpoints", checkpoints_page),
        web.post(prefix + "/audit/checkpoints", sign_checkpoint),
        web.get(prefix + "/audit/trace", trace_page),
    ]
