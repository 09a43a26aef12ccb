"""Assemble a node: the aiohttp application, its start-up and shutdown, and a runner."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from exchange.config import NodeConfig
from exchange.crypto import strict_loads
from exchange.errors import ConfigError, ExchangeError, InvalidInput, PeerError
from exchange.keystore import NodeKeyFiles, load_authority_public, read_file
from exchange.model import ChannelEvent, SignedRoster
from exchange.node import audit_api, client_api, federation_api
from exchange.node.appkeys import CATCHUP, PEER, SENDERS, SERVICE, USER
from exchange.node.catchup import CatchUp
from exchange.node.outbox import PeerSender
from exchange.node.problem import from_error, problem
from exchange.node.service import NodeService
from exchange.node.tls import server_context
from exchange.protocol.roster import Federation
from exchange.store import Store
from exchange.web import mount as mount_console

log = logging.getLogger("exchange.node")

MAX_REQUEST_BYTES = 64 * 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def load_federation(config: NodeConfig) -> Federation:
    """The roster, verified against the federation authority's public key."""
    try:
        signed = SignedRoster.model_validate(strict_loads(read_file(config.roster_path)))
    except (InvalidInput, ValueError) as exc:
        raise ExchangeError(f"unreadable roster {config.roster_path}: {exc}") from exc
    return Federation.verify(signed, load_authority_public(config.authority_key_path))


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error becomes problem+json; every refused request is audited."""
    try:
        return await handler(request)
    except ExchangeError as exc:
        response = from_error(exc)
        reason = exc.detail
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = problem(exc.status, exc.reason, exc.text or exc.reason)
        reason = exc.reason
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem(500, "Internal error", "the node could not handle this request")
    if 400 <= response.status < 500:
        entry = {
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "reason": reason,
            "peer": request.get(PEER),
            "user": request.get(USER),
        }
        await request.app[SERVICE].audit_rejection({k: v for k, v in entry.items() if v is not None})
    return response


def read_provisioned_channels(folder: Path) -> list[list[ChannelEvent]]:
    """Channels set up by `federation init`: each file holds a whole owner-signed log."""
    if not folder.is_dir():
        return []
    return [
        [ChannelEvent.model_validate(e) for e in strict_loads(path.read_bytes())]
        for path in sorted(folder.glob("*.json"))
    ]


async def import_provisioned_channels(service: NodeService, folder: Path) -> None:
    for events in read_provisioned_channels(folder):
        named = {e.owner for e in events} | {getattr(e.change, "node", None) for e in events}
        named |= {e.change.acceptance.node for e in events if e.change.type == "accept"}
        if service.me in named:
            await service.channels.import_events(events)


def build_app(config: NodeConfig) -> web.Application:
    """The node as an aiohttp application; its resources open and close with the app."""
    app = web.Application(middlewares=[problem_middleware], client_max_size=MAX_REQUEST_BYTES)
    app.add_routes(federation_api.routes())
    app.add_routes(client_api.routes())
    app.add_routes(audit_api.routes())
    mount_console(app)  # the web console, under /console/ in the same process

    async def resources(app: web.Application) -> AsyncIterator[None]:
        fed = load_federation(config)
        fed.node(config.id)  # this node must be in the roster itself
        keys = NodeKeyFiles(config.keys_dir).load()
        me = fed.node(config.id)
        if me.signing_kid != keys.signing.kid or me.encryption_kid != keys.decryption.kid:
            raise ExchangeError(f"the keys in {config.keys_dir} are not the ones the roster lists for {config.id}")
        store = await Store.open(config.database_url)
        service = NodeService(config, store, fed, keys)
        await service.channels.load()
        await import_provisioned_channels(service, config.channels_dir)
        senders = {n.id: PeerSender(service, n) for n in fed.roster.nodes if n.id != config.id}

        def partner(node: str) -> PeerSender:
            if node not in senders:
                raise PeerError(f"{node!r} is not a partner node")
            return senders[node]

        async def fetch(node: str, path: str) -> Any:
            return await partner(node).get_json(path)

        async def send(node: str, path: str, body: Any) -> Any:
            return await partner(node).post_json(path, body)

        service.channels.fetch = fetch
        service.channels.send = send

        def wake(dests: Sequence[str]) -> None:
            for dest in dests:
                if dest in senders:
                    senders[dest].wake()

        def peer_seen(peer: str) -> None:
            if peer in senders:
                senders[peer].peer_seen()

        service.on_queued = wake
        service.on_peer_seen = peer_seen
        app[SERVICE] = service
        app[SENDERS] = senders
        catchup = CatchUp(service, config.catchup_interval_seconds)
        app[CATCHUP] = catchup
        tasks = [asyncio.create_task(s.run(), name=f"sender-{p}") for p, s in senders.items()]
        tasks.append(asyncio.create_task(catchup.run(), name="catch-up"))
        for sender in senders.values():
            sender.wake()  # drain whatever was queued before a restart
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for sender in senders.values():
                await sender.close()
            await store.close()

    app.cleanup_ctx.append(resources)
    app.cleanup_ctx.append(audit_api.audit_context)  # after resources: starts after it, stops before it
    return app


@dataclass
class RunningNode:
    """A node serving HTTPS on a port; stop it with `await node.stop()`."""

    config: NodeConfig
    app: web.Application
    runner: web.AppRunner

    @property
    def service(self) -> NodeService:
        return self.app[SERVICE]

    @property
    def url(self) -> str:
        return self.config.endpoint

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_node(config: NodeConfig) -> RunningNode:
    """Start one node on its configured host and port, over TLS 1.3 with client certificates."""
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    fed = app[SERVICE].fed
    ssl_ctx = server_context(config.keys_dir / "tls.crt", config.keys_dir / "tls.key", fed)
    site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_ctx)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"{config.id} cannot listen on {config.host}:{config.port}: {exc.strerror}") from exc
    log.info("node %s listening on %s", config.id, config.endpoint)
    return RunningNode(config, app, runner)
