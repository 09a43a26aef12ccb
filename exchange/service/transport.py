"""How the application layer reaches partner nodes: a protocol given to it when it is built.

The node's adapter implements it over mutual-TLS HTTPS; tests pass a fake that needs no server.
"""

from __future__ import annotations

from collections.abc import Callable
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


class WhileRosterHolds:
    """A PeerTransport that makes no request while this node's held roster version has expired
    (docs/protocol.md 6a.12), but those to the roster routes, by which a fresh version comes.

    Inbound, such a node answers 503 to every other federation request; outbound it must not go on
    either: a node kept from the version that revokes a partner (a freeze) would otherwise still
    pull that partner's envelopes, channel events and epoch records, and push to it. `check`
    raises HeldRosterExpired (503, retryable): senders keep their queues and retry, catch-up and
    epoch fetches try again at their next round."""

    def __init__(self, inner: PeerTransport, check: Callable[[], None], roster_path: str) -> None:
        self._inner = inner
        self._check = check
        self._roster_path = roster_path

    def _allowed(self, path: str) -> None:
        if path.split("?", 1)[0] != self._roster_path:
            self._check()

    async def fetch(self, node: NodeId, path: str) -> Any:
        self._allowed(path)
        return await self._inner.fetch(node, path)

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        self._allowed(path)
        return await self._inner.send(node, path, body)
