"""Shared fixtures: real federations of real nodes on loopback, over mutual TLS, on SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import random
import re
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import async_playwright

from exchange.app import RunningNode, start_node
from exchange.clock import timestamp
from exchange.config import NodeConfig
from exchange.errors import StateUnavailable
from exchange.keystore import NodeKeyFiles
from exchange.model import Bulletin, Envelope, NodeId
from exchange.node.tls import client_context, peer_context
from exchange.protocol.envelope import build_envelope
from exchange.provision import init_federation
from exchange.service.node import NodeService

PG_ADMIN_URL = "postgresql://root@127.0.0.1:5432/test"
REQUIRE_PG = os.environ.get("EXCHANGE_REQUIRE_POSTGRES") == "1"
# The console tests drive Debian's chromium through Playwright, which never downloads a browser.
CHROMIUM = Path("/usr/bin/chromium")
REQUIRE_BROWSER = os.environ.get("EXCHANGE_REQUIRE_BROWSER") == "1"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


_GIVEN: set[int] = set()  # ports free_port handed out in this run


def _ports() -> range:
    """The ports this test process hands out: 20000-31999, or its share of them under
    `pytest -n N` (each worker its own slice, so two workers never take the same port)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or "1")
    k = int(worker[2:]) if worker[:2] == "gw" and worker[2:].isdigit() else 0
    width = 12000 // max(1, count)
    return range(20000 + k * width, 20000 + (k + 1) * width)


def free_port() -> int:
    """A port free now, below the ephemeral range (32768 and up on Linux): a port the kernel hands
    out is also what the suite's own outgoing connections get, and one of them could take it
    between this check and the node's bind ("address already in use"). Never the same port twice
    in one run: a federation takes its nodes' ports before any of them binds."""
    ports = _ports()
    for _ in range(200):
        port = random.choice(ports)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _GIVEN.add(port)
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _pg_available() -> str | None:
    try:
        import asyncpg

        conn = await asyncio.wait_for(asyncpg.connect(PG_ADMIN_URL), 5)
        await conn.close()
        return None
    except Exception as exc:  # any failure means: no usable server here
        return f"PostgreSQL not reachable at 127.0.0.1:5432 ({type(exc).__name__}: {exc})"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """A factory of fresh, empty databases of the parametrised kind, dropped afterwards."""
    created: list[str] = []
    if request.param == "postgres":
        reason = await _pg_available()
        if reason:
            if REQUIRE_PG:
                pytest.fail(reason + " and EXCHANGE_REQUIRE_POSTGRES=1")
            pytest.skip(reason)
    import asyncpg

    async def make(name: str) -> str:
        if request.param == "sqlite":
            return ""
        db = f"ex_{name.replace('-', '_')}_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(PG_ADMIN_URL)
        await conn.execute(f'CREATE DATABASE "{db}"')
        await conn.close()
        created.append(db)
        return f"postgresql+asyncpg://root@127.0.0.1:5432/{db}"

    yield make
    if created:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        for db in created:
            await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.close()


@dataclass
class Member:
    """One running node of a test federation, with its people's tokens."""

    config: NodeConfig
    node: RunningNode | None
    tokens: dict[str, str]

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def service(self) -> NodeService:
        assert self.node is not None
        return self.node.service

    async def api(
        self, method: str, path: str, *, user: str = "officer", body: Any = None, token: str | None = None
    ) -> tuple[int, Any, str]:
        """Call the client API as a local user; returns (status, JSON body, content type)."""
        ctx = client_context(NodeKeyFiles(self.config.keys_dir).presented_pem())
        headers = {}
        if user:
            headers["Authorization"] = f"Bearer {token or self.tokens[user]}"
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
            session.request(
                method,
                self.config.endpoint + path,
                data=None if body is None else io.BytesIO(json.dumps(body).encode()),
                headers={**headers, "Content-Type": "application/json"},
            ) as resp,
        ):
            raw = await resp.read()
            return resp.status, json.loads(raw) if raw else None, resp.content_type

    async def fed_post(
        self, sender: Member, body: bytes, path: str = "/fed/v1/envelopes", headers: dict[str, str] | None = None
    ) -> tuple[int, Any, str]:
        """Call this node's federation API as `sender` does: with `sender`'s roster certificate."""
        roster_node = self.service.fed.node(self.id)
        ctx = peer_context(roster_node, sender.config.keys_dir / "tls.crt", sender.config.keys_dir / "tls.key")
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
            session.post(
                self.config.endpoint + path,
                data=io.BytesIO(body),
                headers={"Content-Type": "application/json", **(headers or {})},
            ) as resp,
        ):
            raw = await resp.read()
            return resp.status, json.loads(raw) if raw else None, resp.content_type


