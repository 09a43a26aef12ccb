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

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from exchange.errors import Conflict, InvalidInput, NotFound, ProofError, SplitView
from exchange.http import params
from exchange.http.appkeys import SERVICE
from exchange.node.bodies import AUDIT_PAGE_LIMIT
from exchange.node.client_api import current_user
from exchange.node.federation_api import authenticate_peer
from exchange.service.audit.service import AuditService
from exchange.service.audit.views import EntryFilter

log = logging.getLogger("exchange.audit")


def _audit(request: web.Request) -> AuditService:
    """The node's audit side, unless the node is stopping (a late request must not write)."""
    audit = request.app[SERVICE].audit
    audit.ensure_running()
    return audit


@contextlib.contextmanager
def _beyond_the_log() -> Iterator[None]:
    """A well-formed index or size past the signed log names no proof: 404, like an unsigned size."""
    try:
        yield
    except ProofError:
        raise
    except InvalidInput as exc:
        raise NotFound(f"no such proof: {exc.detail}") from exc


# -- client routes (auditors) -----------------------------------------------------------------


def _entry_filter(request: web.Request) -> EntryFilter:
    q = request.query
    return EntryFilter(
        event=params.optional_text(q, "event", params.audit_name),
        channel=params.optional_text(q, "channel", params.audit_name),
        peer=params.optional_text(q, "peer", params.audit_name),
        bulletin=params.optional_text(q, "bulletin", params.bulletin_id),
        since=params.optional_text(q, "since", params.time_or_date),
        until=params.optional_text(q, "until", params.time_or_date),
    )


async def get_log(request: web.Request) -> web.Response:
    """Audit entries, oldest first; `next` is the cursor for `after`, null at the end."""
    user = await current_user(request)
    user.require("auditor")
    where = _entry_filter(request)
    audit = _audit(request)
    after = params.integer(request.query, "after", -1, minimum=-1)
    limit = params.integer(request.query, "limit", 100, minimum=1, maximum=AUDIT_PAGE_LIMIT)
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
    signed = await audit.sign_checkpoint(witness=params.boolean(request.query, "witness", True))
    return web.json_response(signed.to_json())


async def get_inclusion(request: web.Request) -> web.Response:
    """An entry with its inclusion proof in a signed checkpoint."""
    audit = _audit(request)
    user = await current_user(request)
    user.require("auditor")
    size = params.optional_integer(request.query, "size", minimum=1)  # default: the latest checkpoint's
    index = params.integer(request.query, "index")
    with _beyond_the_log():
        proof = await audit.inclusion(index, size)
    return web.json_response(proof.to_json())


async def get_consistency(request: web.Request) -> web.Response:
    """A consistency proof between a size and a signed checkpoint."""
    audit = _audit(request)
    user = await current_user(request)
    user.require("auditor")
    new = params.optional_integer(request.query, "to", minimum=1)  # default: the latest checkpoint's size
    old = params.integer(request.query, "from", minimum=1)
    with _beyond_the_log():
        proof = await audit.consistency(old, new)
    return web.json_response(proof.to_json())


async def get_export(request: web.Request) -> web.StreamResponse:
    """The self-contained bundle as JSON Lines, streamed page by page."""
    user = await current_user(request)
    user.require("auditor")
    bulletin = params.optional_text(request.query, "bulletin", params.bulletin_id)
    audit = _audit(request)
    chunks = audit.export_lines(bulletin)
    first = await anext(chunks)  # errors before the first byte still become problem+json
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/x-ndjson",
            "Content-Disposition": f'attachment; filename="audit-{audit.me}.jsonl"',
        }
    )
    await response.prepare(request)
    try:
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
    except Exception:  # whatever it was, too late for a problem+json
        # The bundle stops without its end record, which any verifier reports as truncated.
        log.exception("audit export failed mid-stream")
    return response


async def get_trace(request: web.Request) -> web.Response:
    """The trace of one bulletin across nodes (the client verifies the evidence)."""
    user = await current_user(request)
    user.require("auditor")
    bid = params.bulletin_id(request.match_info["bulletin"])
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
    return web.json_response((await audit.latest_for_witness(params.integer(request.query, "from", 0))).to_json())


async def fed_cosign(request: web.Request) -> web.Response:
    """A partner asks this node to co-sign its checkpoint (push)."""
    peer = authenticate_peer(request)
    body: Any = await params.json_body(request)
    try:
        return web.json_response(await _audit(request).witness.cosign(peer, body))
    except SplitView as exc:
        raise Conflict(exc.detail) from exc


async def fed_cosignatures(request: web.Request) -> web.Response:
    """A partner returns its cosignature of our checkpoint (pull)."""
    peer = authenticate_peer(request)
    body: Any = await params.json_body(request)
    await _audit(request).witness.store_cosignature(peer, body)
    return web.json_response({"stored": True})


async def fed_bulletin_evidence(request: web.Request) -> web.Response:
    """Our entries about a bulletin, for the nodes its envelope names as author or recipient."""
    peer = authenticate_peer(request)
    bid = params.bulletin_id(request.match_info["bulletin"])
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
