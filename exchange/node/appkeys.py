"""Typed keys for aiohttp application and request state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from exchange.node.catchup import CatchUp
    from exchange.node.outbox import PeerSender
    from exchange.node.service import NodeService

SERVICE: web.AppKey[NodeService] = web.AppKey("service")
SENDERS: web.AppKey[dict[str, PeerSender]] = web.AppKey("senders")
CATCHUP: web.AppKey[CatchUp] = web.AppKey("catchup")
PEER: web.RequestKey[str] = web.RequestKey("peer")  # the authenticated partner node
USER: web.RequestKey[str] = web.RequestKey("user")  # the authenticated local user
