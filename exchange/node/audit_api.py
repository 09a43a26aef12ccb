"""Audit routes: the auditor's client API, the federation routes of witnessing and tracing, and
the periodic checkpoint-and-witness task (an aiohttp cleanup context).

Client (bearer token, auditor role; admins may also sign a checkpoint on demand):
    GET  /api/v1/audit/log                  entries, filtered by event, channel, peer, bulletin,
                                            since/until (RFC 3339 or date), paged by `after`
    GET  /api/v1/audit/checkpoint           the latest checkpoint with its cosignatures
    POST /api/v1/audit/checkpoint           sign one now (?witness=false: do not ask partners)
    GET  /api/v1/audit/proof/inclusion      ?index=i[&size=n]
    GET  /api/v1/audit/proof/consistency    ?from=m[&to=n]
    GET  /api/v1/audit/export               JSON Lines bundle (?bulletin=<id>: its entries with proofs)
    GET  /api/v1/audit/trace/{bulletin}     every named node's evidence about one bulletin
    GET  /api/v1/audit/witnessed            partners' logs this node witnesses, and split views
Federation (mutual TLS, roster nodes):
    GET  /fed/v1/audit/checkpoint?from=m    our latest checkpoint and a consistency proof from m
    POST /fed/v1/audit/cosign               a partner asks us to co-sign its checkpoint
    POST /fed/v1/audit/cosignatures         a partner returns its cosignature of ours
    GET  /fed/v1/audit/bulletins/{bulletin} our entries about a bulletin, with inclusion proofs,
                                            for its author and recipients only
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from aiohttp import web

from exchange.crypto import strict_loads
from exchange.errors import Conflict, InvalidInput, SplitView
from exchange.http.appkeys import SERVICE
from exchange.node.client_api import current_user
from exchange.node.federation_api import authenticate_peer
from exchange.service.audit.service import AuditService
from exchange.service.audit.views import EntryFilter

log = logging.getLogger("exchange.audit")

_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?Z?)?$")
_BULLETIN = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._*-]{0,63}$")
EXPORT_CHUNK = 500  # records per write of a streamed export


def _audit(request: web.Request) -> AuditService:
    """The node's audit side, unless the node is stopping (a late request must not write)."""
    audit = request.app[SERVICE].audit
    audit.ensure_running()
    return audit


def _int(request: web.Request, name: str, default: int | None = None, minimum: int = 0) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise InvalidInput(f"query parameter {name} is required")
        return default
    if not re.fullmatch(r"-?\d{1,15}", raw) or int(raw) < minimum:
        raise InvalidInput(f"query parameter {name} must be an integer >= {minimum}")
    return int(raw)


def _optional_int(request: web.Request, name: str, minimum: int) -> int | None:
    return None if request.query.get(name) is None else _int(request, name, minimum=minimum)


def _bulletin_id(raw: str) -> str:
    if not _BULLETIN.match(raw):
        raise InvalidInput("a bulletin id is 64 lowercase hex characters")
    return raw


# -- client routes (auditors) -----------------------------------------------------------------


def _entry_filter(request: web.Request) -> EntryFilter:
    q = request.query
    event, channel, peer, bulletin = q.get("event"), q.get("channel"), q.get("peer"), q.get("bulletin")
    since, until = q.get("since"), q.get("until")
    for name, value in (("event", event), ("channel", channel), ("peer", peer)):
        if value is not None and not _NAME.match(value):
            raise InvalidInput(f"{name} has an invalid form")
    if bulletin is not None:
        _bulletin_id(bulletin)
    for name, value in (("since", since), ("until", until)):
        if value is not None and not _TIME.match(value):
            raise InvalidInput(f"{name} must be an RFC 3339 UTC time or a date")
    return EntryFilter(event=event, channel=channel, peer=peer, bulletin=bulletin, since=since, until=until)


async def get_log(request: web.Request) -> web.Response:
    """Audit entries, oldest first; `next` is the cursor for `after`, null at the end."""
    user = await current_user(request)
    user.require("auditor")
    where = _entry_filter(request)
    audit = _audit(request)
    after, limit = _int(request, "after", -1, minimum=-1), min(_int(request, "limit", 100, 1), 1000)
    page = await audit.log_page(where, after=after, limit=limit)
    return web.json_response(page.to_json())


async def get_checkpoint(request: web.Request) -> web.Response:
    """The latest checkpoint with its cosignatures (signing a first one if there is none yet)."""
    user = await current_user(request)
    user.require("auditor", "admin")
    return web.json_response((await _audit(request).latest_checkpoint()).view())


async def post_checkpoint(request: web.Request) -> web.Response:
    """Sign a checkpoint now; unless ?witness=false, ask the partners to co-sign it and wait."""
    user = await current_user(request)
    user.require("auditor", "admin")
    audit = _audit(request)
    signed = await audit.sign_checkpoint(witness=request.query.get("witness", "true") != "false")
    return web.json_response(signed.to_json())


