"""Routes that partner nodes call, over mutual TLS with a roster certificate."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from exchange.crypto import strict_loads
from exchange.errors import InvalidInput
from exchange.model import NodeId
from exchange.node.appkeys import PEER, SERVICE
from exchange.node.tls import peer_identity

MAX_BATCH = 1000


def authenticate_peer(request: web.Request) -> NodeId:
    """The roster node on the other end of this TLS connection, or UnknownPeer (403)."""
    service = request.app[SERVICE]
    node = peer_identity(request.transport.get_extra_info("ssl_object") if request.transport else None, service.fed)
    request[PEER] = node.id
    return NodeId(node.id)


async def post_envelopes(request: web.Request) -> web.Response:
    """Take a transaction of envelopes; persist and audit them, then answer with signed receipts."""
    peer = authenticate_peer(request)
    body: Any = strict_loads(await request.read())
    if not isinstance(body, dict) or set(body) != {"txn", "envelopes"}:
        raise InvalidInput('the body must be {"txn": ..., "envelopes": [...]}')
    envelopes = body["envelopes"]
    if not isinstance(envelopes, list) or not 1 <= len(envelopes) <= MAX_BATCH:
        raise InvalidInput(f"envelopes must be a list of 1 to {MAX_BATCH}")
    receipts = await request.app[SERVICE].ingest(peer, envelopes)
    return web.json_response({"txn": body["txn"], "receipts": [r.model_dump(mode="json") for r in receipts]})


def routes() -> list[web.RouteDef]:
    return [web.post("/fed/v1/envelopes", post_envelopes)]
