"""Routes that partner nodes call, over mutual TLS with a roster certificate; and the roster routes
of gossip (docs/protocol.md, 6a.11): a pull by a partner, and an offer by a node not yet known."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from exchange.errors import ExchangeError, InvalidInput
from exchange.http import params
from exchange.http.appkeys import PEER, SERVICE
from exchange.http.limits import Handler
from exchange.model import NodeId
from exchange.node.bodies import CATCHUP_LIMIT, MAX_BATCH
from exchange.node.tls import peer_identity
from exchange.protocol.receipt_batches import BATCHES, RECEIPT_FORM_HEADER, batch_form
from exchange.service.gossip import (
    OFFER_BYTES,
    ROSTER_HASH_HEADER,
    ROSTER_HEADER,
    ROSTER_PATH,
    header_hash,
    header_version,
    offer_source,
)

# The transaction body: what a sender's batch can need (exchange.service.outbox keeps a batch
# under MAX_TRANSACTION_BYTES, 32 MiB), plus room for the JSON around the items.
TRANSACTION_BODY = 32 * 1024 * 1024 + 64 * 1024


def authenticate_peer(request: web.Request, *, roster_route: bool = False) -> NodeId:
    """The roster node on the other end of this TLS connection, or UnknownPeer (403); and, but on
    the roster routes, HeldRosterExpired (503) while this node's roster has expired."""
    service = request.app[SERVICE]
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    node = peer_identity(ssl_object, service.fed)
    request[PEER] = node.id
    if not roster_route:
        service.check_roster()
        if request.method == "POST":  # items to judge: not before this node runs on the sender's version
            service.gossip.check_peer(node.id, header_version(request.headers.get(ROSTER_HEADER)))
    service.outbox.peer_seen(node.id)  # it is up: its outbox retries now, not after the backoff
    return NodeId(node.id)


def _list(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key, [])
    if not isinstance(value, list) or len(value) > MAX_BATCH:
        raise InvalidInput(f"{key} must be a list of at most {MAX_BATCH}")
    return value


async def post_transaction(request: web.Request) -> web.Response:
    """Take a transaction of channel events and envelopes; persist and audit, then answer with receipts."""
    peer = authenticate_peer(request)
    body: Any = await params.json_body(request, TRANSACTION_BODY)
    if not isinstance(body, dict) or not {"txn", "envelopes"} <= set(body) <= {
        "txn",
        "events",
        "envelopes",
        "receipts",
    }:
        raise InvalidInput('the body must be {"txn": ..., "events": [...], "envelopes": [...], "receipts": [...]}')
    if not isinstance(body["txn"], str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", body["txn"]):
        raise InvalidInput("txn must be 1 to 64 characters of [A-Za-z0-9_-]")
    events, envelopes, pushed = _list(body, "events"), _list(body, "envelopes"), _list(body, "receipts")
    if not events and not envelopes and not pushed:
        raise InvalidInput("an empty transaction")
    receipts = await request.app[SERVICE].receive(peer, events, envelopes, pushed)
    if request.headers.get(RECEIPT_FORM_HEADER) == BATCHES:  # a sender that takes the batch form (10.4)
        full, batches = batch_form(receipts)
        answer = {"txn": body["txn"], "receipts": [r.model_dump(mode="json") for r in full], "batches": batches}
        return web.json_response(answer)
    return web.json_response({"txn": body["txn"], "receipts": [r.model_dump(mode="json") for r in receipts]})


async def get_channel_events(request: web.Request) -> web.Response:
    """A channel's log after a position, for a node that the log names."""
    peer = authenticate_peer(request)
    channel = params.channel_id(request.match_info["channel"])
    after = params.integer(request.query, "after", -1, minimum=-1)
    events = request.app[SERVICE].channels.events_for_peer(peer, channel, after)
    return web.json_response({"events": [e.model_dump(mode="json") for e in events]})


async def get_channel_envelopes(request: web.Request) -> web.Response:
    """Catch-up: a page of a channel's envelopes after a cursor, or of one author's stream after a seq."""
    peer = authenticate_peer(request)
    q = request.query
    body = await request.app[SERVICE].served_envelopes(
        peer,
        params.channel_id(request.match_info["channel"]),
        after=params.integer(q, "after", 0),
        limit=params.integer(q, "limit", 200, minimum=1, maximum=CATCHUP_LIMIT),
        author=params.optional_text(q, "author", params.node_id),
        after_seq=params.integer(q, "after_seq", 0),
    )
    return web.Response(body=body, content_type="application/json")


async def post_acceptance(request: web.Request) -> web.Response:
    """An invited node accepts; the owner orders it into the log and returns the log."""
    peer = authenticate_peer(request)
    channel = params.channel_id(request.match_info["channel"])
    body: Any = await params.json_body(request)
    events = await request.app[SERVICE].channels.receive_acceptance(peer, channel, body)
    return web.json_response({"events": [e.model_dump(mode="json") for e in events]})


async def get_roster(request: web.Request) -> web.Response:
    """A partner pulls the signed roster versions after `after` (at most a page of them)."""
    authenticate_peer(request, roster_route=True)
    after = params.integer(request.query, "after", 0)
    body = await request.app[SERVICE].gossip.serve(after)
    return web.Response(body=body, content_type="application/json")


async def post_roster(request: web.Request) -> web.Response:
    """Roster versions offered (a JSON array of signed versions): by a partner, or by a node that only
    a version this node lacks lists, without a client certificate. Bounded in size and rate; the
    body is read only once the offer is let in (`RosterGossip.take_offer`)."""
    service = request.app[SERVICE]
    try:
        peer: NodeId | None = authenticate_peer(request, roster_route=True)
    except ExchangeError:
        peer = None
    source = offer_source(peer, request.remote)

    async def body() -> bytes:  # read only if the offer is let in (one at a time, one per source)
        return bytes(await params.body_bytes(request, OFFER_BYTES))

    imported = await service.gossip.take_offer(body, source)
    return web.json_response({"version": imported.version, "hash": imported.hash, "added": imported.added})


@web.middleware
async def roster_gossip(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On the federation routes: every answer names the roster version held; a partner's request
    that names a newer one makes this node pull from it (6a.11)."""
    service = request.app.get(SERVICE)
    if service is None:
        return await handler(request)
    if not request.path.startswith("/fed/"):
        return await handler(request)
    response = await handler(request)
    if not response.prepared:
        response.headers.update(service.gossip.headers())
    version = header_version(request.headers.get(ROSTER_HEADER))
    peer = request.get(PEER)
    if version is not None and peer is not None:
        service.gossip.seen(peer, version, header_hash(request.headers.get(ROSTER_HASH_HEADER)))
    return response


def routes() -> list[web.RouteDef]:
    return [
        web.get(ROSTER_PATH, get_roster),
        web.post(ROSTER_PATH, post_roster),
        web.post("/fed/v1/envelopes", post_transaction),
        web.get("/fed/v1/channels/{channel}/events", get_channel_events),
        web.get("/fed/v1/channels/{channel}/envelopes", get_channel_envelopes),
        web.post("/fed/v1/channels/{channel}/accept", post_acceptance),
    ]
