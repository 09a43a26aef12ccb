"""The composition root: builds a node's store, keys, roster, transport and application layer,
the aiohttp application with its federation, client and audit routes, and mounts the console.

This is the one place that opens the database; every adapter is handed the `NodeService`.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from exchange.config import NodeConfig
from exchange.crypto import strict_loads
from exchange.errors import ConfigError, ExchangeError
from exchange.keystore import (
    NodeKeyFiles,
    RosterPin,
    load_authority_public,
    load_federation,
    read_file,
    read_provisioned_channels,
)
from exchange.protocol.roster import Federation
from exchange.protocol.rosterchain import TrustedRoster
from exchange.service.federation import FederationRoster, V1Trust
from exchange.service.users import Users
from exchange.store import Store
from exchange.store.schema import (
    node_schema as node_schema,  # the CLI's `exchange db` reaches it here
    upgrade_node as upgrade_node,
)

if TYPE_CHECKING:
    from aiohttp import web

    from exchange.http.server import ConnectionGuard
    from exchange.node.endpoint_names import EndpointNames
    from exchange.service.node import NodeService

# The server's parts (aiohttp's server, the routes, the console, the application layer) are
# imported where a node is built, not here: the CLI's commands that only open the database
# (`exchange users`, `roster`, `db`, `audit verify --node`) start without them.

log = logging.getLogger("exchange.node")


def build_app(config: NodeConfig) -> web.Application:
    """The node as an aiohttp application; its resources open and close with the app."""
    from exchange.http.appkeys import SERVICE
    from exchange.http.limits import RateLimiter, RateSettings, rate_limits
    from exchange.node.app import api_application
    from exchange.node.peers import HttpTransport
    from exchange.node.tlog_client import HttpTlogClient
    from exchange.node.webhook_client import HttpWebhookSender
    from exchange.service.gossip import RosterGossip
    from exchange.service.node import NodeService
    from exchange.web import mount as mount_console
    from exchange.web.session import SESSION_COOKIE

    app = api_application()
    mount_console(app)  # the web console, under /console/ in the same process
    # Innermost, so that a 429 becomes problem+json on the API and an HTML page in the console.
    limiter = RateLimiter(RateSettings.from_config(config), credential_cookies=(SESSION_COOKIE,))
    app.middlewares.append(rate_limits(limiter))

    async def resources(app: web.Application) -> AsyncIterator[None]:
        v1 = _v1_trust(config)
        store = await Store.open(config.database_url, node=config.id, connections=config.database_connections)
        try:
            roster = FederationRoster(store, v1=v1, pin=RosterPin(config.keys_dir))
            fed, signed_roster = _runs_on(config, roster, await roster.load())
            _check_listed(config, roster, fed)
            me = fed.node(config.id)
            keys = NodeKeyFiles(config.keys_dir).load(me.signing_kid, me.encryption_kid)  # after rotations too
            if me.signing_kid != keys.signing.kid or me.encryption_kid != keys.decryption.kid:
                raise ExchangeError(f"the keys in {config.keys_dir} are not the ones the roster lists for {config.id}")
            identity = NodeKeyFiles(config.keys_dir).tls_identity(me.tls_pin)  # the certificate the roster lists
            NodeKeyFiles(config.keys_dir).write_presented(identity)  # for the node's own CLI to trust
        except BaseException:
            await store.close()
            raise
        gossip = RosterGossip(config.id, roster, fed, peers=config.gossip_peers)
        transport = HttpTransport(config, fed, gossip, identity)
        try:
            service = NodeService(
                config,
                store,
                fed,
                keys,
                transport,
                signed_roster,
                roster=roster,
                gossip=gossip,
                webhook_sender=HttpWebhookSender(),
                tlog_client=HttpTlogClient(config.request_timeout_seconds),
                tls=identity,
            )
            service.on_install(transport.install)  # its partners and pins follow the held version
            await service.load(read_provisioned_channels(config.channels_dir))
            app[SERVICE] = service
            await service.start()
            try:
                yield
            finally:
                await service.stop()
        finally:
            await transport.close()
            await store.close()

    app.cleanup_ctx.append(resources)
    return app


def _check_listed(config: NodeConfig, roster: FederationRoster, fed: Federation) -> None:
    """ConfigError, in one line that names the way out, unless this node is an active node of the
    roster it runs on: a suspended or revoked one has no current keys, and its partners refuse it."""
    if fed.listed(config.id):
        return
    held = roster.held
    if held is None or config.id not in {n.id for n in held.roster.nodes}:
        raise ConfigError(f"{config.id} is not in the roster it runs on (version {fed.roster.version})")
    status = held.node(config.id).status
    way_out = (
        "it is revoked for good"
        if status == "revoked"
        else "import the version that reactivates it (exchange roster import), then start it"
    )
    raise ConfigError(f"{config.id} is {status} in roster version {held.version}: {way_out}")


def _v1_trust(config: NodeConfig) -> V1Trust | None:
    """The v1 roster file a node of release 0.1.0 (or of the sample federation) runs on, verified."""
    if not config.roster_path.exists():
        return None
    return V1Trust(load_federation(config), load_authority_public(config.authority_key_path))


def _runs_on(config: NodeConfig, roster: FederationRoster, held: TrustedRoster | None) -> tuple[Federation, Any]:
    """The roster the node's wiring runs on, and the signed document its audit records name: the
    held roster v2 version once one is imported (its v1 view: exchange.service.federation), else
    the v1 roster file."""
    view = roster.view()
    if held is not None and view is not None:
        status = roster.status()
        if status is not None and status.warning:
            log.warning("%s: %s (expires %s)", config.id, status.warning, status.expires)
        if roster.v1 is not None:
            return view, strict_loads(read_file(config.roster_path))
        return view, held.signed.model_dump(mode="json")
    if roster.v1 is None:
        raise ConfigError(
            f"{config.id} has no roster: no v1 roster file {config.roster_path} and no roster v2 version imported "
            "(exchange roster import)"
        )
    return roster.v1.fed, strict_loads(read_file(config.roster_path))


@dataclass
class RunningNode:
    """A node serving HTTPS on a port; stop it with `await node.stop()`."""

    config: NodeConfig
    app: web.Application
    runner: web.AppRunner
    guard: ConnectionGuard  # its open connections per client, and the limits they are held to
    names: EndpointNames | None = None  # the partners' host-name endpoints' addresses, for the guard

    @property
    def service(self) -> NodeService:
        from exchange.http.appkeys import SERVICE

        return self.app[SERVICE]

    @property
    def url(self) -> str:
        return self.config.endpoint

    async def stop(self) -> None:
        if self.names is not None:
            await self.names.close()
        await self.runner.cleanup()


async def start_node(config: NodeConfig, *, reuse_port: bool = False) -> RunningNode:
    """Start one node on its configured host and port, over TLS 1.3 with client certificates,
    under the timeouts and connection limits of its configuration (exchange.http.limits).
    `reuse_port`: one of several worker processes sharing the port (exchange.cli.workers)."""
    from aiohttp import web

    from exchange.http.appkeys import SERVICE
    from exchange.http.server import ConnectionGuard, GuardedSite, ServerLimits
    from exchange.node.endpoint_names import EndpointNames
    from exchange.node.tls import ServerTls, roster_addresses, roster_identity

    app = build_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    service = app[SERVICE]
    tls = ServerTls(service.own_keys.tls_identity(), service.fed)
    service.on_install(tls.install)  # each handshake checks the pins of the version held then
    ssl_ctx = tls.context
    names = EndpointNames(service.fed)  # partners' host-name endpoints, resolved in the background
    guard = ConnectionGuard(
        ServerLimits.from_config(config),
        refused=service.refusals.count,
        identify=roster_identity(service.fed),
        listed=roster_addresses(service.fed, names),
    )
    site = GuardedSite(runner, config.host, config.port, ssl_context=ssl_ctx, guard=guard, reuse_port=reuse_port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"{config.id} cannot listen on {config.host}:{config.port}: {exc.strerror}") from exc
    names.start()
    log.info("node %s listening on %s", config.id, config.endpoint)
    return RunningNode(config, app, runner, guard, names)


def keep_what_started() -> None:
    """Put every object alive now (the modules, the roster, the nodes just started) out of the
    cyclic garbage collector's reach, for a process whose nodes run until it exits.

    Each full collection walks every tracked object; in a process serving 25 nodes that took
    0.6 to 2.2 s, with the event loop, and every node on it, standing still meanwhile
    (bench/simulate.py: the slowest deliveries). Frozen, they are walked no more, and a full
    collection walks only what came after. Not for a process that stops nodes and goes on (the
    tests): cyclic garbage among frozen objects is never collected.

    Then the collector's thresholds are set for a long-running server (`tune_collector`).
    """
    gc.freeze()
    tune_collector()


# The collector's youngest generation is examined after this many more container objects were made
# than freed (Python's default: 700). A node makes thousands per push (rows, dicts, receipts) that
# refcounting frees anyway; at 700 the examinations took 4-6% of an author's CPU at 200 readers
# (perf), about 1% at this threshold. Cyclic garbage waits a little longer: memory, bounded.
GC_YOUNG = 10_000


def tune_collector() -> None:
    """The collector's thresholds for a long-running server (above), on Python 3.11 and 3.12, whose
    default this replaces; later versions changed the collector and what its thresholds mean."""
    if sys.version_info < (3, 13):
        gc.set_threshold(GC_YOUNG, 10, 10)


@contextlib.asynccontextmanager
async def local_users(config: NodeConfig, *, create: bool = False) -> AsyncIterator[Users]:
    """The node's users, for administrative commands run beside a running node or without it; a
    database that holds no node is refused unless `create` (ConfigError: check --node)."""
    store = await Store.open(
        config.database_url, node=config.id, connections=config.database_connections, create=create
    )
    try:
        yield Users(store)
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def local_roster(config: NodeConfig, *, create: bool = False) -> AsyncIterator[FederationRoster]:
    """The roster v2 chain of a node, for `exchange roster import` and `status` run beside a running
    node or without it. A node that has a v1 roster file takes its migration first (6a.6). A
    database that holds no node is refused unless `create` (a new node's first import)."""
    v1 = _v1_trust(config)
    store = await Store.open(
        config.database_url, node=config.id, connections=config.database_connections, create=create
    )
    try:
        roster = FederationRoster(store, v1=v1, pin=RosterPin(config.keys_dir))
        await roster.load()
        yield roster
    finally:
        await store.close()
