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

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from exchange.audit.keeper import LogKeeper
from exchange.audit.witness import SplitView, Witness
from exchange.clock import timestamp
from exchange.crypto import b64e, canonical_json, sha256, strict_loads
from exchange.errors import Conflict, ExchangeError, Forbidden, InvalidInput, NotFound, StateUnavailable
from exchange.keystore import read_file
from exchange.merkle import leaf_hash
from exchange.model import EnvelopeHeader
from exchange.node.appkeys import SENDERS, SERVICE
from exchange.node.client_api import current_user
from exchange.node.federation_api import authenticate_peer
from exchange.node.service import NodeService
from exchange.protocol.envelope import parse_envelope
from exchange.store import bulletins

log = logging.getLogger("exchange.audit")

PEER_KEYS = ("peer", "from", "to", "author", "owner", "node")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?Z?)?$")
_BULLETIN = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._*-]{0,63}$")
EXPORT_CHUNK = 500  # records per write of a streamed export
WITNESS_WAIT = 5.0  # seconds a trace waits for witnesses to co-sign a checkpoint made for it


@dataclass(frozen=True)
class AuditNode:
    """The audit side of a running node."""

    keeper: LogKeeper
    witness: Witness
    fetch: Callable[[str, str], Awaitable[Any]]
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


AUDIT: web.AppKey[AuditNode] = web.AppKey("audit", AuditNode)


def _audit(request: web.Request) -> AuditNode:
    """The node's audit side, unless the node is stopping (a late request must not write)."""
    audit = request.app[AUDIT]
    if audit.stopped.is_set():
        raise StateUnavailable("the node is stopping")
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


def _bulletin_id(raw: str) -> str:
    if not _BULLETIN.match(raw):
        raise InvalidInput("a bulletin id is 64 lowercase hex characters")
    return raw


async def _header_of(service: NodeService, bid: str) -> EnvelopeHeader:
    """The signed header of a bulletin this node holds: author, channel, recipients (no content)."""
    async with service.store.read() as conn:
        raw = await conn.scalar(sa.select(bulletins.c.envelope).where(bulletins.c.id == bid))
    if raw is None:
        raise NotFound(f"this node holds no bulletin {bid}")
    return parse_envelope(bytes(raw)).header


# -- client routes (auditors) -----------------------------------------------------------------


def _entry_filter(request: web.Request) -> tuple[Callable[[dict[str, Any]], bool], bytes | None]:
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

    return entry_matcher(event=event, channel=channel, peer=peer, bulletin=bulletin, since=since, until=until)


def entry_matcher(
    *,
    event: str | None,
    channel: str | None,
    peer: str | None,
    bulletin: str | None,
    since: str | None,
    until: str | None,
) -> tuple[Callable[[dict[str, Any]], bool], bytes | None]:
    """A matcher for audit entries (the API and the console validate their own input first), and
    the most selective value as bytes, to test the stored canonical JSON before parsing it."""

    def match(body: dict[str, Any]) -> bool:
        kind = str(body.get("event", ""))
        if event is not None and not (kind == event or (event.endswith("*") and kind.startswith(event[:-1]))):
            return False
        if channel is not None and body.get("channel") != channel:
            return False
        if bulletin is not None and bulletin not in (body.get("bulletin"), body.get("ref")):
            return False
        if peer is not None:
            change = body.get("change")
            named = {body.get(k) for k in PEER_KEYS} | set(body.get("recipients") or [])
            if isinstance(change, dict):
                named.add(change.get("node"))
            if peer not in named:
                return False
        at = str(body.get("at", ""))
        return not ((since is not None and at < since) or (until is not None and at >= until))

    # A cheap byte test on the stored canonical JSON before parsing it: the most selective value.
    value = bulletin or peer or channel or (event if event and not event.endswith("*") else None)
    return match, (f'"{value}"'.encode() if value else None)


async def get_log(request: web.Request) -> web.Response:
    """Audit entries, oldest first; `next` is the cursor for `after`, null at the end."""
    user = await current_user(request)
    user.require("auditor")
    match, needle = _entry_filter(request)
    keeper = _audit(request).keeper
    found, cursor = await keeper.scan(
        match, needle, after=_int(request, "after", -1, minimum=-1), limit=min(_int(request, "limit", 100, 1), 1000)
    )
    return web.json_response({"entries": [body for _, _, body in found], "next": cursor, "size": keeper.size})


