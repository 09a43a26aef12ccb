"""What one client may cost a node, on real nodes over real TLS sockets (exchange.http.server,
exchange.http.limits):
header and body timeouts (slowloris), connection limits per address and in all, 429 with
Retry-After per address, token and partner node, problem+json for what aiohttp's parser refuses
(a line over 8 KB, too many headers, malformed HTTP), and the audit of refusals within bounds
(exchange.service.rejections). Must show 5, first half: a slowloris client is cut off within the
configured timeout while other requests are served.

Other client addresses are loopback aliases (127.0.0.2 and up), which Linux routes to lo.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa

from exchange.crypto import canonical_json
from exchange.errors import Unavailable
from exchange.keystore import read_file
from exchange.node.tls import client_context, peer_context
from exchange.service.gossip import OFFER_BYTES
from exchange.service.rejections import (
    MAX_ENTRY_BYTES,
    Refusals,
    RefusalSettings,
    _Tally,
    client_key,
    clip,
    rejected_entry,
    summary_entry,
)
from exchange.store import AuditBuffer, Store, audit_log, bulletins
from tests.conftest import MakeFederation, Member, eventually

SQLITE = pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # nothing here depends on SQL

WHOAMI = b"GET /api/v1/whoami HTTP/1.1\r\nHost: node\r\n\r\n"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# -- clients, byte for byte, from any loopback address ---------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def problem(self) -> dict[str, Any]:
        assert self.headers.get("content-type") == "application/problem+json", (self.status, self.headers, self.body)
        body: dict[str, Any] = json.loads(self.body)
        assert body["status"] == self.status
        return body


def tls(member: Member) -> ssl.SSLContext:
    return client_context(read_file(member.config.keys_dir / "tls.crt").decode())


async def connect(member: Member, source: str = "127.0.0.2") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        member.config.host, member.config.port, ssl=tls(member), local_addr=(source, 0)
    )


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(int(lines[0].split()[1]), headers, body)


async def closed(reader: asyncio.StreamReader) -> bool:
    """Read until the node closes the connection (True), whatever it sent before."""
    try:
        while await reader.read(65536):
            pass
    except (ConnectionError, ssl.SSLError):
        pass
    return True


async def exchange_once(member: Member, raw: bytes, source: str = "127.0.0.2") -> Answer:
    reader, writer = await connect(member, source)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(read_answer(reader), 30)
    finally:
        writer.close()


@pytest.fixture
async def http() -> AsyncIterator[Any]:
    """http(source) -> an aiohttp session whose connections come from the loopback address `source`."""
    sessions: list[aiohttp.ClientSession] = []

    def make(member: Member, source: str = "127.0.0.2", *, peer: Member | None = None) -> aiohttp.ClientSession:
        if peer is not None:
            ctx = peer_context(
                member.service.fed.node(member.id), peer.config.keys_dir / "tls.crt", peer.config.keys_dir / "tls.key"
            )
        else:
            ctx = tls(member)
        session = aiohttp.ClientSession(
            base_url=member.config.endpoint, connector=aiohttp.TCPConnector(ssl=ctx, local_addr=(source, 0))
        )
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        await session.close()


async def audit_entries(member: Member, since: int = 0) -> list[dict[str, Any]]:
    async with member.service.store.read() as conn:
        rows = (await conn.execute(sa.select(audit_log.c.entry).where(audit_log.c.idx >= since))).scalars().all()
    return [json.loads(r) for r in rows]


async def log_size(member: Member) -> int:
    async with member.service.store.read() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(audit_log)) or 0)


async def counted(member: Member, since: int) -> dict[str, dict[str, Any]]:
    """Flush the node's counts of refusals and return its `requests.refused` entries by address."""
    await member.service.refusals.flush()
    return {e["address"]: e for e in await audit_entries(member, since) if e["event"] == "requests.refused"}


# -- timeouts: slowloris ------------------------------------------------------------------------------


