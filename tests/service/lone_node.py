"""One node's application layer on SQLite, without HTTP and without partners, for service tests.

Provisioned as an operator would (`federation init`), with two channels it owns, and not started:
what it is asked is answered by the service alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from exchange.config import NodeConfig
from exchange.crypto import strict_loads
from exchange.errors import PeerError
from exchange.keystore import NodeKeyFiles, load_federation, read_file, read_provisioned_channels
from exchange.model import Bulletin, NodeId
from exchange.provision import init_federation
from exchange.service.node import NodeService
from exchange.service.transport import PeerTransport
from exchange.store import Store
from tests.conftest import DEFAULT_NODES, write_federation

NL = "nl-customs"
C2C, C2X = "c2c", "c2x"  # the officer works in both; the clerk only in c2c
PASSWORD = "a long passphrase for tests"


class NoPartners:
    """A `PeerTransport` for a node that has none: every call fails as an unreachable partner would."""

    async def fetch(self, node: NodeId, path: str) -> Any:
        raise PeerError(f"{node}: no partners in this test")

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        raise PeerError(f"{node}: no partners in this test")


async def node_service(config_file: Path, transport: PeerTransport) -> NodeService:
    """A provisioned node's application layer from its node file, over its own store, reaching
    partners through `transport`; its channels loaded, not started (the caller stops it and closes
    its store)."""
    cfg = NodeConfig.load(config_file, environ={})
    store = await Store.open(cfg.database_url)
    roster = strict_loads(read_file(cfg.roster_path))
    service = NodeService(cfg, store, load_federation(cfg), NodeKeyFiles(cfg.keys_dir).load(), transport, roster)
    await service.load(read_provisioned_channels(cfg.channels_dir))
    return service


@contextlib.asynccontextmanager
async def joined(folder: Path, transports: Mapping[str, Any]) -> AsyncIterator[dict[str, NodeService]]:
    """The nodes of a provisioned `folder`, by id, each reaching the others through its transport
    in `transports` (each told them all, as its `nodes`); not started, stopped and closed after."""
    services = {node: await node_service(folder / f"{node}.toml", transport) for node, transport in transports.items()}
    for transport in transports.values():
        transport.nodes = services
    try:
        yield services
    finally:
        for service in services.values():
            with contextlib.suppress(Exception):
                await service.stop()
            await service.store.close()


async def lone_node(folder: Path) -> AsyncIterator[NodeService]:
    """The node's service, with a contact point `clerk` assigned to c2c only; closed afterwards."""
    channels = [
        {"id": c, "owner": NL, "agencies": ["customs"], "members": {NL: ["read", "post", "admin"]}} for c in (C2C, C2X)
    ]
    write_federation(folder, {NL: DEFAULT_NODES[NL]}, channels, {})
    await init_federation(folder)
    service = await node_service(folder / f"{NL}.toml", NoPartners())
    try:
        await service.users.add("clerk", "contact-point", actor="test")
        await service.users.assign("clerk", C2C, assigned=True, actor="test")
        yield service
    finally:
        await service.stop()
        await service.store.close()


def bulletin(title: str, **fields: Any) -> Bulletin:
    raw: dict[str, Any] = {
        "kind": "alert",
        "handling": {"tlp": "AMBER", "no_onward_sharing": False},
        "title": title,
        "body": "",
        **fields,
    }
    return Bulletin.model_validate(raw)
