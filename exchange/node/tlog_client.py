"""The C2SP witnesses' HTTP client (exchange.service.audit.tlog_push.TlogClient): a POST of an
add-checkpoint body, verified with the system's certificate authorities or the witness's configured
one, no redirects followed, the answer read up to a bound."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp

from exchange.errors import PeerError
from exchange.service.audit.tlog_push import TlogReply

MAX_ANSWER = 64 * 1024  # cosignature lines, or a size


async def _read_bounded(content: aiohttp.StreamReader) -> bytes:
    """The answer to its end, or its first MAX_ANSWER + 1 bytes if it is longer (then refused).

    One `read(n)` returns only what has arrived so far: an answer that comes in several chunks (a
    chunked encoding, or TCP segments read as they come) would be cut and then fail to parse.
    """
    answer = bytearray()
    while len(answer) <= MAX_ANSWER:
        chunk = await content.read(MAX_ANSWER + 1 - len(answer))
        if not chunk:  # the end of the answer
            break
        answer += chunk
    return bytes(answer)


class HttpTlogClient:
    def __init__(self, timeout_seconds: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    async def post(self, url: str, body: bytes, ca_file: Path | None) -> TlogReply:
        tls: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout, connector=aiohttp.TCPConnector(ssl=tls)) as session,
                session.post(url, data=body, allow_redirects=False) as resp,
            ):
                answer = await _read_bounded(resp.content)
                if len(answer) > MAX_ANSWER:
                    raise PeerError(f"C2SP witness {url[:200]} answered more than {MAX_ANSWER} bytes")
                return TlogReply(resp.status, resp.content_type, answer)
        except (TimeoutError, aiohttp.ClientError, OSError, ssl.SSLError) as exc:
            raise PeerError(f"C2SP witness {url[:200]} unreachable: {type(exc).__name__}") from exc
