"""TLS handshakes that the node's server does itself, so that connections still in theirs are
counted per client address and in all, and a handshake refused or timed out is counted as a refusal.

asyncio's `create_server(ssl=...)` hands a connection to its protocol only once its handshake is
over, and says nothing of one that fails (outside debug mode): a client that opens connections and
sends nothing held a socket and TLS state for each, up to the handshake timeout, counted nowhere.
Here the server listens on plain TCP, counts the connection (`HandshakeGuard.shake`), upgrades it
with `loop.start_tls`, and then gives it to its handler, which counts it as a client's or a
partner's (exchange.http.server).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Protocol

from exchange.http.guard import Shake
from exchange.service.rejections import client_key

log = logging.getLogger("exchange.node")


class HandshakeGuard(Protocol):
    """What counts connections in their handshake (exchange.http.server.ConnectionGuard)."""

    refused: Callable[[str | None, int, str, str], None]

    def shake(self, key: str) -> Shake | None: ...

    def shaken(self, shake: Shake) -> None: ...


class Handshakes:
    """The TLS handshakes of one listening socket's connections, each counted until it ends."""

    def __init__(
        self,
        guard: HandshakeGuard,
        context: ssl.SSLContext,
        timeout: float,
        handler: Callable[[], asyncio.Protocol],
    ) -> None:
        self._guard, self._context, self._timeout, self._handler = guard, context, timeout, handler
        self._tasks: set[asyncio.Task[None]] = set()

    def accept(self) -> asyncio.Protocol:
        """The protocol of a new TCP connection (a factory for `loop.create_server`)."""
        return _Accepted(self)

    def begin(self, transport: asyncio.Transport) -> None:
        peername = transport.get_extra_info("peername")
        address = str(peername[0]) if peername else None
        key = client_key(address)
        shake = self._guard.shake(key)
        if shake is None:
            self._guard.refused(address, 429, "too many TLS handshakes", "")
            log.debug("closed a connection from %s: too many TLS handshakes", address)
            transport.abort()
            return
        task = asyncio.get_running_loop().create_task(self._upgrade(transport, address, shake))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _upgrade(self, transport: asyncio.Transport, address: str | None, shake: Shake) -> None:
        guard, held = self._guard, _Held()
        try:
            # Our own deadline, not start_tls's (whose expiry is a ConnectionAbortedError like any
            # other), so that a timeout is told apart.
            async with asyncio.timeout(self._timeout):
                tls = await asyncio.get_running_loop().start_tls(
                    transport, held, self._context, server_side=True, ssl_shutdown_timeout=5.0
                )
        except TimeoutError:
            guard.refused(address, 408, "TLS handshake timeout", "")
            return
        except ssl.SSLError as exc:
            guard.refused(address, 403, "TLS handshake refused", "")
            log.debug("refused a TLS handshake from %s: %s", address, exc)
            return
        except OSError:  # the client went away (or reset the connection) during its handshake
            guard.refused(address, 400, "TLS handshake abandoned", "")
            return
        finally:
            guard.shaken(shake)  # and, below, the handler counts the connection as a client's or partner's
        if held.lost or tls is None:
            return
        # start_tls passes on what follows the handshake before it returns, and never calls the
        # protocol's connection_made: `held` kept that, and the handler takes over here.
        handler = self._handler()
        tls.set_protocol(handler)
        handler.connection_made(tls)
        for data in held.data:
            handler.data_received(data)
        if held.eof:
            handler.eof_received()

    async def stop(self) -> None:
        """Abandon the handshakes under way (the server is stopping)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class _Accepted(asyncio.Protocol):
    """A TCP connection before its TLS handshake."""

    def __init__(self, handshakes: Handshakes) -> None:
        self._handshakes = handshakes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # until start_tls reads it: else the ClientHello would be lost
        self._handshakes.begin(transport)


class _Held(asyncio.Protocol):
    """What a connection receives between the end of its TLS handshake and its handler's start."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.eof = self.lost = False

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> None:
        self.eof = True

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True


__all__ = ["HandshakeGuard", "Handshakes"]
