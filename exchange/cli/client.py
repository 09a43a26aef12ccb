"""A small HTTPS client for the node's client API, used by the CLI."""

from __future__ import annotations

import io
import json
import os
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from exchange.config import NodeConfig
from exchange.errors import (
    ApiError as ApiError,  # its home is errors; imported from here too
    ConfigError,
    PeerError,
)
from exchange.keystore import NodeKeyFiles, read_file
from exchange.node.tls import client_context

DEFAULT_TIMEOUT = 30.0  # seconds, for a Target made without a node file


@dataclass(frozen=True)
class Target:
    url: str
    token: str
    server_cert: str
    timeout: float = DEFAULT_TIMEOUT  # seconds for one whole request, answer included

    @classmethod
    def from_node(cls, node_file: Path, user: str, token: str | None = None) -> Target:
        """Where a node's API is and how to trust it, from its node file and local token file."""
        cfg = NodeConfig.load(node_file)
        if token is None:
            token_file = cfg.keys_dir / "tokens" / user
            if not token_file.exists():
                raise ConfigError(f"no token for {user!r} in {token_file.parent}; pass --token")
            try:
                token = read_file(token_file).decode().strip()
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{token_file}: not a token (not UTF-8 text)") from exc
            _check_token(token, str(token_file))
        else:
            _check_token(token, "the token given")
        return cls(cfg.endpoint, token, NodeKeyFiles(cfg.keys_dir).presented_pem(), cfg.request_timeout_seconds)


def _check_token(token: str, where: str) -> None:
    """A token is printable ASCII without spaces (a header's value): one broken by a copy and paste
    (a line break inside it, a stray byte) is named here, not met as a traceback inside aiohttp."""
    if not token or len(token) > 1024 or not all("!" <= ch <= "~" for ch in token):
        raise ConfigError(f"{where} is not a token: printable ASCII without spaces or line breaks")


def refuse_redirect(resp: aiohttp.ClientResponse) -> None:
    """ApiError for a 3xx answer: a node's API never redirects, and the CLI follows no redirect."""
    if 300 <= resp.status < 400:
        where = resp.headers.get("Location", "?")[:200]
        raise ApiError(resp.status, f"redirected to {where}, which the CLI does not follow: check the node's endpoint")


def unreachable(url: str, exc: BaseException, timeout: float | None = None) -> PeerError:
    """One line for a request that got no answer: a timeout, a refused connection, a TLS failure."""
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError, and aiohttp's timeouts
        after = "" if timeout is None else f" within {timeout:g} s"
        return PeerError(f"{url} did not answer{after}")
    if isinstance(exc, aiohttp.ClientConnectorError):  # its own str() shows an SSLContext's repr
        exc = exc.os_error
    if isinstance(exc, ssl.SSLError):
        reason = f"TLS failed: {exc.reason or exc}"
    elif isinstance(exc, OSError) and exc.errno:
        reason = os.strerror(exc.errno).lower()
    else:
        reason = str(exc) or type(exc).__name__
    return PeerError(f"cannot reach {url}: {' '.join(reason.split())}")


def _json_body(body: Any) -> io.BytesIO | None:
    """JSON as a stream: a bulletin with attachments can be megabytes."""
    return None if body is None else io.BytesIO(json.dumps(body).encode())


def new_idempotency_key() -> str:
    """A fresh Idempotency-Key for one post or forward (a random UUID: 36 characters)."""
    return str(uuid.uuid4())


def dropped(exc: BaseException) -> bool:
    """Whether a request failed after it may have reached the node: the connection broke while the
    answer was awaited (not a refused connection or a failed handshake, and not a timeout)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return False
    return isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientOSError)


async def call(target: Target, method: str, path: str, body: Any = None, *, idempotency_key: str | None = None) -> Any:
    """One API request; a problem+json answer becomes ApiError, no answer at all PeerError.

    With an `idempotency_key` (a post, a forward) the request carries it, and if the connection
    drops before the answer it is sent once more with the same key: the node answers a retry with
    the first result, so the bulletin exists once whether or not the first attempt was committed.
    """
    try:
        return await _call_once(target, method, path, body, idempotency_key)
    except PeerError as exc:
        if idempotency_key is None or exc.__cause__ is None or not dropped(exc.__cause__):
            raise
    return await _call_once(target, method, path, body, idempotency_key)


async def _call_once(target: Target, method: str, path: str, body: Any, idempotency_key: str | None) -> Any:
    connector = aiohttp.TCPConnector(ssl=client_context(target.server_cert))
    headers = {"Authorization": f"Bearer {target.token}", "Content-Type": "application/json"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    timeout = aiohttp.ClientTimeout(total=target.timeout)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            # No redirects: the token goes to the node named in the node file, nowhere else.
            session.request(
                method, target.url + path, data=_json_body(body), headers=headers, allow_redirects=False
            ) as resp,
        ):
            refuse_redirect(resp)
            payload = await resp.read()
            if resp.status >= 400:
                try:
                    answer = json.loads(payload)
                except ValueError:
                    answer = None
                detail = answer.get("detail", resp.reason) if isinstance(answer, dict) else resp.reason or "error"
                raise ApiError(resp.status, str(detail))
            try:
                return json.loads(payload)
            except ValueError as exc:
                raise PeerError(f"{target.url} answered {path} with something that is not JSON") from exc
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:  # OSError: ssl.SSLError among others
        raise unreachable(target.url, exc, target.timeout) from exc
