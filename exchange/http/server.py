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
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.streams import StreamReader

from exchange.errors import RequestTimeout
from exchange.http.guard import ConnectionGuard, Refused, ServerLimits
from exchange.http.handshake import Handshakes
from exchange.http.limits import peer_key
from exchange.http.problem import problem
from exchange.service.rejections import client_key

log = logging.getLogger("exchange.node")


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
