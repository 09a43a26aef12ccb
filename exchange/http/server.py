"""The node's HTTP server: aiohttp's connection handler with deadlines on reading a request,
open connections counted per client address and per partner node, and problem+json for what
aiohttp's parser refuses before any middleware.

aiohttp reads requests itself: it limits line and header sizes and closes idle keep-alive
connections, but has no timeout on a request's head or body, so a client that sends half a
request holds its connection for ever (slowloris); and a request it cannot parse (a line over
8 KB, malformed HTTP) gets its own text/plain answer. `GuardedHandler` adds the deadlines and
the counts and answers those with problem+json; `GuardedSite` serves it, and does the TLS
handshake itself (`loop.start_tls`) so that connections still in theirs are counted per client
address and in all, and a refused or timed-out handshake is counted too. Every refusal here is
counted in the audit's `requests.refused` entries (exchange.service.rejections). Request rates
are `exchange.http.limits`.

The handler relies on two internals of aiohttp's `RequestHandler`, `_messages` (the parsed,
not yet handled requests) and the parse-error record it queues; `constraints.txt` pins aiohttp,
and tests/node/test_limits.py drives every path with real sockets.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader

from exchange.config import NodeConfig
from exchange.errors import RequestTimeout
from exchange.http.handshake import Handshakes
from exchange.http.limits import peer_key
from exchange.http.problem import problem
from exchange.service.rejections import client_key

log = logging.getLogger("exchange.node")

Refused = Callable[[str | None, int, str, str], None]  # (client address, status, reason, sample)
# Client addresses (`client_key`) each roster partner connected from, remembered (the oldest
# forgotten): a partner's stolen key used from many addresses makes no more of them than this.
PARTNER_ADDRESSES = 8
# What the roster names (exchange.node.tls.roster_addresses): the client addresses of its endpoints
# given as IP addresses, and the nodes it lists as active; the same object until the roster changes.
Listed = tuple[frozenset[str], frozenset[str]]
_NOBODY: Listed = (frozenset(), frozenset())


@dataclass(frozen=True)
class ServerLimits:
    """Timeouts, sizes and connection counts of the node's HTTP server (see NodeConfig)."""

    header_timeout: float = 10.0
    body_timeout: float = 120.0
    read_timeout: float = 30.0
    keepalive_timeout: float = 120.0
    max_header_bytes: int = 8190
    max_head_bytes: int = 65536
    max_connections_per_address: int = 128
    max_connections_per_peer: int = 32
    max_connections: int = 1024

    @classmethod
    def from_config(cls, config: NodeConfig) -> ServerLimits:
        return cls(
            header_timeout=config.header_timeout_seconds,
            body_timeout=config.body_timeout_seconds,
            read_timeout=config.read_timeout_seconds,
            keepalive_timeout=config.keepalive_timeout_seconds,
            max_header_bytes=config.max_header_bytes,
            max_head_bytes=config.max_head_bytes,
            max_connections_per_address=config.max_connections_per_address,
            max_connections_per_peer=config.max_connections_per_peer,
            max_connections=config.max_connections,
        )


