"""The addresses the roster's host-name endpoints resolve to, for the server's connection guard.

A partner's handshakes get a place past `max_connections` when they come from an address the
guard knows as a partner's (exchange.http.guard): one the roster names as an endpoint IP, or one
the partner connected from since this node started. A partner whose endpoint is a host name, as
most are, was known only from its first connection on, so after a restart during a flood of
handshakes it waited like any client. Its endpoint's addresses, looked up here in the background,
give it a place from the start: they are where a partner that serves from the host it connects
from connects from. DNS is not authenticated: whoever answers for a partner's name can name
addresses that get such places. At most PARTNER_ADDRESSES addresses per name are kept (an IPv6
/64 each, as `client_key` counts them), beside the as many a partner may be remembered
connecting from, and each stays held to its per-address limit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from urllib.parse import urlsplit

from exchange.clock import cancel_and_wait
from exchange.http.guard import PARTNER_ADDRESSES
from exchange.protocol.roster import Federation

log = logging.getLogger("exchange.node")

RESOLVE_EVERY = 600.0  # seconds between two look-ups of the same roster version's names
RETRY_EVERY = 30.0  # ... when a name did not resolve at the last one
CHECK_EVERY = 5.0  # how often the roster is looked at for a new version
RESOLVE_TIMEOUT = 5.0  # per name, once its look-up has begun
AT_ONCE = 4  # look-ups under way at a time: they take threads of the loop's default executor


class EndpointNames:
    """The client addresses (`client_key`) of the listed nodes' host-name endpoints, as last
    resolved; called by `roster_addresses` (exchange.node.tls), which adds them to the roster's
    endpoint IPs. A new frozenset whenever a look-up gives another set."""

    def __init__(
        self,
        fed: Federation,
        *,
        every: float = RESOLVE_EVERY,
        check: float = CHECK_EVERY,
        timeout: float = RESOLVE_TIMEOUT,
    ) -> None:
        self.fed = fed
        self.every = every
        self.check = check
        self.timeout = timeout
        self.addresses: frozenset[str] = frozenset()
        self.failed = 0  # names that did not resolve at the last look-up (their last answer is kept)
        self._by_name: dict[str, list[str]] = {}
        self._task: asyncio.Task[None] | None = None

    def __call__(self) -> frozenset[str]:
        return self.addresses

    def names(self) -> list[str]:
        """The host names of the listed nodes' endpoints; IP literals are `roster_addresses`'s."""
        out: dict[str, None] = {}
        for node in self.fed.roster.nodes:
            host = urlsplit(node.endpoint).hostname or ""
            if not host or not self.fed.listed(node.id):
                continue
            try:
                ipaddress.ip_address(host)
            except ValueError:
                out[host] = None
        return list(out)

    async def resolve(self) -> frozenset[str]:
        """Look every name up now, a few at a time, each within `timeout`. A name that does not
        resolve keeps the addresses of its last answer (a resolver down for a moment takes no
        partner's place away); one never resolved adds nothing."""
        # Here, not at the top: the service layer must stay out of the offline verifier, which
        # imports exchange.node.tls (tests/test_audit.py); this module is the node's only.
        from exchange.service.rejections import client_key

        loop = asyncio.get_running_loop()
        turns = asyncio.Semaphore(AT_ONCE)

        async def one(host: str) -> list[str] | None:
            async with turns:
                try:
                    found = await asyncio.wait_for(loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), self.timeout)
                except (OSError, TimeoutError, UnicodeError) as exc:
                    log.info("endpoint %s not resolved: %s", host, exc)
                    return None
            keys = dict.fromkeys(client_key(str(info[4][0])) for info in found)
            return list(keys)[:PARTNER_ADDRESSES]

        names = self.names()
        got = await asyncio.gather(*(one(host) for host in names))
        self.failed = sum(found is None for found in got)
        kept = self._by_name
        answers = (found if found is not None else kept.get(host, []) for host, found in zip(names, got, strict=True))
        self._by_name = {host: found for host, found in zip(names, answers, strict=True) if found}
        addresses = frozenset(a for found in self._by_name.values() for a in found)
        if addresses != self.addresses:
            self.addresses = addresses
        return self.addresses

    async def run(self) -> None:
        """Resolve at start, when the roster changes, and every `every` seconds (every RETRY_EVERY
        while a name does not resolve)."""
        roster, at = None, 0.0
        while True:
            every = min(self.every, RETRY_EVERY) if self.failed else self.every
            if self.fed.roster is not roster or time.monotonic() - at >= every:
                roster, at = self.fed.roster, time.monotonic()
                try:
                    await self.resolve()
                except Exception:  # never the end of the loop: the next round retries
                    log.exception("resolving the roster's endpoint names failed")
            await asyncio.sleep(self.check)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="endpoint-names")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)


__all__ = ["EndpointNames"]