@SQLITE
async def test_a_slowloris_client_is_cut_off_in_time_while_others_are_served(make_federation: MakeFederation) -> None:
    """Must show 5: connections that send half a request head (a byte at a time, or nothing) are
    answered 408 and closed once the header timeout has passed, while the node serves others."""
    timeout = 4.0
    fed = await make_federation(options={"header_timeout_seconds": timeout})
    nl = fed["nl-customs"]
    start = await log_size(nl)
    loop = asyncio.get_running_loop()
    slow, silent = 20, 5

    async def slowloris(trickle: bool) -> tuple[float, Answer | None]:
        began = loop.time()
        reader, writer = await connect(nl)
        if trickle:
            writer.write(b"GET /api/v1/whoami HTTP/1.1\r\nHost: node\r\nX-Slow: ")

        async def drip() -> None:
            while trickle and not writer.is_closing():
                await asyncio.sleep(0.2)
                writer.write(b"a")  # a header that never ends, a byte at a time

        dripping = asyncio.create_task(drip())
        try:
            answer = await asyncio.wait_for(read_answer(reader), 60)  # a hang guard, not a timing
            await closed(reader)
            return loop.time() - began, answer
        finally:
            dripping.cancel()
            writer.close()

    attackers = [asyncio.create_task(slowloris(trickle=i >= silent)) for i in range(slow + silent)]
    assert nl.node is not None
    guard = nl.node.guard

    async def all_held() -> bool:
        return guard.connections("127.0.0.2") == slow + silent

    await eventually(all_held, what="every slowloris connection to be open")
    served = []
    for _ in range(10):  # meanwhile, others are served
        status, body, _ = await nl.api("GET", "/api/v1/whoami")
        served.append((status, guard.connections("127.0.0.2")))
        assert status == 200 and body["user"] == "officer"
    results = await asyncio.gather(*attackers)
    cut_after = sorted(elapsed for elapsed, _ in results)
    print(
        f"\nslowloris: {slow} trickling and {silent} silent connections, header timeout {timeout:g} s: "
        f"answered 408 and closed after {cut_after[0]:.2f}-{cut_after[-1]:.2f} s; "
        f"{len(served)} other requests served meanwhile (slow connections held as each finished: "
        f"{[held for _, held in served]}); load average {load()}"
    )
    for elapsed, answer in results:
        assert answer is not None and answer.status == 408 and "did not arrive" in answer.problem["detail"]
        assert elapsed >= timeout  # not before its time
    assert guard.connections("127.0.0.2") == 0

    # Counted, not written one by one.
    refused = await counted(nl, start)
    assert refused["127.0.0.2"]["reasons"] == {"408 header timeout": slow + silent}
    assert [e["event"] for e in await audit_entries(nl, start)].count("request.rejected") == 0


@SQLITE
async def test_a_head_begun_behind_a_pipelined_request_is_closed_with_the_idle_connections(
    make_federation: MakeFederation,
) -> None:
    """A request and the first bytes of the next head in one write: the first is answered; the
    second's deadline starts with its next bytes, and a client that sends none holds the connection
    no longer than an idle kept-alive one (`keepalive_timeout_seconds`), never without end."""
    fed = await make_federation(options={"header_timeout_seconds": 1.0, "keepalive_timeout_seconds": 2.0})
    nl = fed["nl-customs"]
    loop = asyncio.get_running_loop()
    reader, writer = await connect(nl)
    began = loop.time()
    writer.write(b"GET /api/v1/whoami HTTP/1.1\r\nHost: node\r\n\r\nGET /api/v1/whoami HTTP/1.1\r\nHost: no")
    try:
        first = await asyncio.wait_for(read_answer(reader), 30)
        assert first.status == 401  # answered (no token): the pipelined request was read
        assert await asyncio.wait_for(closed(reader), 30)  # a hang guard, not a timing
        elapsed = loop.time() - began
    finally:
        writer.close()
    print(f"\npipelined partial head: closed after {elapsed:.2f} s (header timeout 1 s, keep-alive 2 s)")
    assert 1.0 <= elapsed < 10, elapsed  # past the header timeout, at the keep-alive one (2 s)
    assert nl.node is not None
    guard = nl.node.guard

    async def released() -> bool:
        return guard.connections("127.0.0.2") == 0

    await eventually(released, timeout=5, what="the connection no longer counted")


