"""Typed keys for aiohttp application and request state, shared by the API routes and the console."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from exchange.service.node import NodeService

SERVICE: web.AppKey[NodeService] = web.AppKey("service")
PEER: web.RequestKey[str] = web.RequestKey("peer")  # the authenticated partner node
USER: web.RequestKey[str] = web.RequestKey("user")  # the authenticated local user
