"""Routes that partner nodes call, over mutual TLS with a roster certificate."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from exchange.crypto import strict_loads
from exchange.errors import InvalidInput
from exchange.http.appkeys import PEER, SERVICE
from exchange.model import NodeId
from exchange.node.tls import peer_identity

MAX_BATCH = 1000


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
    body: Any = strict_loads(await request.read())
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
    raw = request.query.get("after", "-1")
    if not re.fullmatch(r"-1|\d{1,9}", raw):
        raise InvalidInput("after must be -1 or a log position")
    events = request.app[SERVICE].channels.events_for_peer(peer, request.match_info["channel"], int(raw))
    return web.json_response({"events": [e.model_dump(mode="json") for e in events]})


def _position(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name, str(default))
    if not re.fullmatch(r"\d{1,12}", raw):
        raise InvalidInput(f"{name} must be a non-negative integer")
    return int(raw)


async def get_channel_envelopes(request: web.Request) -> web.Response:
    """Catch-up: a page of a channel's envelopes after a cursor, or of one author's stream after a seq."""
    peer = authenticate_peer(request)
    author = request.query.get("author")
    body = await request.app[SERVICE].served_envelopes(
        peer,
        request.match_info["channel"],
        after=_position(request, "after", 0),
        limit=_position(request, "limit", 200),
        author=author,
        after_seq=_position(request, "after_seq", 0),
    )
    return web.Response(body=body, content_type="application/json")


async def post_acceptance(request: web.Request) -> web.Response:
    """An invited node accepts; the owner orders it into the log and returns the log."""
    peer = authenticate_peer(request)
    body: Any = strict_loads(await request.read())
    events = await request.app[SERVICE].channels.receive_acceptance(peer, request.match_info["channel"], body)
    return web.json_response({"events": [e.model_dump(mode="json") for e in events]})


def routes() -> list[web.RouteDef]:
    return [
        web.post("/fed/v1/envelopes", post_transaction),
        web.get("/fed/v1/channels/{channel}/events", get_channel_events),
        web.get("/fed/v1/channels/{channel}/envelopes", get_channel_envelopes),
        web.post("/fed/v1/channels/{channel}/accept", post_acceptance),
    ]
