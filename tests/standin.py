"""A stand-in for a test node: an aiohttp server on the node's host and port, with the node's own
TLS identity, that answers as a test says. Partners (and the CLI) reach it exactly as they reach
the node, so a test can play a partner that misbehaves on purpose. Stop the node first."""

from __future__ import annotations

from typing import Self

from aiohttp import web

from exchange.keystore import load_federation
from exchange.node.tls import server_context
from tests.conftest import Member


class StandIn:
    """Serves the routes `routes` adds, in place of `member`'s node, while in use (`async with`)."""

    def __init__(self, member: Member) -> None:
        self.member = member
        self.runner: web.AppRunner | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        cfg = self.member.config
        app = web.Application()
        self.routes(app)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        ctx = server_context(cfg.keys_dir / "tls.crt", cfg.keys_dir / "tls.key", load_federation(cfg))
        await web.TCPSite(self.runner, cfg.host, cfg.port, ssl_context=ctx).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()
