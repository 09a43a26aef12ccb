"""A small HTTPS client for the node's client API, used by the CLI."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from exchange.config import NodeConfig
from exchange.errors import ConfigError, ExchangeError, PeerError
from exchange.keystore import read_file
from exchange.node.tls import client_context


class ApiError(ExchangeError):
    """The node refused a request; the detail is its problem+json message."""

    title = "Request refused"

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{detail} (HTTP {status})")
        self.status = status


@dataclass(frozen=True)
class Target:
    url: str
    token: str
    server_cert: str

    @classmethod
    def from_node(cls, node_file: Path, user: str, token: str | None = None) -> Target:
        """Where a node's API is and how to trust it, from its node file and local token file."""
        cfg = NodeConfig.load(node_file)
        if token is None:
            token_file = cfg.keys_dir / "tokens" / user
            if not token_file.exists():
                raise ConfigError(f"no token for {user!r} in {token_file.parent}; pass --token")
            token = read_file(token_file).decode().strip()
        return cls(cfg.endpoint, token, read_file(cfg.keys_dir / "tls.crt").decode())


def _json_body(body: Any) -> io.BytesIO | None:
    """JSON as a stream: a bulletin with attachments can be megabytes."""
    return None if body is None else io.BytesIO(json.dumps(body).encode())


async def call(target: Target, method: str, path: str, body: Any = None) -> Any:
    """One API request; a problem+json answer becomes ApiError."""
    connector = aiohttp.TCPConnector(ssl=client_context(target.server_cert))
    headers = {"Authorization": f"Bearer {target.token}", "Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.request(method, target.url + path, data=_json_body(body), headers=headers) as resp,
        ):
            payload = await resp.read()
            if resp.status >= 400:
                try:
                    detail = json.loads(payload).get("detail", resp.reason)
                except ValueError:
                    detail = resp.reason or "error"
                raise ApiError(resp.status, str(detail))
            return json.loads(payload)
    except aiohttp.ClientError as exc:
        raise PeerError(f"cannot reach {target.url}: {exc}") from exc
