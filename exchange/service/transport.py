"""How the application layer reaches partner nodes: a protocol given to it when it is built.

The node's adapter implements it over mutual-TLS HTTPS; tests pass a fake that needs no server.
"""

from __future__ import annotations

from typing import Any, Protocol

from exchange.model import NodeId


class PeerTransport(Protocol):
    """Requests to partner nodes of the federation API.

    Both calls return the partner's JSON answer. A partner that refuses (4xx) raises
    `PeerRefused` with the status and its problem detail; any other failure (5xx, timeout,
    connection) raises `PeerError`, which callers treat as retryable.
    """

    async def fetch(self, node: NodeId, path: str) -> Any:
        """GET `path` from `node`."""
        ...

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        """POST the JSON document `body` to `path` at `node`."""
        ...
