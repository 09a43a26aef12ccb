"""Request rates: what one client may ask of a node in a second, shared by the API and the
console, which one aiohttp app serves.

Token buckets per API token or console session, per partner node (by its roster certificate),
and per client address for requests that carry no credential known to be good, so that
made-up tokens buy an attacker nothing. Past one: `RateLimited`, 429 with `Retry-After`.
Timeouts and connection limits are the server's (`exchange.http.server`).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from exchange.config import NodeConfig
from exchange.errors import RateLimited
from exchange.http.appkeys import USER
from exchange.service.rejections import client_key

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

RETRY_AFTER: web.RequestKey[int] = web.RequestKey("retry_after", int)  # set on a request refused with 429


# -- request rates ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """A token bucket: `per_second` sustained, up to `burst` at once."""

    per_second: float
    burst: int


@dataclass(frozen=True)
class RateSettings:
    token: Rate = Rate(200.0, 2000)
    peer: Rate = Rate(200.0, 2000)
    address: Rate = Rate(20.0, 200)
    max_keys: int = 10_000  # buckets kept of each kind; the least recently used are forgotten first

    @classmethod
    def from_config(cls, config: NodeConfig) -> RateSettings:
        return cls(
            token=Rate(config.rate_per_token, config.burst_per_token),
            peer=Rate(config.rate_per_peer, config.burst_per_peer),
            address=Rate(config.rate_per_address, config.burst_per_address),
        )


class Buckets:
    """Token buckets of one kind, by key, in bounded memory."""

    def __init__(self, rate: Rate, max_keys: int, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.max_keys = max_keys
        self.clock = clock
        self._levels: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, when)

    def _level(self, key: str) -> float:
        now = self.clock()
        tokens, when = self._levels.pop(key, (float(self.rate.burst), now))
        return min(float(self.rate.burst), tokens + (now - when) * self.rate.per_second)

    def _store(self, key: str, tokens: float) -> None:
        self._levels[key] = (tokens, self.clock())
        if len(self._levels) > self.max_keys:
            self._levels.popitem(last=False)

    def take(self, key: str) -> float:
        """0 if one more request may go now (it is taken), else the seconds until one may."""
        tokens = self._level(key)
        if tokens >= 1:
            self._store(key, tokens - 1)
            return 0.0
        self._store(key, tokens)
        return (1 - tokens) / self.rate.per_second

    def give_back(self, key: str) -> None:
        if key in self._levels:
            self._store(key, min(float(self.rate.burst), self._level(key) + 1))


@dataclass(frozen=True)
class Ticket:
    """What a request was charged to: a partner, a known credential's user, or its address."""

    credential: str | None
    address: str | None  # set when the address paid, so that it is paid back if the request authenticates
    user: str | None = None  # set when the user a known credential authenticated before paid


class RateLimiter:
    """The node's request rates: per partner node, per known credential, else per client address.

    A credential (an `Authorization` header or a console session cookie) becomes known once a
    request that carried it authenticated a local user; until then its requests are charged to
    their address, and paid back to the address once they authenticate, if their user's bucket
    has room (so new credentials of an exhausted user cost their address). A known credential's
    requests are charged to the **user** it authenticated, so that every spelling of a token, and
    every credential sent beside a session, shares that user's one bucket; a known credential that
    no longer authenticates its user (a rotated token, an ended session) is forgotten at its first
    refusal, and each of its requests charged to that user is paid back to it (`settle`).
    """

    def __init__(
        self,
        settings: RateSettings | None = None,
        credential_cookies: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings or RateSettings()
        self.cookies = tuple(credential_cookies)
        self.tokens = Buckets(self.settings.token, self.settings.max_keys, clock)
        self.peers = Buckets(self.settings.peer, self.settings.max_keys, clock)
        self.addresses = Buckets(self.settings.address, self.settings.max_keys, clock)
        self._known: OrderedDict[str, str] = OrderedDict()  # credential hash -> the user it authenticated

    def _credential(self, request: web.Request) -> str | None:
        sent = request.headers.get("Authorization")
        if sent is None:
            sent = next((f"{n}={request.cookies[n]}" for n in self.cookies if request.cookies.get(n)), None)
        return None if sent is None else hashlib.sha256(sent.encode(errors="surrogateescape")).hexdigest()

    def admit(self, request: web.Request) -> Ticket:
        """Charge the request to its bucket, or raise RateLimited (429) with the seconds to wait."""
        # The node the connection's guard identified by the roster (GuardedHandler), else by hash.
        known = getattr(request.protocol, "peer_key", None)
        peer = known if isinstance(known, str) else peer_key(request.transport)
        if peer is not None:
            wait, what, ticket = self.peers.take(peer), "this partner node", Ticket(None, None)
        else:
            credential = self._credential(request)
            user = self._known.get(credential) if credential is not None else None
            if credential is not None and user is not None:
                self._known.move_to_end(credential)
                wait, what, ticket = self.tokens.take(user), "this user", Ticket(credential, None, user)
            else:
                address = client_key(request.remote)
                wait, what, ticket = self.addresses.take(address), "this address", Ticket(credential, address)
        if wait > 0:
            retry = math.ceil(wait)
            request[RETRY_AFTER] = retry
            raise RateLimited(f"too many requests from {what}; retry in {retry} s", retry_after=retry)
        return ticket

    def settle(self, request: web.Request, ticket: Ticket) -> None:
        """After the handler: a request that authenticated moves its charge to its user; a known
        credential that did not authenticate its user again (a rotated token, an ended session)
        is forgotten, and the request is paid back to that user and charged where it belongs now,
        as a new credential's is: so that requests sent at once with it, all admitted before the
        first is refused, never spend the budget of a user it no longer authenticates."""
        user: str | None = request.get(USER)
        if ticket.credential is None:
            return
        address = ticket.address
        if ticket.user is not None:  # charged to the user a known credential authenticated before
            if user == ticket.user:
                return
            self.tokens.give_back(ticket.user)
            if self._known.get(ticket.credential) == ticket.user:
                del self._known[ticket.credential]
            address = client_key(request.remote)
            self.addresses.take(address)  # after the fact (it was served): its address's next ones wait
        if user is None or address is None:
            return
        if self.tokens.take(user) == 0:  # else the user's bucket is empty: the address keeps the charge
            self.addresses.give_back(address)
        self._known[ticket.credential] = user
        if len(self._known) > self.settings.max_keys:
            self._known.popitem(last=False)


def rate_limits(limiter: RateLimiter) -> Middleware:
    """The middleware that applies `limiter` to every request, API and console alike."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        ticket = limiter.admit(request)
        try:
            return await handler(request)
        finally:
            limiter.settle(request, ticket)

    return middleware


def peer_key(transport: asyncio.BaseTransport | None) -> str | None:
    """The partner behind a connection, by its certificate's hash: TLS let it through only if the
    roster lists it. None for a client without a certificate."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return "peer:" + hashlib.sha256(der).hexdigest() if der else None


__all__ = ["RETRY_AFTER", "Buckets", "Rate", "RateLimiter", "RateSettings", "Ticket", "peer_key", "rate_limits"]