class ConnectionGuard:
    """Open connections per client address and per partner node, and where refusals are counted."""

    def __init__(
        self,
        limits: ServerLimits | None = None,
        refused: Refused | None = None,
        identify: Callable[[bytes], str | None] | None = None,
        listed: Callable[[], Listed] | None = None,
    ) -> None:
        self.limits = limits or ServerLimits()
        self.refused: Refused = refused or (lambda address, status, reason, sample: None)
        # The roster node whose certificate (DER) a client presented, or None if the roster lists
        # none: a certificate that chains to a roster one is not a roster node's for that (each
        # node's certificate can sign others). Without it (tests of this module), the certificate's hash.
        self.identify = identify
        self._open: Counter[str] = Counter()
        self._clients = 0  # connections without a roster certificate, from every address
        # Connections in their TLS handshake, per client address and in all: nobody knows yet
        # whether they are a partner's, so partners' count here too, and a flood of clients that
        # never finish theirs holds a place no longer than the handshake timeout.
        self._shaking: Counter[str] = Counter()
        self._total = 0
        # Handshakes from partners' addresses (`partner_address`): not held to `max_connections`,
        # so a flood from many other addresses cannot keep a partner from reaching this node; each
        # such address is still held to `max_connections_per_address`. An address that stops
        # being a partner's has its handshakes under way counted as strangers' from then on.
        self._partner_shaking: Counter[str] = Counter()
        self._partner_total = 0
        self._seen_from: dict[str, dict[str, None]] = {}  # per partner, where it connected from, oldest first
        self._seen: Counter[str] = Counter()  # those addresses, and by how many partners
        self._listed = listed or (lambda: _NOBODY)
        self._held: Listed = _NOBODY  # the roster's endpoint addresses and listed nodes, as last read

    def _roster(self) -> Listed:
        """The roster's endpoint addresses and listed nodes; on a change, partners no longer
        listed and their addresses are forgotten."""
        listed = self._listed()
        if listed is not self._held:
            before, self._held = self._held, listed
            for node in [n for n in self._seen_from if n not in listed[1]]:
                for address in self._seen_from.pop(node):
                    self._unseen(address)
            for address in before[0] - listed[0]:
                self._forget(address)
        return listed

    def partner_address(self, key: str) -> bool:
        """Whether a listed roster partner connected from `key`, or the roster names it as an endpoint."""
        endpoints = self._roster()[0]  # first: a roster change forgets partners no longer listed
        return key in self._seen or key in endpoints

    def partner_seen(self, node: str, key: str) -> None:
        """Partner `node` connected from `key`: handshakes from there get a place from now on."""
        if node not in self._roster()[1]:
            return
        mine = self._seen_from.setdefault(node, {})
        if key in mine:
            del mine[key]
        else:
            self._seen[key] += 1
        mine[key] = None
        if len(mine) > PARTNER_ADDRESSES:
            oldest = next(iter(mine))
            del mine[oldest]
            self._unseen(oldest)

    def _unseen(self, address: str) -> None:
        self._seen[address] -= 1
        if self._seen[address] <= 0:
            del self._seen[address]
            self._forget(address)

    def _forget(self, address: str) -> None:
        """`address` may no longer be a partner's: its handshakes under way count as strangers'."""
        if address not in self._seen and address not in self._held[0]:
            self._partner_total -= self._partner_shaking.pop(address, 0)

    def shake(self, key: str) -> bool:
        """Count one more connection in its TLS handshake from `key`, or False past a limit."""
        limits = self.limits
        if self._shaking[key] >= limits.max_connections_per_address:
            return False
        partner = self.partner_address(key)
        if not partner and self._total - self._partner_total >= limits.max_connections:
            return False
        self._shaking[key] += 1
        self._total += 1
        if partner:
            self._partner_shaking[key] += 1
            self._partner_total += 1
        return True

    def shaken(self, key: str) -> None:
        """A handshake from `key` ended: the connection is counted as `open` from now on, or is gone."""
        self._shaking[key] -= 1
        self._total -= 1
        if self._shaking[key] <= 0:
            del self._shaking[key]
        if self._partner_shaking[key] > 0:
            self._partner_shaking[key] -= 1
            self._partner_total -= 1
        if self._partner_shaking[key] <= 0:
            del self._partner_shaking[key]

    def handshakes(self, key: str | None = None) -> int:
        """How many connections are in their TLS handshake from `key`, or in all."""
        return self._total if key is None else self._shaking[key]

    def open(self, key: str, peer: bool) -> bool:
        """Count one more connection under `key`, or False if that is past a limit."""
        limits = self.limits
        if peer:
            if self._open[key] >= limits.max_connections_per_peer:
                return False
        elif self._open[key] >= limits.max_connections_per_address or self._clients >= limits.max_connections:
            return False
        self._open[key] += 1
        self._clients += not peer
        return True

    def close(self, key: str, peer: bool) -> None:
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]
        self._clients -= not peer

    def connections(self, key: str) -> int:
        """How many connections are open under `key` (a client address, or a partner's key)."""
        return self._open[key]


