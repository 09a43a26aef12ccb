"""Connections between partners (exchange/node/peers.py): an idle one is kept for
`peer_keepalive_seconds` (a new mutual-TLS connection costs both sides a handshake), and a request
on a connection the partner closed as it went is made once more at once, on a new connection."""

from __future__ import annotations

import asyncio
import collections
import gzip
import json
import ssl
import threading
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from exchange.errors import AnswersFull, InvalidInput, PeerError, PeerRefused
from exchange.keystore import NodeKeyFiles
from exchange.model import NodeId
from exchange.node import peers
from tests.conftest import Federation, MakeFederation, eventually
from tests.service.lone_node import bulletin

pytestmark = pytest.mark.slow

KE = NodeId("ke-customs")


def peer_key_of(fed: Federation, node: str) -> str:
    """How a node's server counts the connections of partner `node`: under its roster id, whichever
    of its certificates it presents (exchange.http.server.GuardedHandler)."""
    return f"peer:{node}"


@pytest.mark.parametrize("keepalive", [0.3, 30.0])
async def test_an_idle_connection_to_a_partner_is_kept_for_peer_keepalive_seconds(
    make_federation: MakeFederation, keepalive: float
) -> None:
    fed = await make_federation(options={"peer_keepalive_seconds": keepalive})
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    assert nl.node is not None and ke.node is not None
    guard, key = ke.node.guard, peer_key_of(fed, "nl-customs")
    await nl.service.transport.fetch(KE, "/fed/v1/audit/checkpoint")
    assert guard.connections(key) >= 1
    if keepalive < 1:
        # aiohttp closes idle connections past the setting (its sweep runs every keepalive seconds)
        async def closed() -> bool:
            return guard.connections(key) == 0

        await eventually(closed, timeout=5, what="the idle connection closed by the client")
    else:
        await asyncio.sleep(2.5)
        assert guard.connections(key) >= 1  # still open: the next request needs no handshake
        before = guard.connections(key)
        await nl.service.transport.fetch(KE, "/fed/v1/audit/checkpoint")
        assert guard.connections(key) == before


async def test_an_idle_kept_connection_outlives_the_partners_header_timeout(make_federation: MakeFederation) -> None:
    """The server's deadline for a request's head starts with its first byte. aiohttp calls the
    handler with no bytes after each answer (to parse what a client pipelined); that once started
    the deadline, so every idle kept-alive connection was refused 408 and closed `header_timeout`
    after its last request, and the partner's next request paid a new mutual-TLS handshake."""
    fed = await make_federation(options={"header_timeout_seconds": 1.0, "peer_keepalive_seconds": 30.0})
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    assert ke.node is not None
    guard, key = ke.node.guard, peer_key_of(fed, "nl-customs")
    officer = await nl.service.users.get("officer")
    await nl.service.post(officer, "c2c", bulletin("Kept connection"))  # a POST of envelopes, as in delivery
    await nl.service.transport.fetch(KE, "/fed/v1/audit/checkpoint")  # and a GET

    async def delivered() -> bool:
        return not any((await nl.service.queued_counts()).values())

    await eventually(delivered, timeout=10, what="the bulletin delivered to ke-customs")
    open_before = guard.connections(key)
    assert open_before >= 1
    await asyncio.sleep(2.5)  # idle, past the 1 s header timeout
    assert guard.connections(key) == open_before  # none refused and closed
    await nl.service.transport.fetch(KE, "/fed/v1/audit/checkpoint")
    assert guard.connections(key) == open_before  # the request went on a kept connection


@dataclass
class DroppingPartner:
    """In ke-customs's place (its address and certificate), a server that reads each request and,
    for a path in `drop` (with how many times), closes the connection without an answer; it
    answers a path in `redirect` with its status and its Location, a path in `bodies` with that
    body (and the status in `statuses`, 200 if none), anything else 200 with `body` (`chunked`:
    without a Content-Length). `tries` counts the requests per path."""

    fed: Federation
    drop: dict[str, int] = field(default_factory=dict)
    bodies: dict[str, bytes] = field(default_factory=dict)
    redirect: dict[str, tuple[int, str]] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)  # a path answered with this status, not 200
    body: bytes = b'{"ok": true}'
    chunked: bool = False  # answers without a Content-Length, in chunks of 64 KiB
    stall: dict[str, asyncio.Event] = field(default_factory=dict)  # a path's answer: half, then the rest once set
    gzipped: set[str] = field(default_factory=set)  # a path answered with its body gzipped (Content-Encoding)
    tries: collections.Counter[str] = field(default_factory=collections.Counter)


