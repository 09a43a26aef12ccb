"""The federation client: `PeerTransport` over mutual-TLS HTTPS, one pinned session per partner."""

from __future__ import annotations

import io
import json
from typing import Any

import aiohttp

from exchange.config import NodeConfig
from exchange.errors import PeerError, PeerRefused
from exchange.model import NodeId
from exchange.node.tls import peer_context
from exchange.protocol.roster import Federation


class HttpTransport:
    """Requests to partners, each over its own connection pool so a slow peer delays nobody else."""

    def __init__(self, config: NodeConfig, fed: Federation) -> None:
        timeout = aiohttp.ClientTimeout(total=config.request_timeout_seconds)
        cert, key = config.keys_dir / "tls.crt", config.keys_dir / "tls.key"
        self._endpoints = {n.id: n.endpoint for n in fed.roster.nodes if n.id != config.id}
        self._sessions = {
            n.id: aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=peer_context(n, cert, key), limit=2), timeout=timeout
            )
            for n in fed.roster.nodes
            if n.id != config.id
        }

    def _partner(self, node: str) -> tuple[aiohttp.ClientSession, str]:
        if node not in self._sessions:
            raise PeerError(f"{node!r} is not a partner node")
        return self._sessions[node], self._endpoints[node]

    async def fetch(self, node: NodeId, path: str) -> Any:
        session, endpoint = self._partner(node)
        try:
            async with session.get(endpoint + path) as resp:
                return await _json_or_error(resp, node)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise PeerError(f"{node}: {type(exc).__name__}: {exc}") from exc

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        session, endpoint = self._partner(node)
        try:
            # BytesIO: aiohttp streams it rather than warn about a large body (attachments)
            async with session.post(
                endpoint + path, data=io.BytesIO(body), headers={"Content-Type": "application/json"}
            ) as resp:
                return await _json_or_error(resp, node)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise PeerError(f"{node}: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        for session in self._sessions.values():
            await session.close()


async def _json_or_error(resp: aiohttp.ClientResponse, peer: str) -> Any:
    payload = await resp.read()
    if resp.status == 200:
        return json.loads(payload)
    detail = _problem_detail(payload, resp.status)
    if 400 <= resp.status < 500:
        raise PeerRefused(detail, resp.status)  # the partner's own words: the outbox records them
    raise PeerError(f"{peer} answered {resp.status}: {detail}")


def _problem_detail(payload: bytes, status: int) -> str:
    try:
        return str(json.loads(payload).get("detail", status))
    except (ValueError, AttributeError):
        return f"HTTP {status}"