def raw_problem(status: int, detail: str, retry_after: int | None = None) -> bytes:
    """A whole problem+json HTTP response that closes the connection, for when no request exists."""
    title = HTTPStatus(status).phrase
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()
    head = [
        f"HTTP/1.1 {status} {title}",
        "Content-Type: application/problem+json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class GuardedHandler(web.RequestHandler):
    """aiohttp's connection handler, with deadlines on reading a request and a connection count.

    - The request line and headers must arrive within `header_timeout` of their first byte (of the
      connection's opening, for the first request); else the node answers 408 and closes.
    - A body must arrive within `body_timeout` in all, with no gap longer than `read_timeout`;
      else whoever reads it gets RequestTimeout (408) and the connection closes after the answer.
    - Past a connection limit, the client gets 429 at once and the connection closes.
    - A request aiohttp cannot parse gets 414 (request line too long), 431 (a header too long,
      too many, or all together over `max_head_bytes`) or 400, as problem+json.
    """

    def __init__(
        self, manager: web.Server, guard: ConnectionGuard, *, loop: asyncio.AbstractEventLoop, **kwargs: Any
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._guard = guard
        self._limits = guard.limits
        self._event_loop = loop
        self._address: str | None = None
        self._key: str | None = None  # what the connection is counted under, once let in
        self.peer_key: str | None = None  # "peer:<node id>" for a roster node's connection (rate limits)
        self._peer = False
        self._timer: asyncio.TimerHandle | None = None
        self._head_since: float | None = None  # when the head being read began
        self._head_bytes = 0
        self._line_bytes = 0  # of the head being read, before its first line feed
        self._line_done = False
        self._body: StreamReader | None = None  # the body being read
        self._body_since = 0.0
        self._last_read = 0.0
        self._parsed = 0  # requests parsed (or refused by the parser) ...
        self._finished = 0  # ... and answered: a request is under way while they differ
        self._parse_refusal: tuple[int, str, str] | None = None

    # -- the connection ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peername = transport.get_extra_info("peername")
        self._address = str(peername[0]) if peername else None
        peer = peer_key(transport)
        if peer is not None and self._guard.identify is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            node = self._guard.identify(ssl_object.getpeercert(binary_form=True))
            if node is None:
                self._key = None
                self._refuse(403, "certificate not in the roster", "the client certificate is not one the roster lists")
                return
            peer = f"peer:{node}"  # a node's active and retiring certificates share its budget
            self._guard.partner_seen(node, client_key(self._address))
        self.peer_key = peer
        self._peer = peer is not None
        key = peer or client_key(self._address)
        if not self._guard.open(key, self._peer):
            self._refuse(429, "too many connections", "too many open connections from this client", retry_after=1)
            return
        self._key = key
        self._head_since = self._event_loop.time()
        self._arm(self._head_since + self._limits.header_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._key is not None:
            self._guard.close(self._key, self._peer)
            self._key = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._key is None or self.transport is None:  # refused, or closing
            return
        now = self._event_loop.time()
        self._last_read = now
        if self._body is not None and self._body.is_eof():
            self._body = None
        if self._body is None and data:
            # Not for no bytes: aiohttp calls this with b"" after each answer, to parse what a client
            # pipelined; a head begins with its first byte, not with an idle kept-alive connection.
            if self._head_since is None:
                self._head_since = now
                self._arm(now + self._limits.header_timeout)
            end = data.find(b"\r\n\r\n")  # what follows the head is body, or the next request
            self._head_bytes += len(data) if end < 0 else end + 4
            if not self._line_done:
                end = data.find(b"\n")
                self._line_bytes += len(data) if end < 0 else end
                self._line_done = end >= 0
            if self._head_bytes > self._limits.max_head_bytes:
                detail = f"the request line and headers are longer than {self._limits.max_head_bytes} bytes"
                self._refuse(431, "head too large", detail)
                return
        before = len(self._messages)
        super().data_received(data)
        parsed = list(itertools.islice(self._messages, before, None))
        if parsed:
            self._parsed += len(parsed)
            for message, _ in parsed:
                exc = getattr(message, "exc", None)  # aiohttp queues a parse error as a message with .exc
                if isinstance(exc, HttpProcessingError):
                    self._parse_refusal = self._classify(exc)
            payload = parsed[-1][1]
            self._head_since, self._head_bytes, self._line_bytes, self._line_done = None, 0, 0, False
            if payload.is_eof():
                self._body = None
            else:
                self._body, self._body_since = payload, now
                self._arm(now + min(self._limits.body_timeout, self._limits.read_timeout))
        elif self._body is not None and self._body.is_eof():
            self._body = None

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._finished += 1

    # -- deadlines ---------------------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        """Make sure the deadline check runs no later than `when`."""
        if self._timer is not None:
            if self._timer.when() <= when:
                return
            self._timer.cancel()
        self._timer = self._event_loop.call_at(when, self._check)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self._key is None or self.transport is None:
            return
        now, limits = self._event_loop.time(), self._limits
        if self._body is not None and not self._body.is_eof():
            due = min(self._body_since + limits.body_timeout, self._last_read + limits.read_timeout)
            if now < due:
                self._arm(due)
                return
            body, self._body = self._body, None
            body.set_exception(
                RequestTimeout(
                    f"the request body did not arrive within {limits.body_timeout:g} s, "
                    f"or paused for more than {limits.read_timeout:g} s"
                )
            )
            return
        self._body = None
        if self._head_since is not None:
            due = self._head_since + limits.header_timeout
            if now < due:
                self._arm(due)
                return
            detail = f"the request line and headers did not arrive within {limits.header_timeout:g} s"
            self._refuse(408, "header timeout", detail)

    def _refuse(self, status: int, reason: str, detail: str, retry_after: int | None = None) -> None:
        """Count a refusal, answer it if no other answer is under way, and close the connection."""
        self._disarm()
        self._guard.refused(self._address, status, reason, "")
        if self.transport is not None and self._parsed == self._finished:
            self.transport.write(raw_problem(status, detail, retry_after))
        log.debug("closed a connection from %s: %s", self._address, reason)
        self.force_close()

    # -- what aiohttp refuses itself -----------------------------------------------------------------

    def _classify(self, exc: HttpProcessingError) -> tuple[int, str, str]:
        limit = self._limits.max_header_bytes
        if isinstance(exc, LineTooLong):
            if not self._line_done or self._line_bytes > limit:
                return 414, "request line too long", f"the request line is longer than {limit} bytes"
            return 431, "header too long", f"a header is longer than {limit} bytes"
        if "too many headers" in str(exc.message).lower():
            return 431, "too many headers", "the request has too many headers"
        return 400, "malformed request", "the request is not valid HTTP/1.1"

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """problem+json for what the parser refused (counted as a refusal), and for the rare error
        that escapes the node's middleware; never aiohttp's text/plain."""
        if request.writer.output_size > 0:  # as aiohttp: an answer is on its way, nothing more can be said
            raise ConnectionError("a response was sent already")
        refusal, self._parse_refusal = self._parse_refusal, None
        if isinstance(exc, HttpProcessingError):
            status, reason, detail = refusal or (400, "malformed request", "the request is not valid HTTP/1.1")
            self._guard.refused(self._address, status, reason, "")
            log.debug("refused a request from %s that does not parse: %s", self._address, reason)
        elif isinstance(exc, ConnectionError | RequestTimeout):
            detail = "the connection ended before the request did"
        elif status == 504:
            detail = "the node did not answer in time"
        else:
            log.error("error handling a request from %s", self._address, exc_info=exc)
            detail = "the node could not handle this request"
        response = problem(status, HTTPStatus(status).phrase, detail)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """A body that timed out, or a client that went away, is no error of the node's."""
        if isinstance(kw.get("exc_info"), ConnectionError | RequestTimeout):
            self.log_debug(*args, **kw)
        else:
            super().log_exception(*args, **kw)


class GuardedSite(web.BaseSite):
    """A TCP site (as aiohttp's `TCPSite`) whose connections are `GuardedHandler`s, and whose TLS
    handshakes are counted and must end within the header timeout."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        guard: ConnectionGuard,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 128,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._site_runner = runner
        self._host, self._port, self._tls, self._queue = host, port, ssl_context, backlog
        self._reuse_port = reuse_port  # several worker processes on one port (SO_REUSEPORT)
        self.guard = guard
        self._handshakes: Handshakes | None = None

    @property
    def name(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._site_runner.server
        assert server is not None, "the runner is set up before its site starts"
        loop = asyncio.get_running_loop()
        limits = self.guard.limits

        def connection() -> GuardedHandler:
            return GuardedHandler(
                server,
                self.guard,
                loop=loop,
                access_log=None,
                keepalive_timeout=limits.keepalive_timeout,
                max_line_size=limits.max_header_bytes,
                max_field_size=limits.max_header_bytes,
            )

        accept: Callable[[], asyncio.BaseProtocol] = connection
        if self._tls is not None:
            self._handshakes = Handshakes(self.guard, self._tls, limits.header_timeout, connection)
            accept = self._handshakes.accept
        self._server = await loop.create_server(
            accept, self._host, self._port, backlog=self._queue, reuse_port=self._reuse_port or None
        )

    async def stop(self) -> None:
        await super().stop()
        if self._handshakes is not None:
            await self._handshakes.stop()


__all__ = ["ConnectionGuard", "GuardedHandler", "GuardedSite", "Refused", "ServerLimits", "raw_problem"]
