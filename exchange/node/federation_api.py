"""Routes that partner nodes call, over mutual TLS with a roster certificate."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from exchange.errors import InvalidInput
from exchange.http import params
from exchange.http.appkeys import PEER, SERVICE
from exchange.model import NodeId
from exchange.node.bodies import CATCHUP_LIMIT, MAX_BATCH
from exchange.node.tls import peer_identity

# The transaction body: what a sender's batch can need (exchange.service.outbox keeps a batch
# under MAX_TRANSACTION_BYTES, 32 MiB), plus room for the JSON around the items.
TRANSACTION_BODY = 32 * 1024 * 1024 + 64 * 1024


def authenticate_peer(request: web.Request) -> NodeId:
    """The roster node on the other end of this TLS connection, or UnknownPeer (403)."""
    service = request.app[SERVICE]
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    node = peer_identity(ssl_object, service.fed)
    request[PEER] = node.id
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


def routes() -> list[web.RouteDef]:
    return [
        web.post("/fed/v1/envelopes", post_transaction),
        web.get("/fed/v1/channels/{channel}/events", get_channel_events),
        web.get("/fed/v1/channels/{channel}/envelopes", get_channel_envelopes),
        web.post("/fed/v1/channels/{channel}/accept", post_acceptance),
    ]
