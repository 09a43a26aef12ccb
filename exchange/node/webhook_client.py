"""The webhooks' HTTP client (exchange.service.webhooks.WebhookSender): a POST to an
administrator's URL, verified with the system's certificate authorities, no redirects followed,
never to a link-local, unspecified or multicast address, whatever the host name resolves to."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from exchange.errors import PeerError
from exchange.service.webhooks import shown_url, unreachable_address

TIMEOUT = aiohttp.ClientTimeout(total=10)


class ReachableOnly(AbstractResolver):
    """The addresses a host name resolves to, but those no webhook may reach: a name that an
    administrator (or its DNS) points at 169.254.169.254 is refused where the connection is made,
    so a later answer of the DNS cannot change what was checked."""

    def __init__(self, *, loopback_only: bool = False) -> None:
        self._resolver = ThreadedResolver()  # the system's resolver (getaddrinfo), as aiohttp's default
        # A plain-http URL is taken for `localhost` only (exchange.service.webhooks.check_url): its
        # addresses must be loopback ones, whatever /etc/hosts or the DNS answer for the name.
        self.loopback_only = loopback_only

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = [r for r in await self._resolver.resolve(host, port, family) if not unreachable_address(r["host"])]
        if self.loopback_only:
            found = [r for r in found if ipaddress.ip_address(r["host"].split("%", 1)[0]).is_loopback]
        if not found:
            raise OSError(
                f"{host} resolves only to addresses no webhook may reach (link-local, unspecified, multicast"
                + (", or not loopback for plain http)" if self.loopback_only else ")")
            )
        return found

    async def close(self) -> None:
        await self._resolver.close()


class HttpWebhookSender:
    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        host = urlsplit(url).hostname or ""
        if unreachable_address(host):  # a literal address is not resolved: judged here (a URL stored before this check)
            raise PeerError(f"webhook {shown_url(url)[:200]} names an address no webhook may reach")
        plain = urlsplit(url).scheme == "http"
        connector: Any = aiohttp.TCPConnector(resolver=ReachableOnly(loopback_only=plain))
        try:
            async with (
                aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session,
                session.post(url, data=body, headers=headers, allow_redirects=False) as resp,
            ):
                # Only the status counts: the answer's body is never read (a receiver could send
                # gigabytes of it within the timeout), and the connection is closed with the session.
                return resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise PeerError(f"webhook {shown_url(url)[:200]} unreachable: {type(exc).__name__}") from exc
