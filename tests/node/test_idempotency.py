"""Idempotency-Key on the client API's post and forward, on real nodes over TLS (SQLite and PostgreSQL).

A retry with the same key (same user) gets the first answer, same status and body, and creates
nothing: no second bulletin, no second outbox row, no second audit entry. The same key with a
different request is refused (422 problem+json) with nothing stored; a malformed key is refused;
keys are per user and forgotten after their retention. Must show 6: a post whose connection
dropped before its answer, retried with the same key, exists once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import uuid
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from exchange.cli.main import cli
from exchange.clock import timestamp, utc_now
from exchange.keystore import read_file
from exchange.node.tls import client_context
from exchange.service.posting import KEY_RETENTION
from exchange.store import audit_log, bulletins, outbox
from exchange.store.tables import idempotency_keys
from tests.conftest import Federation, MakeFederation, Member, eventually

POSTS = "/api/v1/channels/c2c/bulletins"
BULLETIN = {"kind": "alert", "title": "Undeclared cash in cargo", "body": "Flights via DXB."}


@pytest.fixture
async def fed(make_federation: MakeFederation) -> Federation:
    return await make_federation()


async def send(
    member: Member, path: str, body: Any, key: str | None, *, user: str = "officer"
) -> tuple[int, Any, dict[str, str]]:
    """POST JSON to the client API with an Idempotency-Key; (status, JSON body, headers)."""
    ctx = client_context(read_file(member.config.keys_dir / "tls.crt").decode())
    headers = {"Authorization": f"Bearer {member.tokens[user]}", "Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.post(
            member.config.endpoint + path, data=io.BytesIO(json.dumps(body).encode()), headers=headers
        ) as resp,
    ):
        raw = await resp.read()
        return resp.status, json.loads(raw), dict(resp.headers)


async def rows(member: Member) -> dict[str, int]:
    """How many bulletins, outbox rows, stored keys and bulletin.posted entries the node holds."""
    async with member.service.store.read() as conn:

        async def n(table: sa.Table, *where: Any) -> int:
            return int(await conn.scalar(sa.select(sa.func.count()).select_from(table).where(*where)) or 0)

        return {
            "bulletins": await n(bulletins),
            "outbox": await n(outbox),
            "keys": await n(idempotency_keys),
            "posted": sum(
                json.loads(entry)["event"] == "bulletin.posted"
                for entry in await conn.scalars(sa.select(audit_log.c.entry))
            ),
        }


async def stored_ids(member: Member) -> list[str]:
    async with member.service.store.read() as conn:
        return list(await conn.scalars(sa.select(bulletins.c.id).order_by(bulletins.c.n)))


# -- must show 6: a dropped connection, then a retry ----------------------------------------------


def raw_post(member: Member, key: str) -> bytes:
    body = json.dumps(BULLETIN).encode()
    head = (
        f"POST {POSTS} HTTP/1.1\r\nHost: {member.config.host}\r\n"
        f"Authorization: Bearer {member.tokens['officer']}\r\nContent-Type: application/json\r\n"
        f"Idempotency-Key: {key}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def test_a_post_retried_after_a_dropped_connection_exists_once(fed: Federation) -> None:
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    ctx = client_context(read_file(nl.config.keys_dir / "tls.crt").decode())

    # 1. The whole POST over a raw TLS socket; the node commits it; the socket is closed before a
    #    byte of the answer is read, as when a connection drops while the answer is on its way.
    key = str(uuid.uuid4())
    _, writer = await asyncio.open_connection(nl.config.host, nl.config.port, ssl=ctx)
    writer.write(raw_post(nl, key))
    await writer.drain()

    async def stored(n: int) -> bool:
        return (await rows(nl))["bulletins"] == n

    await eventually(lambda: stored(1), what="the first attempt to be committed")
    writer.transport.abort()
    [first] = await stored_ids(nl)

    # The retry with the same key, through aiohttp: the first answer, and nothing new.
    status, answer, headers = await send(nl, POSTS, BULLETIN, key)
    assert status == 201 and answer["id"] == first, answer
    assert headers.get("Idempotent-Replayed") == "true"
    assert await rows(nl) == {"bulletins": 1, "outbox": 1, "keys": 1, "posted": 1}
    assert await stored_ids(nl) == [first]

    # 2. The socket closed as soon as the request is sent, and the retry sent at once: whether the
    #    node got to commit the first attempt or not, the bulletin exists once and the retry names it.
    key = str(uuid.uuid4())
    _, writer = await asyncio.open_connection(nl.config.host, nl.config.port, ssl=ctx)
    writer.write(raw_post(nl, key))
    await writer.drain()
    writer.close()
    status, answer, _ = await send(nl, POSTS, BULLETIN, key)
    assert status == 201, answer
    await writer.wait_closed()
    await eventually(lambda: stored(2), what="the retried post")
    assert (await stored_ids(nl))[1] == answer["id"]
    assert await rows(nl) == {"bulletins": 2, "outbox": 2, "keys": 2, "posted": 2}

    # Partners get each once.
    async def delivered() -> bool:
        return await stored_ids(ke) == await stored_ids(nl)

    await eventually(delivered, what="the partner to hold both bulletins")


async def test_a_retry_gets_the_first_answer_and_a_changed_request_is_refused(fed: Federation) -> None:
    nl = fed["nl-customs"]
    key = f'"{uuid.uuid4()}"'  # as an RFC 8941 string, as the IETF draft writes it
    status, first, headers = await send(nl, POSTS, BULLETIN, key)
    assert status == 201 and "Idempotent-Replayed" not in headers
    before = await rows(nl)
    assert before == {"bulletins": 1, "outbox": 1, "keys": 1, "posted": 1}

    # The same key, the same request: the same status and body, nothing created.
    for _ in range(2):
        status, again, headers = await send(nl, POSTS, BULLETIN, key)
        assert (status, again) == (201, first) and headers["Idempotent-Replayed"] == "true"
    # The same key without the quotes is the same key.
    assert (await send(nl, POSTS, BULLETIN, key.strip('"')))[:2] == (201, first)
    assert await rows(nl) == before

    # The same key with another body, or for a forward: refused, nothing stored.
    for path, body in (
        (POSTS, {**BULLETIN, "title": "Another title"}),
        (f"/api/v1/bulletins/{first['id']}/forward", {"channel": "c2c"}),
    ):
        status, problem, headers = await send(nl, path, body, key)
        assert status == 422 and headers["Content-Type"].startswith("application/problem+json"), problem
        assert problem["title"] == "Idempotency key reused" and "different request" in problem["detail"]
    assert await rows(nl) == before

    # Without a key, or with a new one, a post is a new post.
    assert (await send(nl, POSTS, BULLETIN, None))[0] == 201
    assert (await send(nl, POSTS, BULLETIN, str(uuid.uuid4())))[0] == 201
    assert (await rows(nl))["bulletins"] == 3


async def test_keys_are_per_user_and_forgotten_after_their_retention(fed: Federation) -> None:
    nl = fed["nl-customs"]
    nl.tokens["colleague"] = await nl.service.users.add("colleague", "contact-point", actor="test")
    await nl.service.users.assign("colleague", "c2c", assigned=True, actor="test")
    key = str(uuid.uuid4())
    status, first, _ = await send(nl, POSTS, BULLETIN, key)
    assert status == 201
    # Another user's key is another key: a colleague who happens to send the same one posts anew.
    status, theirs, headers = await send(nl, POSTS, BULLETIN, key, user="colleague")
    assert status == 201 and theirs["id"] != first["id"] and "Idempotent-Replayed" not in headers
    assert (await rows(nl))["keys"] == 2

    # Past its retention the key is forgotten: the same request is a new post, and the old row goes.
    old = timestamp(utc_now() - KEY_RETENTION - dt.timedelta(minutes=1))

    async def age(conn: Any, audit: Any) -> None:
        await conn.execute(sa.update(idempotency_keys).values(created=old))

    await nl.service.store.write(age)
    status, second, headers = await send(nl, POSTS, BULLETIN, key)
    assert status == 201 and second["id"] != first["id"] and "Idempotent-Replayed" not in headers
    assert (await rows(nl))["keys"] == 1  # the expired rows were pruned in the new post's transaction


async def test_malformed_keys_are_refused_with_nothing_stored(fed: Federation) -> None:
    nl = fed["nl-customs"]
    before = await rows(nl)
    for key in (
        "",
        "short",
        "x" * 129,
        "has space in it 123",
        "ünïcödé-key-1234567",
        '"unterminated-key-12345',
        "a,b" * 8,
    ):
        status, problem, headers = await send(nl, POSTS, BULLETIN, key)
        assert status == 422 and headers["Content-Type"].startswith("application/problem+json"), (key, problem)
        assert "Idempotency-Key must be" in problem["detail"]
    assert await rows(nl) == before


async def test_concurrent_requests_with_one_key_make_one_post(fed: Federation) -> None:
    nl = fed["nl-customs"]
    key = str(uuid.uuid4())
    answers = await asyncio.gather(*(send(nl, POSTS, BULLETIN, key) for _ in range(6)))
    assert {status for status, _, _ in answers} == {201}
    assert len({json.dumps(body, sort_keys=True) for _, body, _ in answers}) == 1
    assert sum(h.get("Idempotent-Replayed") == "true" for _, _, h in answers) == 5
    assert await rows(nl) == {"bulletins": 1, "outbox": 1, "keys": 1, "posted": 1}


async def test_a_forward_retried_with_its_key_is_forwarded_once(make_federation: MakeFederation) -> None:
    channels = [
        {
            "id": "c2c",
            "owner": "nl-customs",
            "agencies": ["customs"],
            "members": {"nl-customs": ["read", "post", "admin"], "ke-customs": ["read", "post"]},
        },
        {
            "id": "other",
            "owner": "nl-customs",
            "agencies": ["customs"],
            "members": {"nl-customs": ["read", "post", "admin"]},
        },
    ]
    fed = await make_federation(channels=channels)
    nl = fed["nl-customs"]
    await nl.service.users.assign("officer", "other", assigned=True, actor="test")
    status, original, _ = await send(
        nl, POSTS, {**BULLETIN, "handling": {"tlp": "GREEN", "no_onward_sharing": False}}, None
    )
    assert status == 201, original
    key = str(uuid.uuid4())
    path = f"/api/v1/bulletins/{original['id']}/forward"
    status, first, headers = await send(nl, path, {"channel": "other"}, key)
    assert status == 201 and "Idempotent-Replayed" not in headers, first
    status, again, headers = await send(nl, path, {"channel": "other"}, key)
    assert (status, again, headers["Idempotent-Replayed"]) == (201, first, "true")
    assert (await rows(nl))["bulletins"] == 2


# -- the CLI sends a key and retries once on a dropped connection ---------------------------------


class DroppingProxy:
    """A TCP proxy in front of a node that drops the first connection once the node has committed
    a new bulletin: the answer to that post never reaches the client (TLS passes through)."""

    def __init__(self, member: Member) -> None:
        self.member = member
        self.connections = 0
        self.dropped = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> int:
        self.base = (await rows(self.member))["bulletins"]
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        drop = self.connections == 1
        up_reader, up_writer = await asyncio.open_connection(self.member.config.host, self.member.config.port)

        async def upstream() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                # The node commits before it answers: once the post is stored, nothing more goes back.
                if drop and (await rows(self.member))["bulletins"] > self.base:
                    self.dropped += 1
                    writer.transport.abort()
                    return
                writer.write(data)
                await writer.drain()

        pumps = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        writer.transport.abort()
        up_writer.transport.abort()


async def test_the_cli_retries_a_dropped_post_once_with_its_key(fed: Federation) -> None:
    nl = fed["nl-customs"]
    node_file = fed.folder / "nl-customs.toml"
    proxy = DroppingProxy(nl)
    async with proxy as port:
        args = ["post", "--node", str(node_file), "--channel", "c2c", "--title", "Dropped once", "--json"]
        result = await asyncio.to_thread(CliRunner().invoke, cli, args, env={"EXCHANGE_PORT": str(port)})
    assert result.exit_code == 0, result.output
    assert (proxy.dropped, proxy.connections) == (1, 2)  # the first answer was lost; one retry
    answer = json.loads(result.stdout)
    assert await stored_ids(nl) == [answer["id"]]
    assert (await rows(nl))["keys"] == 1