async def get_inclusion(request: web.Request) -> web.Response:
    """An entry with its inclusion proof in a signed checkpoint."""
    audit = _audit(request)
    user = await current_user(request)
    user.require("auditor")
    size = _optional_int(request, "size", minimum=1)  # default: the latest checkpoint's
    index = _int(request, "index")
    return web.json_response((await audit.inclusion(index, size)).to_json())


async def get_consistency(request: web.Request) -> web.Response:
    """A consistency proof between a size and a signed checkpoint."""
    audit = _audit(request)
    user = await current_user(request)
    user.require("auditor")
    new = _optional_int(request, "to", minimum=1)  # default: the latest checkpoint's size
    old = _int(request, "from", minimum=1)
    return web.json_response((await audit.consistency(old, new)).to_json())


async def get_export(request: web.Request) -> web.StreamResponse:
    """The self-contained bundle as JSON Lines, streamed page by page."""
    user = await current_user(request)
    user.require("auditor")
    bulletin = request.query.get("bulletin")
    records = _audit(request).export(_bulletin_id(bulletin) if bulletin else None)
    first = await anext(records)  # errors before the first byte still become problem+json
    node = first["node"] if first["type"] == "header" else ""
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/x-ndjson",
            "Content-Disposition": f'attachment; filename="audit-{node}.jsonl"',
        }
    )
    await response.prepare(request)
    lines = [json.dumps(first, separators=(",", ":"))]
    try:
        async for record in records:
            lines.append(json.dumps(record, separators=(",", ":"), ensure_ascii=False))
            if len(lines) >= EXPORT_CHUNK:
                await response.write(("\n".join(lines) + "\n").encode())
                lines.clear()
        await response.write(("\n".join(lines) + "\n").encode() if lines else b"")
    except Exception:  # whatever it was, too late for a problem+json
        # The bundle stops without its end record, which any verifier reports as truncated.
        log.exception("audit export failed mid-stream")
    return response


async def get_trace(request: web.Request) -> web.Response:
    """The trace of one bulletin across nodes (the client verifies the evidence)."""
    user = await current_user(request)
    user.require("auditor")
    bid = _bulletin_id(request.match_info["bulletin"])
    trace = await _audit(request).trace(bid, user.name)
    return web.json_response(trace.to_json())


async def get_witnessed(request: web.Request) -> web.Response:
    """Partners' logs this node witnesses, and the split views it caught."""
    user = await current_user(request)
    user.require("auditor", "admin")
    return web.json_response((await _audit(request).witnessed()).to_json())


# -- federation routes --------------------------------------------------------------------------


async def fed_checkpoint(request: web.Request) -> web.Response:
    """Our latest checkpoint, with a consistency proof from the size the witness last saw."""
    authenticate_peer(request)
    audit = _audit(request)
    return web.json_response((await audit.latest_for_witness(_int(request, "from", 0))).to_json())


async def fed_cosign(request: web.Request) -> web.Response:
    """A partner asks this node to co-sign its checkpoint (push)."""
    peer = authenticate_peer(request)
    body: Any = strict_loads(await request.read())
    try:
        return web.json_response(await _audit(request).witness.cosign(peer, body))
    except SplitView as exc:
        raise Conflict(exc.detail) from exc


async def fed_cosignatures(request: web.Request) -> web.Response:
    """A partner returns its cosignature of our checkpoint (pull)."""
    peer = authenticate_peer(request)
    body: Any = strict_loads(await request.read())
    await _audit(request).witness.store_cosignature(peer, body)
    return web.json_response({"stored": True})


async def fed_bulletin_evidence(request: web.Request) -> web.Response:
    """Our entries about a bulletin, for the nodes its envelope names as author or recipient."""
    peer = authenticate_peer(request)
    bid = _bulletin_id(request.match_info["bulletin"])
    return web.json_response(await _audit(request).serve_evidence(peer, bid))


def routes() -> list[web.RouteDef]:
    """The audit routes, client and federation."""
    return [
        web.get("/api/v1/audit/log", get_log),
        web.get("/api/v1/audit/checkpoint", get_checkpoint),
        web.post("/api/v1/audit/checkpoint", post_checkpoint),
        web.get("/api/v1/audit/proof/inclusion", get_inclusion),
        web.get("/api/v1/audit/proof/consistency", get_consistency),
        web.get("/api/v1/audit/export", get_export),
        web.get("/api/v1/audit/trace/{bulletin}", get_trace),
        web.get("/api/v1/audit/witnessed", get_witnessed),
        web.get("/fed/v1/audit/checkpoint", fed_checkpoint),
        web.post("/fed/v1/audit/cosign", fed_cosign),
        web.post("/fed/v1/audit/cosignatures", fed_cosignatures),
        web.get("/fed/v1/audit/bulletins/{bulletin}", fed_bulletin_evidence),
    ]


# -- the periodic task ----------------------------------------------------------------------------
