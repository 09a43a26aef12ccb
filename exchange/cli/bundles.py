"""An export bundle's lines as they stream in from a node, a read at a time, each line whole; a
line without end is refused rather than held (a bundle file's lines: exchange.cli.lines)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp

from exchange.cli.client import ApiError, Target, refuse_redirect
from exchange.cli.lines import READ_SIZE, bounded
from exchange.errors import PeerError
from exchange.node.tls import client_context


async def stream_lines(target: Target, path: str) -> AsyncIterator[list[bytes]]:
    """The lines of a streamed API answer (an export bundle), as they arrive: the whole lines of
    each read, in a list."""
    connector = aiohttp.TCPConnector(ssl=client_context(target.server_cert))
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    headers = {"Authorization": f"Bearer {target.token}"}
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.get(target.url + path, headers=headers, allow_redirects=False) as resp,
        ):
            refuse_redirect(resp)
            if resp.status >= 400:
                try:
                    answer = json.loads(await resp.read())
                except ValueError:
                    answer = None
                detail = answer.get("detail", resp.reason) if isinstance(answer, dict) else resp.reason or "error"
                raise ApiError(resp.status, str(detail))
            rest = b""
            async for chunk in resp.content.iter_chunked(READ_SIZE):
                *lines, rest = (rest + chunk).split(b"\n")
                bounded(rest)
                if lines:
                    yield lines
            if rest:
                yield [rest]
    except aiohttp.ClientError as exc:
        raise PeerError(f"the export from {target.url} broke off: {exc}") from exc