async def get_checkpoint(request: web.Request) -> web.Response:
    """The latest checkpoint with its cosignatures (signing a first one if there is none yet)."""
    user = await current_user(request)
    user.require("auditor", "admin")
    keeper = _audit(request).keeper
    cp = await keeper.latest() or await keeper.checkpoint()
    if cp is None:
        raise NotFound("this node has signed no checkpoint yet")
    return web.json_response(cp.view())


async def post_checkpoint(request: web.Request) -> web.Response:
    """Sign a checkpoint now; unless ?witness=false, ask the partners to co-sign it and wait."""
    user = await current_user(request)
    user.require("auditor", "admin")
    audit = _audit(request)
    cp = await audit.keeper.checkpoint()
    if cp is None:
        raise NotFound("the audit log is empty")
    body: dict[str, Any] = {}
    if request.query.get("witness", "true") != "false":
        body["witnessing"] = await audit.witness.request_cosignatures(cp)
        cp = await audit.keeper.checkpoint_at(cp.size)
    return web.json_response({**cp.view(), **body})


async def get_inclusion(request: web.Request) -> web.Response:
    """An entry with its inclusion proof in a signed checkpoint."""
    keeper = _audit(request).keeper
    user = await current_user(request)
    user.require("auditor")
    latest = await keeper.latest()
    size = _int(request, "size", latest.size if latest else 0, minimum=1)
    index = _int(request, "index")
    cp = await keeper.checkpoint_at(size)
    proof = await keeper.inclusion(index, size)
    entry = await keeper.entry(index)
    return web.json_response(
        {
            "index": index,
            "size": size,
            "entry": entry.decode("utf-8", "replace"),
            "leaf_hash": b64e(leaf_hash(entry)),
            "proof": [b64e(p) for p in proof],
            "checkpoint": cp.full_note(),
        }
    )


async def get_consistency(request: web.Request) -> web.Response:
    """A consistency proof between a size and a signed checkpoint."""
    keeper = _audit(request).keeper
    user = await current_user(request)
    user.require("auditor")
    latest = await keeper.latest()
    new = _int(request, "to", latest.size if latest else 0, minimum=1)
    old = _int(request, "from", minimum=1)
    cp = await keeper.checkpoint_at(new)
    proof = await keeper.consistency(old, new)
    return web.json_response({"from": old, "to": new, "proof": [b64e(p) for p in proof], "checkpoint": cp.full_note()})


async def get_export(request: web.Request) -> web.StreamResponse:
    """The self-contained bundle as JSON Lines, streamed page by page."""
    user = await current_user(request)
    user.require("auditor")
    bulletin = request.query.get("bulletin")
    records = _audit(request).keeper.export(_bulletin_id(bulletin) if bulletin else None)
    first = await anext(records)  # errors before the first byte still become problem+json
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/x-ndjson",
            "Content-Disposition": f'attachment; filename="audit-{first["node"]}.jsonl"',
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


async def _evidence(audit: AuditNode, bid: str) -> dict[str, Any]:
    """Our evidence about a bulletin; a checkpoint signed just for it is first put to the witnesses."""
    evidence = await audit.keeper.evidence(bid)
    if evidence.get("size"):
        cp = await audit.keeper.checkpoint_at(evidence["size"])
        if not cp.witnesses:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(audit.witness.request_cosignatures(cp), WITNESS_WAIT)
            evidence["checkpoint"] = (await audit.keeper.checkpoint_at(cp.size)).full_note()
    return evidence


async def collect_trace(service: NodeService, audit: AuditNode, bid: str) -> dict[str, Any]:
    """Ask every node the bulletin's envelope names for its evidence about it; callers verify it."""
    header = await _header_of(service, bid)
    nodes = sorted({header.author, *(r.node for r in header.recipients)})

    async def ask(node: str) -> Any:
        if node == service.me:
            return await _evidence(audit, bid)
        try:
            answer = await audit.fetch(node, f"/fed/v1/audit/bulletins/{bid}")
        except ExchangeError as exc:
            return {"node": node, "error": exc.detail}
        if not isinstance(answer, dict) or answer.get("node") != node:
            return {"node": node, "error": "it answered for another node"}
        return answer

    evidence = await asyncio.gather(*(ask(n) for n in nodes))
    return {
        "bulletin": bid,
        "header": {
            "channel": header.channel,
            "author": header.author,
            "seq": header.seq,
            "created": header.created,
            "tlp": header.handling.tlp,
            "recipients": [r.node for r in header.recipients],
        },
        "evidence": list(evidence),
    }


