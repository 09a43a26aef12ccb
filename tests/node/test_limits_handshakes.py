"""Connections in their TLS handshake, on a real node (exchange.http.handshake): counted per client
address and in all before the handshake begins, closed at once past a limit, and every handshake
refused or timed out counted in the audit's `requests.refused` entries. Found by a read-only review:
the handshake was asyncio's, before the server counted anything, so one host's silent TCP
connections were held (300 of them, with a limit of 4 per address) and a failed handshake left no trace.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from pathlib import Path
from typing import Any

from exchange.crypto.tls import generate_tls_identity
from exchange.http.guard import PARTNER_ADDRESSES, ConnectionGuard, Listed, ServerLimits
from exchange.node.endpoint_names import EndpointNames
from exchange.node.tls import roster_addresses
from exchange.protocol.roster import Federation
from tests.conftest import MakeFederation, eventually
from tests.node.test_limits import (
    WHOAMI,
    counted,
    exchange_once,
    http as http,  # the fixture
    log_size,
    tls,
)

Silent = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def silent(host: str, port: int, source: str) -> Silent:
    """A TCP connection that never begins its TLS handshake."""
    return await asyncio.open_connection(host, port, local_addr=(source, 0))


async def test_silent_connections_past_the_limits_are_closed_at_once_and_counted(
    make_federation: MakeFederation, http: Any
) -> None:
    fed = await make_federation(
        options={"max_connections_per_address": 3, "max_connections": 6, "header_timeout_seconds": 60}
    )
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    assert nl.node is not None
    guard, host, port = nl.node.guard, nl.config.host, nl.config.port
    start = await log_size(nl)
    held = [await silent(host, port, "127.0.0.2") for _ in range(3)]

    async def three() -> bool:
        return guard.handshakes("127.0.0.2") == 3

    await eventually(three, what="three handshakes from 127.0.0.2")
    # Past the limit per address: closed at once (before, each was held for the handshake timeout).
    extra = [await silent(host, port, "127.0.0.2") for _ in range(5)]
    for reader, _ in extra:
        assert await asyncio.wait_for(reader.read(), 10) == b""
    assert all(not reader.at_eof() for reader, _ in held)
    # Meanwhile a partner is served, and a client from another address.
    async with http(nl, "127.0.0.5", peer=ke).get("/fed/v1/channels/c2c/events") as resp:
        assert resp.status == 200
    assert (await exchange_once(nl, WHOAMI, "127.0.0.3")).status == 401
    # Past the limit in all, from addresses each under theirs.
    held += [await silent(host, port, "127.0.0.3") for _ in range(3)]

    async def six() -> bool:
        return guard.handshakes() == 6

    await eventually(six, what="six handshakes in all")
    reader, writer = await silent(host, port, "127.0.0.4")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    for _, w in [*held, *extra, (reader, writer)]:
        w.close()

    async def released() -> bool:
        return guard.handshakes() == 0

    await eventually(released, what="the handshakes to be released")
    assert (await exchange_once(nl, WHOAMI, "127.0.0.2")).status == 401  # its place is free again
    refused = await counted(nl, start)
    assert refused["127.0.0.2"]["reasons"] == {"429 too many TLS handshakes": 5, "400 TLS handshake abandoned": 3}
    assert refused["127.0.0.4"]["reasons"] == {"429 too many TLS handshakes": 1}


async def test_a_flood_of_handshakes_from_many_addresses_does_not_shut_out_a_partner(
    make_federation: MakeFederation, http: Any
) -> None:
    """Partners are known only once their handshake is done, so handshakes from enough addresses,
    each under its own limit, took every place (`max_connections`) and a partner's new connection
    was closed with theirs. An address a partner connected from (or that the roster names as an
    endpoint) now gets a place past that total, still held to its own per-address limit."""
    fed = await make_federation(
        options={"max_connections_per_address": 3, "max_connections": 4, "header_timeout_seconds": 60}
    )
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    assert nl.node is not None
    guard, host, port = nl.node.guard, nl.config.host, nl.config.port
    async with http(nl, "127.0.0.5", peer=ke).get("/fed/v1/channels/c2c/events") as resp:
        assert resp.status == 200  # ke-customs connects from 127.0.0.5: remembered
    flood = [await silent(host, port, "127.0.0.2") for _ in range(3)] + [await silent(host, port, "127.0.0.3")]

    async def full() -> bool:
        return guard.handshakes() == 4

    await eventually(full, what="four handshakes from two addresses")
    reader, writer = await silent(host, port, "127.0.0.4")  # a fifth address: no place
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    async with http(nl, "127.0.0.5", peer=ke).get("/fed/v1/channels/c2c/events") as resp:
        assert resp.status == 200  # a new connection from the partner's address gets through
    # The partner's address is still held to its own limit.
    mine = [await silent(host, port, "127.0.0.5") for _ in range(3)]

    async def three() -> bool:
        return guard.handshakes("127.0.0.5") == 3

    await eventually(three, what="three handshakes from 127.0.0.5")
    reader, writer = await silent(host, port, "127.0.0.5")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    for _, w in [*flood, *mine, (reader, writer)]:
        w.close()


async def test_a_handshake_refused_or_timed_out_is_counted(make_federation: MakeFederation, tmp_path: Path) -> None:
    fed = await make_federation(options={"header_timeout_seconds": 1})
    nl = fed["nl-customs"]
    assert nl.node is not None
    start = await log_size(nl)
    # A client certificate outside the roster: the handshake fails (TLS 1.3: the server says so
    # after the client thinks it is done, so the client sees it on reading).
    key, cert = generate_tls_identity("outsider", dt.datetime.now(dt.UTC))
    (tmp_path / "outsider.key").write_bytes(key)
    (tmp_path / "outsider.crt").write_bytes(cert)
    ctx = tls(nl)
    ctx.load_cert_chain(tmp_path / "outsider.crt", tmp_path / "outsider.key")
    try:
        reader, writer = await asyncio.open_connection(
            nl.config.host, nl.config.port, ssl=ctx, local_addr=("127.0.0.3", 0)
        )
    except (ssl.SSLError, ConnectionError):
        pass
    else:
        writer.write(WHOAMI)
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            assert await asyncio.wait_for(reader.read(), 10) == b""  # nothing answered
        writer.close()
    # A connection that never begins its handshake: closed after the timeout, and counted.
    reader, writer = await silent(nl.config.host, nl.config.port, "127.0.0.4")
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()

    async def both() -> bool:
        return nl.service.refusals.pending() >= 2

    await eventually(both, what="both refusals to be counted")
    refused = await counted(nl, start)
    assert refused["127.0.0.3"]["reasons"] == {"403 TLS handshake refused": 1}
    assert refused["127.0.0.4"]["reasons"] == {"408 TLS handshake timeout": 1}


def test_a_partner_frees_at_most_a_few_of_its_addresses_from_the_total() -> None:
    """A partner's key used from many addresses (stolen, or a botnet behind it) would otherwise
    free each of them from `max_connections`: only its latest PARTNER_ADDRESSES are remembered,
    an address forgotten has its handshakes under way counted as strangers' again, and a node the
    roster no longer lists frees none (found by review)."""
    roster: list[Listed] = [(frozenset(), frozenset({"ke-customs", "gb-customs"}))]
    guard = ConnectionGuard(ServerLimits(max_connections_per_address=2, max_connections=1), listed=lambda: roster[0])
    for i in range(20):
        guard.partner_seen("ke-customs", f"10.0.0.{i}")
    freed = [f"10.0.0.{i}" for i in range(20) if guard.partner_address(f"10.0.0.{i}")]
    assert freed == [f"10.0.0.{i}" for i in range(20 - PARTNER_ADDRESSES, 20)]
    guard.partner_seen("gb-customs", "10.0.0.19")  # another partner at the same address
    twelve = [guard.shake("10.0.0.12"), guard.shake("10.0.0.12")]  # past the total of 1: a partner's address
    assert None not in twelve
    for i in range(20, 40):
        guard.partner_seen("ke-customs", f"10.0.0.{i}")
    assert guard.partner_address("10.0.0.19") and not guard.partner_address("10.0.0.18")
    # 10.0.0.12 was forgotten: its two handshakes under way now fill the strangers' total.
    assert not guard.shake("192.0.2.1")
    for shake in twelve:
        assert shake is not None
        guard.shaken(shake)
    # Past the total, only a remembered address gets a place, and only up to its own limit.
    assert guard.shake("192.0.2.1") and not guard.shake("192.0.2.2")
    first = guard.shake("10.0.0.39")
    assert first is not None and guard.shake("10.0.0.39") and not guard.shake("10.0.0.39")
    guard.shaken(first)
    assert guard.handshakes() == 2 and guard.shake("10.0.0.39")
    # ke-customs leaves the roster (revoked): its addresses are forgotten; gb-customs's stays.
    roster[0] = (frozenset({"10.9.9.9"}), frozenset({"gb-customs"}))
    assert not guard.partner_address("10.0.0.39") and guard.partner_address("10.0.0.19")
    assert guard.partner_address("10.9.9.9")  # an endpoint the roster names by its address
    guard.partner_seen("ke-customs", "10.0.0.50")
    assert not guard.partner_address("10.0.0.50")


def test_each_handshake_ends_as_it_was_counted() -> None:
    """A stranger's handshake from an address that later became a partner's, ending before the
    partner's from there, counted the partner's against the total from then on (found by review):
    each handshake now ends as what it was counted as."""
    roster: list[Listed] = [(frozenset(), frozenset({"ke-customs"}))]
    guard = ConnectionGuard(ServerLimits(max_connections_per_address=4, max_connections=1), listed=lambda: roster[0])
    stranger = guard.shake("10.0.0.1")  # not a partner's address yet: fills the total of 1
    assert stranger is not None and not stranger.partner and not guard.shake("192.0.2.1")
    guard.partner_seen("ke-customs", "10.0.0.1")
    partner = guard.shake("10.0.0.1")
    assert partner is not None and partner.partner
    guard.shaken(stranger)
    assert guard.shake("192.0.2.1")  # the total holds the one stranger's place free again


async def test_a_partners_host_name_endpoint_gives_its_addresses_a_place_from_the_start(
    make_federation: MakeFederation,
) -> None:
    """Listed as left in earlier notes: a partner whose endpoint is a host name (as most are) was
    known only from its first connection on, so after a restart during a flood of handshakes it
    waited like any client. The addresses its endpoint resolves to now get a place past the total
    from the start, looked up in the background, at most PARTNER_ADDRESSES per name."""
    fed = await make_federation()
    nl = fed["nl-customs"]
    assert nl.node is not None and nl.node.names is not None
    assert nl.node.names.names() == []  # the test roster names its endpoints by address
    held = nl.service.fed.roster
    host = {"ke-customs": "localhost"}  # and a name that does not resolve for the other
    renamed = [n.model_copy(update={"endpoint": f"https://{host.get(n.id, 'x.invalid')}:8442"}) for n in held.nodes]
    roster = Federation.index(held.model_copy(update={"nodes": renamed}))
    names = EndpointNames(roster, check=0.01, timeout=2)
    guard = ConnectionGuard(
        ServerLimits(max_connections_per_address=2, max_connections=1), listed=roster_addresses(roster, names)
    )
    assert sorted(names.names()) == ["localhost", "x.invalid"] and not guard.partner_address("127.0.0.1")
    names.start()
    try:

        async def resolved() -> bool:
            return guard.partner_address("127.0.0.1")

        await eventually(resolved, what="localhost resolved in the background")
    finally:
        await names.close()
    assert len(names()) <= PARTNER_ADDRESSES
    assert guard.shake("192.0.2.1") is not None and guard.shake("192.0.2.2") is None  # the total is taken
    assert guard.shake("127.0.0.1") is not None  # the partner's endpoint address still gets a place
    # The name that does not resolve (or not in time) added nothing.
    assert all(a == "127.0.0.1" or ":" in a for a in names()) and names.failed == 1
    # A resolver that stops answering takes no partner's place away: the last answer is kept
    # (found by review), and the names are tried again sooner.
    names.timeout = 0  # each look-up gives up at once
    assert "127.0.0.1" in await names.resolve() and names.failed == 2