@SQLITE
async def test_a_body_that_stalls_or_crawls_is_cut_off_and_nothing_is_stored(make_federation: MakeFederation) -> None:
    fed = await make_federation(options={"read_timeout_seconds": 1.5, "body_timeout_seconds": 3.0})
    nl = fed["nl-customs"]
    body = json.dumps({"kind": "alert", "title": "Half a bulletin", "body": "x" * 500}).encode()
    head = (
        b"POST /api/v1/channels/c2c/bulletins HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + nl.tokens["officer"].encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    loop = asyncio.get_running_loop()
    for how in ("stalls", "crawls"):
        reader, writer = await connect(nl)
        began = loop.time()
        writer.write(head + body[:100])

        async def crawl(writer: asyncio.StreamWriter = writer, how: str = how) -> None:
            for i in range(100, len(body)):
                if how == "stalls" or writer.is_closing():
                    return
                await asyncio.sleep(0.5)  # a byte every half second: never idle for the read timeout
                writer.write(body[i : i + 1])

        crawling = asyncio.create_task(crawl())
        answer = await asyncio.wait_for(read_answer(reader), 60)
        assert await closed(reader)
        crawling.cancel()
        writer.close()
        elapsed = loop.time() - began
        print(f"\na body that {how}: 408 after {elapsed:.2f} s (read timeout 1.5 s, body timeout 3 s); load {load()}")
        assert answer.status == 408 and "did not arrive" in answer.problem["detail"]
        assert elapsed >= (1.5 if how == "stalls" else 3.0)
    async with nl.service.store.read() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(bulletins)) == 0
    rejected = [e for e in await audit_entries(nl) if e["event"] == "request.rejected"]
    assert [(e["status"], e["user"]) for e in rejected] == [(408, "officer"), (408, "officer")]  # accountable: exact
    status, _, _ = await nl.api("POST", "/api/v1/channels/c2c/bulletins", body=json.loads(body))
    assert status == 201  # the same post, sent whole, is taken


OFFER_HEAD = (
    b"POST /fed/v1/roster HTTP/1.1\r\nHost: node\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
)


@SQLITE
async def test_a_roster_offer_is_refused_429_before_its_body_is_read(make_federation: MakeFederation) -> None:
    """The roster offer route, open to clients without a certificate, read a body of up to 16 MiB
    before its gate (one offer at a time, one per source every 10 s): each client could keep 16 MiB
    buffered until refused 429, about 2 GiB from one IPv4 address's 128 connections. The gate
    comes first now, and an offer holds its turn while its body is read: here clients that send
    only the head of a 16 MiB offer are answered 429 at once, the body never asked for."""
    fed = await make_federation(options={"read_timeout_seconds": 20.0})
    nl = fed["nl-customs"]
    start = await log_size(nl)
    held = nl.service.roster.held
    gossip = nl.service.gossip

    async def busy() -> bool:
        return gossip._offering.locked()

    async def free() -> bool:
        return not gossip._offering.locked()

    # One offer is let in and sends 1 KiB of its 16 MiB: while it is read, the route is busy.
    _, slow_writer = await connect(nl, "127.0.0.3")
    slow_writer.write(OFFER_HEAD % OFFER_BYTES + b"[" + b" " * 1023)
    await slow_writer.drain()
    await eventually(busy, what="the first offer let in")
    for source in ("127.0.0.4", "127.0.0.5"):  # others, each sending the head of 16 MiB only
        answer = await exchange_once(nl, OFFER_HEAD % OFFER_BYTES, source)
        assert answer.status == 429 and answer.problem["type"].endswith("RateLimited"), answer
        assert answer.headers["retry-after"] == "10"
    slow_writer.close()  # it gives up: the route is free again
    await eventually(free, what="the offer's turn to end")
    answer = await exchange_once(nl, OFFER_HEAD % OFFER_BYTES, "127.0.0.3")  # its source: once per 10 s
    assert answer.status == 429, answer
    answer = await exchange_once(nl, OFFER_HEAD % 2 + b"[]", "127.0.0.6")  # another is let in and checked
    assert answer.status == 422, answer
    assert nl.service.roster.held is held  # nothing taken
    entries = await audit_entries(nl, start)  # each refusal audited, within the bounds of any refusal
    rejected = [(e["address"], e["status"]) for e in entries if e["event"] == "request.rejected"]
    assert rejected == [("127.0.0.4", 429), ("127.0.0.5", 429), ("127.0.0.3", 429), ("127.0.0.6", 422)]
    assert [e["source"] for e in entries if e["event"] == "roster.refused"] == ["offer:127.0.0.6"]


# -- connection limits ---------------------------------------------------------------------------------


