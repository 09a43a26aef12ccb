"""An export bundle's lines as they stream in from a node, a read at a time, each line whole; a
line without end is refused rather than held (a bundle file's lines: exchange.cli.lines). And
`exchange audit export`'s file, written from them."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

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


async def export_to(target: Target, out: Path, bulletin: str | None = None) -> int:
    """Write a node's export bundle to `out`; return the number of lines. Written beside it and
    put in its place only once whole: an export that fails (the node down, a refused token, a
    stream that broke off) leaves a file that was there before as it was, not emptied or cut
    (found by a read-only review)."""
    path = "/api/v1/audit/export" + (f"?bulletin={bulletin}" if bulletin else "")
    count = 0
    part = out.with_name(f".{out.name}.{secrets.token_hex(8)}.part")
    try:
        with part.open("xb") as fh:
            async for lines in stream_lines(target, path):
                fh.write(b"\n".join(lines) + b"\n")
                count += len(lines)
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)
    return count