@pytest.fixture
async def dropping_partner(make_federation: MakeFederation) -> AsyncIterator[DroppingPartner]:
    fed = await make_federation(options={"envelope_v2": True, "epoch_prefetch_seconds": 0}, announced=False)
    ke = fed["ke-customs"]
    await fed.stop("ke-customs")
    files = NodeKeyFiles(ke.config.keys_dir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(files.presented_cert if files.presented_cert.exists() else files.tls_cert, files.tls_key)
    partner = DroppingPartner(fed)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                path = lines[0].split(b" ")[1].decode()
                length = next((int(h.split(b":")[1]) for h in lines if h.lower().startswith(b"content-length")), 0)
                await reader.readexactly(length)
                partner.tries[path] += 1
                if partner.drop.get(path, 0) > 0:
                    partner.drop[path] -= 1
                    return
                if path in partner.redirect:
                    status, location = partner.redirect[path]
                    writer.write(b"HTTP/1.1 %d Moved\r\nLocation: %s\r\n" % (status, location.encode()))
                    writer.write(b"Content-Length: 0\r\n\r\n")
                    await writer.drain()
                    continue
                body = partner.bodies.get(path, partner.body)
                status = partner.statuses.get(path, 200)
                writer.write(b"HTTP/1.1 %d Answer\r\nContent-Type: application/json\r\n" % status)
                if path in partner.gzipped:
                    body = gzip.compress(body)
                    writer.write(b"Content-Encoding: gzip\r\n")
                stall = partner.stall.get(path)
                if partner.chunked:
                    writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
                    for i in range(0, len(body), 65536):
                        part = body[i : i + 65536]
                        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                        await writer.drain()
                        if stall is not None and i + 65536 >= len(body) // 2 > i:
                            await stall.wait()
                    writer.write(b"0\r\n\r\n")
                elif stall is not None:
                    writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body[: len(body) // 2]))
                    await writer.drain()
                    await stall.wait()
                    writer.write(body[len(body) // 2 :])
                else:
                    writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(serve, ke.config.host, ke.config.port, ssl=ctx)
    try:
        yield partner
    finally:
        server.close()
        await server.wait_closed()
        fed.members.pop("ke-customs")


async def test_a_request_on_a_connection_the_partner_dropped_is_made_once_more_at_once(
    dropping_partner: DroppingPartner,
) -> None:
    partner = dropping_partner
    partner.drop = {"/fed/v1/once": 1, "/fed/v1/once-more": 1}
    transport = partner.fed["nl-customs"].service.transport
    assert await transport.send(KE, "/fed/v1/once", b"{}") == {"ok": True}
    assert await transport.fetch(KE, "/fed/v1/once-more") == {"ok": True}
    assert partner.tries["/fed/v1/once"] == 2 and partner.tries["/fed/v1/once-more"] == 2


async def test_a_partner_that_drops_every_request_fails_after_the_second_try(
    dropping_partner: DroppingPartner,
) -> None:
    partner = dropping_partner
    partner.drop = {"/fed/v1/always": 10, "/fed/v1/always-get": 10}
    transport = partner.fed["nl-customs"].service.transport
    with pytest.raises(PeerError, match="ServerDisconnectedError"):
        await transport.send(KE, "/fed/v1/always", b"{}")
    with pytest.raises(PeerError, match="ServerDisconnectedError"):
        await transport.fetch(KE, "/fed/v1/always-get")
    # two tries each: the request and one more at once (for a GET, aiohttp's own); anything later
    # is the caller's, after its backoff
    assert partner.tries["/fed/v1/always"] == 2
    assert partner.tries["/fed/v1/always-get"] == 2


@pytest.mark.parametrize("body", [b"[" * 100_000, b"{" * 100_000, b"not json"])
async def test_an_answer_that_is_not_json_is_a_peer_error(dropping_partner: DroppingPartner, body: bytes) -> None:
    """An answer nested past Python's stack raised RecursionError out of the transport, which no
    caller catches as a partner's failure: one member's epoch page stopped a whole catch-up sweep
    (every channel, every member after it) each time it came round. Found by a review."""
    partner = dropping_partner
    epochs = "/fed/v1/channels/c2c/epochs?after=-1"
    partner.bodies = {"/fed/v1/nested": body, epochs: body}
    nl = partner.fed["nl-customs"]
    with pytest.raises(PeerError, match="not JSON"):
        await nl.service.transport.fetch(KE, "/fed/v1/nested")
    assert nl.service.epochs is not None
    assert await nl.service.epochs.pull_quietly(KE, "c2c") == 0  # logged; the sweep goes on
    assert partner.tries[epochs] == 1


@pytest.mark.parametrize("status", [400, 503])
@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"detail": ' * 100_000], ids=["array", "object"])
async def test_a_refusal_whose_body_is_nested_past_the_stack_is_still_a_refusal(
    dropping_partner: DroppingPartner, status: int, body: bytes
) -> None:
    """The body of a 200 nested past Python's stack was a PeerError (above), but that of a 4xx or
    5xx answer was read for its `detail` with only ValueError caught: the RecursionError left the
    transport, so a partner could stop a catch-up sweep by refusing with such a body."""
    partner = dropping_partner
    partner.bodies = {"/fed/v1/refused": body}
    partner.statuses = {"/fed/v1/refused": status}
    transport = partner.fed["nl-customs"].service.transport
    error = PeerRefused if status < 500 else PeerError
    with pytest.raises(error, match=f"HTTP {status}"):
        await transport.send(KE, "/fed/v1/refused", b"{}")
    with pytest.raises(error, match=f"HTTP {status}"):
        await transport.fetch(KE, "/fed/v1/refused")


async def test_a_refusals_detail_is_kept_on_one_line_and_bounded(dropping_partner: DroppingPartner) -> None:
    """A partner writes what it likes in a refusal's `detail`, and the sender keeps it: in the
    outbox's row, in the audit log (`send.refused`), in the peers' view. A detail of 1 MB went
    there whole, once per item refused; now it is one line of at most MAX_PEER_DETAIL characters.
    A detail that is not text, or is blank, is the status alone."""
    partner = dropping_partner
    long_detail = "refused:\n" + "x" * 1_000_000
    partner.bodies = {
        "/fed/v1/long": json.dumps({"detail": long_detail}).encode(),
        "/fed/v1/short": json.dumps({"detail": "not a member\r\n of  c2c"}).encode(),
        "/fed/v1/object": json.dumps({"detail": {"a": "b" * 1000}}).encode(),
        "/fed/v1/blank": json.dumps({"detail": " \n"}).encode(),
        "/fed/v1/far": json.dumps({"detail": " " * 2000 + "words past the first 1,200 characters"}).encode(),
        "/fed/v1/escapes": json.dumps({"detail": "a\x1b[31mb\u202ec\u0000d"}).encode(),
    }
    partner.statuses = dict.fromkeys(partner.bodies, 422)
    transport = partner.fed["nl-customs"].service.transport
    with pytest.raises(PeerRefused) as long:
        await transport.send(KE, "/fed/v1/long", b"{}")
    assert long.value.detail == "refused: " + "x" * (peers.MAX_PEER_DETAIL - 10) + "…"
    assert len(long.value.detail) == peers.MAX_PEER_DETAIL
    with pytest.raises(PeerRefused) as short:
        await transport.send(KE, "/fed/v1/short", b"{}")
    assert short.value.detail == "not a member of c2c"
    with pytest.raises(PeerRefused) as escapes:  # terminal escapes and bidi overrides go as spaces
        await transport.send(KE, "/fed/v1/escapes", b"{}")
    assert escapes.value.detail == "a [31mb c d"
    for path in ("/fed/v1/object", "/fed/v1/blank", "/fed/v1/far"):
        with pytest.raises(PeerRefused) as other:
            await transport.send(KE, path, b"{}")
        assert other.value.detail == "HTTP 422"


async def test_a_partner_cannot_redirect_a_request_elsewhere(dropping_partner: DroppingPartner) -> None:
    """aiohttp follows redirects unless told not to, to any http or https address: a partner
    answering 307 had the node POST the transaction (its envelopes, its receipts) to a plain-HTTP
    address of the partner's choosing, and 302 had it GET one (a request from inside the node's
    network), whose answer was then taken as the partner's. A redirect is an error, as for the
    webhook and C2SP witness clients."""
    hits: list[bytes] = []

    async def elsewhere(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append(await reader.readuntil(b"\r\n\r\n"))
        body = b'{"txn": "t1", "receipts": []}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    inside = await asyncio.start_server(elsewhere, "127.0.0.1", 0)
    port = inside.sockets[0].getsockname()[1]
    try:
        partner = dropping_partner
        partner.redirect = {
            "/fed/v1/envelopes": (307, f"http://127.0.0.1:{port}/internal"),
            "/fed/v1/audit/checkpoint": (302, f"http://127.0.0.1:{port}/internal"),
        }
        transport = partner.fed["nl-customs"].service.transport
        with pytest.raises(PeerError, match="307"):
            await transport.send(KE, "/fed/v1/envelopes", b'{"txn": "t1", "envelopes": []}')
        with pytest.raises(PeerError, match="302"):
            await transport.fetch(KE, "/fed/v1/audit/checkpoint")
        assert hits == []
        assert partner.tries["/fed/v1/envelopes"] == 1 and partner.tries["/fed/v1/audit/checkpoint"] == 1
    finally:
        inside.close()
        await inside.wait_closed()


@pytest.mark.parametrize(
    "body",
    [b"<html>not JSON</html>", b"1" * 5000, b'{"a": 1', b'{"a": 1.5}', b'{"a": 1, "a": 2}', b'{"a": NaN}'],
    ids=["html", "long-int", "cut", "float", "duplicate-key", "nan"],
)
async def test_a_body_that_does_not_parse_is_a_peer_error_both_ways(
    dropping_partner: DroppingPartner, body: bytes
) -> None:
    """`PeerTransport` raises PeerError for any failure but a refusal; a 200 whose body did not
    parse raised json's ValueError, which callers that handle PeerError (a channel's log fetched
    from its owner, a roster pull) let through as an unclassified failure."""
    partner = dropping_partner
    partner.body = body
    transport = partner.fed["nl-customs"].service.transport
    with pytest.raises(PeerError, match="not JSON"):
        await transport.send(KE, "/fed/v1/envelopes", b"{}")
    with pytest.raises(PeerError, match="not JSON"):
        await transport.fetch(KE, "/fed/v1/audit/checkpoint")


EMPTY_CONTAINERS = b"[" + b"{}," * 1_000_000 + b"{}]"  # 3 MB, one value per 1.5 bytes


async def test_an_answer_of_empty_containers_is_refused_before_it_is_parsed(dropping_partner: DroppingPartner) -> None:
    """Answers were parsed with plain json.loads, with no value budget: a partner answering a
    96 MiB body of `[{},{},...]` had the node make a Python object per element, about 2.3 GB,
    on its event loop. Now an answer has a value budget (peers.ANSWER_BYTES_PER_VALUE): this one
    is a PeerError, a failure like a malformed answer, and the sweep that met it goes on."""
    partner = dropping_partner
    epochs = "/fed/v1/channels/c2c/epochs?after=-1"
    partner.bodies = {"/fed/v1/empty": EMPTY_CONTAINERS, epochs: EMPTY_CONTAINERS}
    nl = partner.fed["nl-customs"]
    with pytest.raises(PeerError, match="too many JSON values"):
        await nl.service.transport.fetch(KE, "/fed/v1/empty")
    with pytest.raises(PeerError, match="too many JSON values"):
        await nl.service.transport.send(KE, "/fed/v1/empty", b"{}")
    assert nl.service.epochs is not None
    assert await nl.service.epochs.pull_quietly(KE, "c2c") == 0  # logged; the sweep goes on
    assert partner.tries[epochs] == 1
    partner.statuses = {"/fed/v1/empty": 400}  # a refusal whose body is over the budget: its status
    with pytest.raises(PeerRefused, match="HTTP 400"):
        await nl.service.transport.send(KE, "/fed/v1/empty", b"{}")


def test_the_budget_is_checked_before_anything_is_parsed() -> None:
    """What refusing costs: the body's bytes are counted, no object is made of them. json.loads
    of the same 3 MB takes about 70 MB."""
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput, match="too many JSON values"):
            peers._parse(EMPTY_CONTAINERS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, peak


def test_dense_legitimate_answers_parse_as_json_loads_reads_them() -> None:
    """The budget admits what partners send: here a body as dense as a roster page's key entries
    (one value per 11 bytes), over a request's one per 20 bytes, and read exactly as before."""
    key = {"key": "QEnaprUCxT6wIqPMqbAKxH-fMdR9Wg83tnPRRfOwZ6U", "kid": "cb741b855c9da34f", "state": "retired"}
    keys = [{**key, "use": "signing", "valid_from": 1, "valid_until": i} for i in range(5000)]
    page = json.dumps({"keys": keys}, separators=(",", ":"))
    body = page.encode()
    assert sum(body.count(c) for c in b",:[{") > max(10_000, len(body) // 20)
    assert peers._parse(body) == json.loads(body)
    assert peers._parse(b'{"detail": "-0 is 0", "n": -0}') == {"detail": "-0 is 0", "n": 0}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_answer_longer_than_the_most_a_node_reads_is_a_peer_error(
    dropping_partner: DroppingPartner, monkeypatch: pytest.MonkeyPatch, chunked: bool
) -> None:
    """A partner's answer is read up to MAX_ANSWER_BYTES (96 MiB, above the largest a node gives);
    before, it was read whole however long, the request's timeout its only bound: a partner
    answering without end had the node hold it all in memory. Here the bound is 256 KiB."""
    monkeypatch.setattr(peers, "MAX_ANSWER_BYTES", 256 * 1024)
    partner = dropping_partner
    partner.chunked = chunked
    fits = b'{"pad": "%s"}' % (b"x" * (256 * 1024 - 11))
    partner.bodies = {"/fed/v1/fits": fits, "/fed/v1/long": b'{"pad": "%s"}' % (b"x" * (1024 * 1024))}
    transport = partner.fed["nl-customs"].service.transport
    assert len(fits) == 256 * 1024 and (await transport.fetch(KE, "/fed/v1/fits"))["pad"][:3] == "xxx"
    with pytest.raises(PeerError, match="more than 262,144 bytes"):
        await transport.fetch(KE, "/fed/v1/long")
    with pytest.raises(PeerError, match="more than 262,144 bytes"):
        await transport.send(KE, "/fed/v1/long", b"{}")
    assert (await transport.fetch(KE, "/fed/v1/fits"))["pad"][:3] == "xxx"  # the partner is asked again


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_what_a_node_holds_of_partners_answers_at_once_is_bounded(
    dropping_partner: DroppingPartner, monkeypatch: pytest.MonkeyPatch, chunked: bool
) -> None:
    """Several partners answering up to MAX_ANSWER_BYTES (96 MiB) at once held that many times it,
    and five times more parsing it. Now the node holds at most ANSWERS_HELD_BYTES of answers being
    read and parsed, one partner's at most half, counted as the bytes come (decompressed): past it,
    an answer is a PeerError at once (at a Content-Length that says so, or at the chunk that goes
    past), and asked again later it is read. Here the budget is 800 KiB, 400 KiB of one partner's,
    each answer's first 64 KiB not counted."""
    monkeypatch.setattr(peers, "FREE_ANSWER_BYTES", 64 * 1024)
    partner = dropping_partner
    partner.chunked = chunked
    transport = partner.fed["nl-customs"].service.transport
    assert isinstance(transport, peers.HttpTransport)
    transport.answers = answers = peers.Answers(limit=800 * 1024)

    def padded(size: int) -> bytes:
        return b'{"pad": "%s"}' % (b"x" * (size - 11))

    released = asyncio.Event()
    partner.bodies = {"/fed/v1/slow": padded(400 * 1024), "/fed/v1/big": padded(400 * 1024)}
    partner.bodies["/fed/v1/huge"] = partner.bodies["/fed/v1/zipped"] = padded(700 * 1024)
    partner.stall = {"/fed/v1/slow": released}
    partner.gzipped = {"/fed/v1/zipped"}  # about 1 KiB on the wire, 700 KiB once decompressed
    # 636 KiB counted of one answer: past one partner's half, refused, nothing left held; and so
    # is the same answer gzipped, whose Content-Length says 1 KiB.
    for path in ("/fed/v1/huge", "/fed/v1/zipped"):
        with pytest.raises(PeerError, match="asked again later"):
            await transport.fetch(KE, path)
        assert (answers.held, answers.by_peer) == (0, {})

    slow = asyncio.create_task(transport.fetch(KE, "/fed/v1/slow"))

    async def reading() -> bool:
        return answers.held > 0

    await eventually(reading, what="the slow answer counted")
    # The slow answer holds what came of it (half: 136 KiB counted): another of 336 KiB goes past 400.
    with pytest.raises(PeerError, match="asked again later"):
        await transport.fetch(KE, "/fed/v1/big")
    assert not slow.done()
    released.set()
    assert len((await slow)["pad"]) == 400 * 1024 - 11
    assert (answers.held, answers.by_peer) == (0, {})
    assert len((await transport.fetch(KE, "/fed/v1/big"))["pad"]) == 400 * 1024 - 11  # asked again: read
    # Other partners' answers fill the budget: this one is within its own half, so the refusal is
    # this node's state (AnswersFull, no backoff for KE), not KE's failure; read once they are parsed.
    answers.take("gb-avsec", 400 * 1024)
    answers.take("fr-customs", 300 * 1024)
    with pytest.raises(AnswersFull, match="asked again later"):
        await transport.fetch(KE, "/fed/v1/big")
    answers.give("gb-avsec", 400 * 1024)
    answers.give("fr-customs", 300 * 1024)
    assert len((await transport.fetch(KE, "/fed/v1/big"))["pad"]) == 400 * 1024 - 11
    assert (await transport.fetch(KE, "/fed/v1/small"))["ok"] is True  # short ones are never counted
    assert answers.held == 0


def test_the_answers_budget_counts_each_partner_and_all_of_them() -> None:
    answers = peers.Answers(limit=100)
    answers.take("a", 50)
    with pytest.raises(PeerError, match="asked again later") as own:
        answers.take("a", 1)  # one partner's half: that partner's failure
    assert not isinstance(own.value, AnswersFull)
    answers.take("b", 40)
    with pytest.raises(AnswersFull, match="asked again later"):
        answers.take("c", 11)  # all of them: this node's state, not c's failure
    answers.take("c", 10)
    answers.give("a", 50)
    answers.take("c", 40)
    answers.give("b", 40)
    answers.give("c", 50)
    assert (answers.held, answers.by_peer) == (0, {})


async def test_the_server_issues_no_session_tickets(make_federation: MakeFederation) -> None:
    """A TLS 1.3 server sends two session tickets after each handshake by default; a node's
    partners (aiohttp) never resume a session, so the tickets were made, sent and read for
    nothing, a fifth of a handshake's cost (bench/tls_reuse.py). The node's server sends none."""
    fed = await make_federation()
    ke = fed["ke-customs"].config
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # reads what the server sends, trusts nothing
    reader, writer = await asyncio.open_connection(ke.host, ke.port, ssl=ctx)
    try:
        writer.write(b"GET /fed/v1/audit/checkpoint HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 ")  # the tickets, if any, came before the answer
        tls = writer.get_extra_info("ssl_object")
        assert tls.version() == "TLSv1.3"
        assert tls.session is None or not tls.session.has_ticket
    finally:
        writer.close()


async def test_a_long_answer_is_parsed_off_the_event_loop(
    dropping_partner: DroppingPartner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partner's answer of up to 96 MiB (a catch-up page) was parsed on the event loop, holding
    every other request and partner up for the seconds it took. One of OFF_LOOP_FROM bytes or more
    is parsed in a thread; a short one (a push's receipts) still on the loop, where a thread's
    hand-off would cost more than the parse. Refusals' bodies alike."""
    partner = dropping_partner
    big = json.dumps({"items": ["x" * 1000] * (peers.OFF_LOOP_FROM // 1000)}).encode()
    partner.bodies = {"/fed/v1/big": big, "/fed/v1/small": b'{"ok": true}', "/fed/v1/big-refusal": big}
    partner.statuses = {"/fed/v1/big-refusal": 400}
    threads: list[int] = []
    parse = peers._parse

    def spy(payload: bytes) -> Any:
        threads.append(threading.get_ident())
        return parse(payload)

    monkeypatch.setattr(peers, "_parse", spy)
    transport = partner.fed["nl-customs"].service.transport
    assert len((await transport.fetch(KE, "/fed/v1/big"))["items"]) == peers.OFF_LOOP_FROM // 1000
    assert await transport.fetch(KE, "/fed/v1/small") == {"ok": True}
    with pytest.raises(PeerRefused):
        await transport.fetch(KE, "/fed/v1/big-refusal")
    loop = threading.get_ident()
    assert [t != loop for t in threads] == [True, False, True]