@SQLITE
async def test_connections_are_limited_per_address_and_in_all_but_partners_count_apart(
    make_federation: MakeFederation, http: Any
) -> None:
    fed = await make_federation(
        options={"max_connections_per_address": 3, "max_connections": 4, "header_timeout_seconds": 60}
    )
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    start = await log_size(nl)
    held = [await connect(nl, "127.0.0.2") for _ in range(3)]
    assert nl.node is not None
    guard = nl.node.guard

    async def three() -> bool:
        return guard.connections("127.0.0.2") == 3

    await eventually(three, what="three connections from 127.0.0.2")
    # A fourth from the same address: 429 at once, and closed.
    reader, writer = await connect(nl, "127.0.0.2")
    answer = await asyncio.wait_for(read_answer(reader), 30)
    assert answer.status == 429 and answer.headers["retry-after"] == "1" and answer.problem
    assert await closed(reader)
    writer.close()
    # Another address is served, and so is a partner.
    assert (await exchange_once(nl, WHOAMI, "127.0.0.3")).status == 401
    async with http(nl, "127.0.0.5", peer=ke).get("/fed/v1/channels/c2c/events") as resp:
        assert resp.status == 200
    # The fourth client connection in all, from a third address, then a fifth: refused.
    extra = await connect(nl, "127.0.0.4")

    async def four() -> bool:
        return guard.connections("127.0.0.4") == 1

    await eventually(four, what="the fourth client connection")
    answer = await exchange_once(nl, WHOAMI, "127.0.0.6")
    assert answer.status == 429 and "too many open connections" in answer.problem["detail"]
    async with http(nl, "127.0.0.6", peer=ke).get("/fed/v1/channels/c2c/events") as resp:
        assert resp.status == 200  # partners are not shut out by a flood of clients
    # A connection that ends frees its place.
    for _, w in [*held, extra]:
        w.close()

    async def freed() -> bool:
        return guard.connections("127.0.0.2") == 0

    await eventually(freed, what="the connections to close")
    assert (await exchange_once(nl, WHOAMI, "127.0.0.2")).status == 401
    refused = await counted(nl, start)
    assert refused["127.0.0.2"]["reasons"] == {"429 too many connections": 1}
    assert refused["127.0.0.6"]["reasons"] == {"429 too many connections": 1}


# -- what aiohttp's parser refuses -------------------------------------------------------------------


