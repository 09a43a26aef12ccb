"""The webhooks' HTTP client (exchange.service.webhooks.WebhookSender): a POST to an
administrator's URL, verified with the system's certificate authorities, no redirects followed."""

from __future__ import annotations

import aiohttp

from exchange.errors import PeerError

TIMEOUT = aiohttp.ClientTimeout(total=10)


class HttpWebhookSender:
    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        try:
            async with (
                aiohttp.ClientSession(timeout=TIMEOUT) as session,
                session.post(url, data=body, headers=headers, allow_redirects=False) as resp,
            ):
                # Only the status counts: the answer's body is never read (a receiver could send
                # gigabytes of it within the timeout), and the connection is closed with the session.
                return resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise PeerError(f"webhook {url[:200]} unreachable: {type(exc).__name__}") from exc
