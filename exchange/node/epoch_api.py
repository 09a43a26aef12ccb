"""Federation routes of envelope v2 (docs/protocol.md, 15.12), over mutual TLS like the others:

GET /fed/v1/epochs/support                  this node's signed v2 support announcement
GET /fed/v1/channels/{channel}/epochs?after=n   the channel's epoch records after n, for a member
"""

from __future__ import annotations

from aiohttp import web

from exchange.errors import NotFound
from exchange.http import params
from exchange.http.appkeys import SERVICE
from exchange.node.federation_api import authenticate_peer


async def get_epoch_support(request: web.Request) -> web.Response:
    """This node takes v2 envelopes, and wants its epoch keys wrapped for the key it names."""
    authenticate_peer(request)
    epochs = request.app[SERVICE].epochs
    if not epochs.announce:
        raise NotFound("this node takes no envelope v2")
    return web.json_response(epochs.announcement.model_dump(mode="json"))


async def get_channel_epochs(request: web.Request) -> web.Response:
    """A channel's epoch records after `after` (-1: from the first), for a current member."""
    peer = authenticate_peer(request)
    channel = params.channel_id(request.match_info["channel"])
    after = params.integer(request.query, "after", -1, minimum=-1)
    body = await request.app[SERVICE].epochs.serve(peer, channel, after)
    return web.Response(body=body, content_type="application/json")


def routes() -> list[web.RouteDef]:
    return [
        web.get("/fed/v1/epochs/support", get_epoch_support),
        web.get("/fed/v1/channels/{channel}/epochs", get_channel_epochs),
    ]