@SQLITE
async def test_oversized_or_malformed_requests_get_problem_json_and_are_counted(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation()
    nl = fed["nl-customs"]
    start = await log_size(nl)
    head = b"GET /api/v1/whoami HTTP/1.1\r\n"
    big_headers = b"".join(b"X-%d: " % i + b"b" * 7000 + b"\r\n" for i in range(10))  # each under 8 KB, 70 KB in all
    cases = {
        # source: (request, status, counted reason)
        "127.0.0.2": (head + b"Host: n\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "431 header too long"),
        "127.0.0.3": (
            b"GET /api/v1/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: n\r\n\r\n",
            414,
            "414 request line too long",
        ),
        "127.0.0.4": (head + b"X-H: v\r\n" * 200 + b"\r\n", 431, "431 too many headers"),
        "127.0.0.5": (head + big_headers + b"\r\n", 431, "431 head too large"),
        "127.0.0.6": (b"HELLO \x01 THERE\r\n\r\n", 400, "400 malformed request"),
        "127.0.0.7": (head + b"Host: n\r\nBad Header\r\n\r\n", 400, "400 malformed request"),
    }
    for source, (raw, status, _) in cases.items():
        answer = await exchange_once(nl, raw, source)
        assert answer.status == status, (source, answer)
        assert answer.problem["detail"] and "Got more than" not in answer.problem["detail"]  # not aiohttp's text
    assert (await nl.api("GET", "/api/v1/whoami"))[0] == 200  # the node is well
    refused = await counted(nl, start)
    assert {a: list(e["reasons"].items()) for a, e in refused.items()} == {
        source: [(reason, 1)] for source, (_, _, reason) in cases.items()
    }
    for entry in await audit_entries(nl, start):
        assert len(canonical_json(entry)) <= MAX_ENTRY_BYTES


# -- rate limits ---------------------------------------------------------------------------------------


@SQLITE
async def test_rates_are_limited_per_address_token_and_partner_with_retry_after(
    make_federation: MakeFederation, http: Any
) -> None:
    burst = 3
    fed = await make_federation(
        options={
            "rate_per_address": 0.1,
            "burst_per_address": burst,
            "rate_per_token": 0.1,
            "burst_per_token": burst,
        }
    )
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    officer = {"Authorization": f"Bearer {nl.tokens['officer']}"}
    auditor = {"Authorization": f"Bearer {nl.tokens['auditor']}"}
    client = http(nl, "127.0.0.2")

    async def call(session: aiohttp.ClientSession, path: str, headers: dict[str, str] | None = None) -> Answer:
        async with session.get(path, headers=headers or {}) as resp:
            return Answer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read())

    # A token that authenticates is paid for by its own bucket, not the address's.
    assert (await call(client, "/api/v1/whoami", officer)).status == 200
    assert (await call(client, "/api/v1/whoami", auditor)).status == 200
    # Requests without a known credential: the address's burst, then 429 with Retry-After.
    answers = [await call(client, "/api/v1/whoami") for _ in range(burst)]
    assert [a.status for a in answers] == [401] * burst
    limited = await call(client, "/api/v1/whoami", {"Authorization": "Bearer exch_made_up"})
    assert limited.status == 429 and int(limited.headers["retry-after"]) >= 1
    assert "this address" in limited.problem["detail"]
    # ... in the console too, as an HTML page that carries the same header.
    page = await call(client, "/console/sign-in")
    assert page.status == 429 and page.headers["content-type"].startswith("text/html")
    assert int(page.headers["retry-after"]) >= 1
    # Another address is not affected; the known token is, only by its own bucket.
    assert (await call(http(nl, "127.0.0.3"), "/api/v1/whoami")).status == 401
    statuses = [(await call(client, "/api/v1/whoami", officer)).status for _ in range(burst)]
    assert statuses == [200] * (burst - 1) + [429]  # one was taken when it first authenticated
    limited = await call(client, "/api/v1/whoami", officer)
    assert limited.status == 429 and "this user" in limited.problem["detail"]
    assert int(limited.headers["retry-after"]) >= 1
    assert (await call(client, "/api/v1/whoami", auditor)).status == 200  # another token has its own
    # A token not seen before is charged to its address, which is empty: made-up tokens buy nothing.
    assert (await call(client, "/api/v1/whoami", {"Authorization": f"Bearer {nl.tokens['admin']}"})).status == 429
    # Partners are limited per node, by their certificate.
    assert (await call(http(nl, peer=ke), "/fed/v1/channels/c2c/events")).status == 200


@SQLITE
async def test_a_partner_past_its_rate_gets_429_with_retry_after(make_federation: MakeFederation, http: Any) -> None:
    fed = await make_federation(options={"rate_per_peer": 0.1, "burst_per_peer": 5})
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    partner = http(nl, "127.0.0.2", peer=ke)
    statuses = []
    for _ in range(10):
        async with partner.get("/fed/v1/channels/c2c/events") as resp:
            statuses.append(resp.status)
            if resp.status == 429:
                assert int(resp.headers["Retry-After"]) >= 1
                assert resp.content_type == "application/problem+json"
                assert "partner node" in (await resp.json())["detail"]
    # ke's own traffic to nl (catch-up, audit) may have taken some of the burst already.
    assert set(statuses) == {200, 429} and statuses[-1] == 429 and statuses.count(200) <= 5
    assert (await nl.api("GET", "/api/v1/whoami"))[0] == 200  # local users are not affected


# -- the audit of refusals: bounded -----------------------------------------------------------------


@SQLITE
async def test_a_flood_of_refusals_is_counted_and_every_entry_stays_small(
    make_federation: MakeFederation, http: Any
) -> None:
    fed = await make_federation(options={"rate_per_address": 10_000, "burst_per_address": 10_000})
    nl = fed["nl-customs"]
    start = await log_size(nl)
    hostile = '"\\\u202e\u0000' * 300 + "€" * 200  # quotes, backslashes, a bidi override, NULs, 3-byte characters
    client = http(nl, "127.0.0.2")
    flood = 300
    for _ in range(flood):
        async with client.get("/api/v1/nothing/" + hostile, headers={"Authorization": "Bearer " + "A" * 200}) as resp:
            assert resp.status == 404
    exact = [e for e in await audit_entries(nl, start) if e["event"] == "request.rejected"]
    assert len(exact) == nl.config.refusals_exact_per_address == 10
    assert await log_size(nl) - start == 10  # not one entry a request
    refused = await counted(nl, start)
    assert refused["127.0.0.2"]["count"] == flood - 10
    assert refused["127.0.0.2"]["reasons"] == {"404 Not Found": flood - 10}
    assert refused["127.0.0.2"]["sample"].startswith("GET /api/v1/nothing/")

    # An authenticated user is accountable: an exact entry, but no longer 1 MB of it.
    big = {"kind": "alert", "title": hostile * 500, "body": hostile}  # about 1 MB
    status, _, _ = await nl.api("POST", "/api/v1/channels/c2c/bulletins", body=big)
    assert 400 <= status < 500
    status, _, _ = await nl.api("GET", "/api/v1/bulletins/" + hostile[:3000])
    assert 400 <= status < 500
    mine = [e for e in await audit_entries(nl, start) if e.get("user") == "officer"]
    assert len(mine) == 2
    sizes = [len(canonical_json(e)) for e in await audit_entries(nl, start)]
    print(f"\n{flood + 2} refusals wrote {len(sizes)} audit entries of {min(sizes)}-{max(sizes)} bytes")
    assert max(sizes) <= MAX_ENTRY_BYTES


# -- the pieces, without a node --------------------------------------------------------------------


class FlakyStore:
    """Stands in for the store: fails its first `failures` writes, then keeps what it is given."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.entries: list[dict[str, Any]] = []

    async def write(self, job: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise Unavailable("the database is away")
        buffer = AuditBuffer(next_idx=len(self.entries))
        await job(None, buffer)
        self.entries += [json.loads(row["entry"]) for row in buffer.rows]

    async def audit(self, entry: Any) -> None:
        async def job(conn: Any, audit: AuditBuffer) -> None:
            audit.add(entry)

        await self.write(job)


def test_no_entry_exceeds_its_bound_whatever_the_client_sends() -> None:
    worst = '"\\' * 300 + "\U0001f600" * 300 + "\u0000\u202e" * 300
    entry = rejected_entry(worst, worst, 499, worst, worst, None, worst)
    sized = {"idx": 10**15, **entry}
    assert len(canonical_json(sized)) <= MAX_ENTRY_BYTES, len(canonical_json(sized))
    assert "\u202e" not in entry["path"] and "\u0000" not in entry["reason"] and entry["path"].endswith("…")
    tally = _Tally()
    for i in range(50):
        tally.add(clip(f"4{i:02d} {worst}", 28), 10**9)
    tally.sample = clip(worst, 80)
    summary: dict[str, Any] = {"idx": 10**15, **summary_entry(worst, tally, "2025-01-01T00:00:00.000Z")}
    assert len(summary["reasons"]) == 4 and summary["reasons"]["other"] == 47 * 10**9
    assert len(canonical_json(summary)) <= MAX_ENTRY_BYTES, len(canonical_json(summary))
    assert clip("short", 10) == "short" and clip("a" * 20, 10) == "a" * 7 + "…"


def test_limits_and_counts_apply_to_an_ipv4_address_or_an_ipv6_64() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key(None) == "unknown" and client_key("not an address" * 10) == clip("not an address" * 10, 46)


async def test_counts_survive_a_failed_write_and_are_written_at_close() -> None:
    store = FlakyStore(failures=2)
    refusals = Refusals(store, RefusalSettings(interval=0.05, exact_per_address=1, exact_total=1))  # type: ignore[arg-type]
    for _ in range(3):
        await refusals.record(
            method="GET", path="/x", status=401, reason="no", peer=None, user=None, address="192.0.2.1"
        )
    # The one exact entry the budget allows could not be written: it is counted instead, with the rest.
    assert refusals.pending() == 3 and store.entries == []
    refusals.start()

    async def written() -> bool:
        return any(e["event"] == "requests.refused" for e in store.entries)

    await eventually(written, what="the loop to write the counts after the store came back")
    assert len(store.entries) == 1  # the first flush failed too, and its counts were kept for the next
    summary = store.entries[0]
    assert summary["address"] == "192.0.2.1" and summary["count"] == 3
    assert summary["reasons"] == {"401 Unauthorized": 3}
    # What is counted after that is written when the node stops.
    refusals.count("2001:db8::1", 408, "header timeout")
    await refusals.close()
    assert store.entries[-1]["address"] == "2001:db8::/64" and store.entries[-1]["reasons"] == {"408 header timeout": 1}
    assert refusals.pending() == 0


@SQLITE
async def test_what_is_counted_when_the_node_stops_is_written_before_it_stops(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    nl = fed["nl-customs"]
    nl.service.refusals.count("192.0.2.9", 408, "header timeout", "GET /")
    await fed.stop("nl-customs")
    store = await Store.open(nl.config.database_url, node=nl.id)
    try:
        async with store.read() as conn:
            entries = [json.loads(e) for e in (await conn.execute(sa.select(audit_log.c.entry))).scalars()]
    finally:
        await store.close()
    counted = [e for e in entries if e["event"] == "requests.refused"]
    assert [(e["address"], e["reasons"], e["sample"]) for e in counted] == [
        ("192.0.2.9", {"408 header timeout": 1}, "GET /")
    ]