async def get_trace(request: web.Request) -> web.Response:
    """The trace of one bulletin across nodes (the client verifies the evidence)."""
    user = await current_user(request)
    user.require("auditor")
    bid = _bulletin_id(request.match_info["bulletin"])
    service = request.app[SERVICE]
    trace = await collect_trace(service, _audit(request), bid)
    # Audited after the evidence is taken, so a trace does not need a checkpoint of its own.
    await service.store.audit({"event": "audit.trace", "at": timestamp(), "bulletin": bid, "user": user.name})
    return web.json_response(trace)


async def get_witnessed(request: web.Request) -> web.Response:
    """Partners' logs this node witnesses, and the split views it caught."""
    user = await current_user(request)
    user.require("auditor", "admin")
    return web.json_response(await _audit(request).witness.view())


# -- federation routes --------------------------------------------------------------------------


async def fed_checkpoint(request: web.Request) -> web.Response:
    """Our latest checkpoint, with a consistency proof from the size the witness last saw."""
    authenticate_peer(request)
    keeper = _audit(request).keeper
    old = _int(request, "from", 0)
    cp = await keeper.latest()
    if cp is None:
        return web.json_response({"checkpoint": None, "proof": []})
    proof = await keeper.consistency(old, cp.size) if 0 < old < cp.size else []
    return web.json_response({"checkpoint": cp.full_note(), "proof": [b64e(p) for p in proof]})


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
    service = request.app[SERVICE]
    header = await _header_of(service, bid)
    if peer not in {header.author, *(r.node for r in header.recipients)}:
        raise Forbidden(f"{peer} is neither the author nor a recipient of bulletin {bid}")
    evidence = await _evidence(_audit(request), bid)
    await service.store.audit({"event": "audit.trace_served", "at": timestamp(), "bulletin": bid, "peer": peer})
    return web.json_response(evidence)


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


async def audit_context(app: web.Application) -> AsyncIterator[None]:
    """Start the keeper and the checkpoint-and-witness round; stop them before the store closes.

    Registered after the node's `resources` context, so the service and senders exist when it
    starts, and it stops before they close.
    """
    service, senders = app[SERVICE], app[SENDERS]
    signed_roster = strict_loads(read_file(service.config.roster_path))
    me = service.fed.node(service.me)
    # Keys and roster take effect at start, so each start records the ones it runs with: a key
    # or roster change shows as a difference between two node.started entries.
    await service.store.audit(
        {
            "event": "node.started",
            "at": timestamp(),
            "roster_version": service.fed.roster.version,
            "roster_sha256": sha256(canonical_json(signed_roster)).hex(),
            "authority_kid": service.fed.roster.authority_kid,
            "signing_kid": me.signing_kid,
            "encryption_kid": me.encryption_kid,
            "tls_pin": me.tls_pin,
        }
    )
    keeper = LogKeeper(service.me, service.store, service.keys.signing, signed_roster)
    await keeper.start()

    # The node's pinned mutual-TLS calls to its partners, as the channel book uses them.
    fetch, send = service.channels.fetch, service.channels.send

    def partners() -> list[str]:
        """The nodes this node shares a channel with: they witness our log, we witness theirs."""
        nodes = {n for state in service.channels.all() for n in state.members}
        return sorted(n for n in nodes if n != service.me and n in senders)

    witness = Witness(service.me, service.store, service.keys.signing, service.fed, keeper, fetch, send, partners)
    app[AUDIT] = AuditNode(keeper, witness, fetch)
    task = asyncio.create_task(witness.run(service.config.audit_checkpoint_seconds), name=f"audit-{service.me}")
    try:
        yield
    finally:
        app[AUDIT].stopped.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await keeper.close()