@dataclass
class Federation:
    folder: Path
    members: dict[str, Member] = field(default_factory=dict)

    def __getitem__(self, node_id: str) -> Member:
        return self.members[node_id]

    async def start(self, node_id: str) -> None:
        member = self.members[node_id]
        member.node = await start_node(member.config)

    async def stop(self, node_id: str) -> None:
        member = self.members[node_id]
        if member.node is not None:
            await member.node.stop()
            member.node = None


DEFAULT_NODES = {
    "nl-customs": ("NL", "customs"),
    "ke-customs": ("KE", "customs"),
    "gb-avsec": ("GB", "aviation-security"),
    "wco-rilo": ("BE", "international"),
}


# A node's PostgreSQL pool in tests: 8 with two test processes; fewer with more, so that what
# they hold at once stays under max_connections (at -n 4 with 8 each, 99 of 100 were seen).
DATABASE_CONNECTIONS = max(3, min(8, 20 // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))


def write_federation(
    folder: Path,
    nodes: dict[str, tuple[str, str]],
    channels: list[dict[str, Any]],
    db_urls: dict[str, str],
    options: dict[str, Any] | None = None,
) -> None:
    """Write a federation folder the way an operator would, with free loopback ports."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["[federation]", 'name = "test federation"', 'keys_dir = "../keys"', 'data_dir = "../var"', ""]
    for ch in channels:
        members = ", ".join(f'"{n}" = {json.dumps(r)}' for n, r in ch["members"].items())
        lines += [
            "[[channel]]",
            f'id = "{ch["id"]}"',
            f'owner = "{ch["owner"]}"',
            f'title = "{ch["id"]}"',
            f"agencies = {json.dumps(ch['agencies'])}",
            f'tlp = "{ch.get("tlp", "AMBER")}"',
            f"members = {{ {members} }}",
            "",
        ]
    (folder / "federation.toml").write_text("\n".join(lines))
    # No crypto worker processes unless a test asks (tests/test_crypto_workers.py): each is an
    # interpreter to start, and the suite starts hundreds of nodes on a 2-core machine.
    settings = {
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 0.5,
        "request_timeout_seconds": 5,
        "crypto_workers": 0,
        # Epochs come when a post needs them, at a moment the test knows; made ahead of posts in
        # tests/test_epoch_prefetch.py.
        "epoch_prefetch_seconds": 0,
        # PostgreSQL: the test processes' federations (up to four nodes each, six in a few)
        # stay under the server's default max_connections (100); a node's default is 15.
        "database_connections": DATABASE_CONNECTIONS,
        **(options or {}),
    }
    for node_id, (country, agency) in nodes.items():
        extra = f'database_url = "{db_urls[node_id]}"\n' if db_urls.get(node_id) else ""
        extra += "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())
        (folder / f"{node_id}.toml").write_text(
            f'[node]\nid = "{node_id}"\nname = "Test {node_id}"\ncountry = "{country}"\nagency = "{agency}"\n'
            f"port = {free_port()}\n{extra}"
        )


MakeFederation = Callable[..., Awaitable[Federation]]


@pytest.fixture
async def make_federation(tmp_path: Path, database: Callable[[str], Awaitable[str]]) -> AsyncIterator[MakeFederation]:
    """make_federation(nodes=..., channels=..., start=True) provisions and starts a federation."""
    feds: list[Federation] = []

    async def make(
        nodes: dict[str, tuple[str, str]] | None = None,
        channels: list[dict[str, Any]] | None = None,
        start: bool = True,
        options: dict[str, Any] | None = None,
        announced: bool = True,
    ) -> Federation:
        """`announced` (with envelope_v2, once started): each channel's owner holds every reader's
        v2 announcement before this returns. An owner's first post fetches them and falls back to
        v1 if a fetch times out (as designed), which CI's load made happen to tests that take the
        first post for epoch 0."""
        nodes = nodes or {k: DEFAULT_NODES[k] for k in ("nl-customs", "ke-customs")}
        if channels is None:
            channels = [
                {
                    "id": "c2c",
                    "owner": next(iter(nodes)),
                    "agencies": ["customs"],
                    "members": {
                        n: ["read", "post"] + (["admin"] if i == 0 else [])
                        for i, n in enumerate(nodes)
                        if nodes[n][1] == "customs"
                    },
                }
            ]
        folder = tmp_path / f"fed{len(feds)}" / "nodes"
        db_urls = {n: await database(n) for n in nodes}
        write_federation(folder, nodes, channels, db_urls, options)
        await init_federation(folder)
        fed = Federation(folder)
        for node_id in nodes:
            cfg = NodeConfig.load(folder / f"{node_id}.toml", environ={})
            tokens = {p.name: p.read_text().strip() for p in (cfg.keys_dir / "tokens").iterdir()}
            fed.members[node_id] = Member(cfg, None, tokens)
        feds.append(fed)
        if start:
            for node_id in nodes:
                await fed.start(node_id)
            if announced and (options or {}).get("envelope_v2"):
                for spec in channels:
                    readers = [n for n, rights in spec["members"].items() if "read" in rights]
                    await owner_holds_announcements(fed[spec["owner"]], readers)
        return fed

    yield make
    for fed in feds:
        for node_id in list(fed.members):
            await fed.stop(node_id)


async def owner_holds_announcements(owner: Member, readers: list[str]) -> None:
    """Wait until `owner` holds each reader's answer to its v2 announcement (support or none)."""
    book = owner.service.epochs

    async def held() -> bool:
        try:
            await book.wrap_key_ids(readers, strict=True)
        except StateUnavailable:
            return False
        return True

    await eventually(held, timeout=30, what=f"every reader's v2 announcement at {owner.service.me}")


def authored(
    member: Member, bulletin: Bulletin, channel: str = "c2c", seq: int = 1, state_of: Member | None = None
) -> Envelope:
    """An envelope exactly as `member` would author it (without posting it), citing the channel
    state that `state_of` holds (by default its own: an attacker may cite someone else's)."""
    svc = member.service
    state = (state_of or member).service.channels.state(channel)
    readers = [(NodeId(n), svc.fed.encryption_key(n)) for n in state.readers]
    return build_envelope(
        bulletin, state=state, author=svc.me, key=svc.keys.signing, seq=seq, readers=readers, created=timestamp()
    )


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `check` until it is true or the deadline passes (no fixed sleeps in tests)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not CHROMIUM.exists():
        reason = f"no browser at {CHROMIUM} (apt-get install chromium)"
        if REQUIRE_BROWSER:
            pytest.fail(reason + " and EXCHANGE_REQUIRE_BROWSER=1")
        pytest.skip(reason)
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@contextlib.asynccontextmanager
async def console_session(member: Member, user: str, password: str) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTPS session to `member`'s console, signed in as `user` (its password set first)."""
    ctx = client_context((member.config.keys_dir / "tls.crt").read_text())
    url = member.config.endpoint
    async with aiohttp.ClientSession(
        base_url=url, connector=aiohttp.TCPConnector(ssl=ctx), cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as http:
        async with http.get("/console/sign-in") as resp:
            token = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
        assert token is not None
        form = {"csrf": token.group(1), "user": user, "password": password, "next": ""}
        async with http.post("/console/sign-in", data=form, allow_redirects=False) as resp:
            assert resp.status == 303, await resp.text()
        yield http
