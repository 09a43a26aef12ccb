"""Peak memory of a real node process for a maximum-size hostile body of each kind (must-show 3).

    .venv/bin/python bench/hostile_memory.py               # every kind (about 30 seconds)
    .venv/bin/python bench/hostile_memory.py --only fed-   # the kinds whose name starts so
    .venv/bin/python bench/hostile_memory.py --postgres    # the node on PostgreSQL (127.0.0.1:5432)

It provisions a two-node federation in a temporary folder (as tests/conftest.py does), runs
nl-customs as a separate `exchange node run` process, and for each kind of body: starts the node
afresh, warms it up with one small legitimate request of each API, resets the process's peak
resident set (`/proc/<pid>/clear_refs`), sends the body once (federation bodies with ke-customs'
roster certificate, client bodies with the officer's token), and reads the peak (`VmHWM`). It
prints the answer, the peak growth and its ratio to the body's size. The target is about 5x.
With --postgres the node keeps its data in a fresh PostgreSQL database (dropped at the end)
instead of a SQLite file, whose library works inside the node's process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exchange.config import NodeConfig
from exchange.crypto import canonical_json, strict_loads
from exchange.crypto.encoding import BYTES_PER_VALUE
from exchange.keystore import read_file
from exchange.model import MAX_CIPHERTEXT, SignedRoster
from exchange.node import app as node_app, client_api, federation_api
from exchange.node.tls import client_context, peer_context
from exchange.provision import init_federation
from tests.chaos import NodeProcess
from tests.conftest import PG_ADMIN_URL, write_federation
from tests.protocol.test_bounds import largest_bulletin

TARGET, PEER = "nl-customs", "ke-customs"
NODES = {TARGET: ("NL", "customs"), PEER: ("KE", "customs")}
CHANNEL = {
    "id": "c2c",
    "owner": TARGET,
    "agencies": ["customs"],
    "members": {TARGET: ["read", "post", "admin"], PEER: ["read", "post"]},
}
POSTS = "/api/v1/channels/c2c/bulletins"
TRANSACTIONS = "/fed/v1/envelopes"
MiB = 1024 * 1024


def route_limit(module: object, names: tuple[str, ...]) -> int:
    """The body limit the node adapter sets for a route, or the application-wide request limit."""
    for name in names:
        if isinstance(value := getattr(module, name, None), int):
            return value
    return int(node_app.MAX_REQUEST_BYTES)


CLIENT_LIMIT = route_limit(client_api, ("BULLETIN_BODY",))
FED_LIMIT = route_limit(federation_api, ("TRANSACTION_BODY", "MAX_TRANSACTION_BODY", "FED_BODY"))


def filled(head: bytes, item: bytes, tail: bytes, size: int, sep: bytes = b",") -> bytes:
    """head + items joined by sep + tail, with as many items as fit in `size` bytes."""
    n = max(1, (size - len(head) - len(tail) + len(sep)) // (len(item) + len(sep)))
    return head + sep.join([item] * n) + tail


def header() -> dict[str, object]:
    """A schema-valid envelope header (its signature will not verify)."""
    return {
        "v": 1,
        "suite": "x25519-hkdfsha256-aes256gcm",
        "channel": "c2c",
        "author": PEER,
        "signer": "0" * 16,
        "seq": 1,
        "state": {"owner": TARGET, "pos": 0, "hash": "0" * 64},
        "recipients": [{"node": TARGET, "kid": "0" * 16}],
        "handling": {"tlp": "AMBER", "no_onward_sharing": False},
        "created": "2025-03-14T09:26:53.589Z",
        "nonce": "A" * 16,
        "key_commitment": "A" * 43,
        "ciphertext_sha256": "A" * 43,
    }


def densest(size: int) -> bytes:
    """The most objects the value budget lets through: {"a":[]} (3 of , : [ {) per 20 bytes, padded."""
    item = b'{"a":[]}'.ljust(4 * BYTES_PER_VALUE - 1)
    return filled(b"[", item, b"]", size)


def fed_valid_shape(size: int) -> bytes:
    """Envelopes that pass the schema (the largest ciphertexts it allows), signatures that do not verify."""
    env = {"header": header(), "wraps": ["A" * 107], "ciphertext": "A" * MAX_CIPHERTEXT, "signature": "A" * 86}
    one = canonical_json(env)
    return filled(b'{"txn":"t","envelopes":[', one, b"]}", size)


def client_largest(size: int) -> bytes:
    body = canonical_json(largest_bulletin().model_dump(mode="json"))
    if len(body) > size:
        raise SystemExit(f"the largest bulletin ({len(body)} bytes) exceeds the route limit {size}")
    return body


@dataclass(frozen=True)
class Kind:
    name: str
    route: str  # "client" or "fed"
    make: Callable[[int], bytes]
    what: str


KINDS = [
    Kind(
        "client-invalid-list",
        "client",
        lambda n: filled(b'{"kind":"alert","title":"t","indicators":{"airports":[', b'"xx"', b"]}}", n),
        "a post with a list of invalid airports",
    ),
    Kind(
        "client-bounded-list",
        "client",
        lambda n: filled(b'{"kind":"alert","title":"t","indicators":{"airports":[', b'"xx"'.ljust(30), b"]}}", n),
        "the same list padded under the value budget, so it is parsed",
    ),
    Kind("client-huge-int", "client", lambda n: b'{"kind":"alert","seq":' + b"9" * (n - 30) + b"}", "one huge integer"),
    Kind("client-deep-nesting", "client", lambda n: b"[" * (n // 2) + b"]" * (n // 2), "[[[[...]]]]"),
    Kind("client-densest", "client", densest, "the most objects the value budget allows"),
    Kind("client-largest", "client", client_largest, "the largest valid bulletin (201, stored)"),
    Kind(
        "fed-invalid-wraps",
        "fed",
        lambda n: filled(
            b'{"txn":"t","envelopes":[{"header":' + canonical_json(header()) + b',"wraps":[',
            b'"!!"',
            b'],"ciphertext":"AA","signature":"AA"}]}',
            n,
        ),
        "an envelope with a list of invalid wraps",
    ),
    Kind("fed-huge-int", "fed", lambda n: b'{"txn":"t","envelopes":[],"n":' + b"9" * (n - 40) + b"}", "a huge integer"),
    Kind("fed-deep-nesting", "fed", lambda n: b"[" * (n // 2) + b"]" * (n // 2), "[[[[...]]]]"),
    Kind("fed-densest", "fed", densest, "the most objects the value budget allows"),
    Kind("fed-valid-shape", "fed", fed_valid_shape, "schema-valid envelopes at the limit, bad signatures"),
]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


class Target:
    """The node under test, with the two ways in: the client API and the federation API."""

    def __init__(self, folder: Path) -> None:
        nodes = folder / "nodes"
        self.node = NodeProcess(nodes / f"{TARGET}.toml", folder / f"{TARGET}.log")
        self.config = self.node.config
        peer = NodeConfig.load(nodes / f"{PEER}.toml", environ={})
        roster = SignedRoster.model_validate(strict_loads(read_file(self.config.roster_path))).roster
        me = next(n for n in roster.nodes if n.id == TARGET)
        self.fed_ctx = peer_context(me, peer.keys_dir / "tls.crt", peer.keys_dir / "tls.key")
        self.client_ctx = client_context(read_file(self.config.keys_dir / "tls.crt").decode())
        self.token = (self.config.keys_dir / "tokens" / "officer").read_text().strip()

    @property
    def pid(self) -> int:
        assert self.node.proc is not None
        return self.node.proc.pid

    async def start(self) -> None:
        self.node.start()
        await self.node.ready()

    def stop(self) -> None:
        if self.node.proc is not None:
            self.node.kill(15)

    async def send(self, route: str, body: bytes) -> tuple[int, str, float]:
        """Send one body; (status, start of the answer, seconds)."""
        if route == "fed":
            ctx, path, headers = self.fed_ctx, TRANSACTIONS, {}
        else:
            ctx, path, headers = self.client_ctx, POSTS, {"Authorization": f"Bearer {self.token}"}
        headers["Content-Type"] = "application/json"
        started = time.perf_counter()
        timeout = aiohttp.ClientTimeout(total=300)
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), timeout=timeout) as session,
            session.post(self.config.endpoint + path, data=body, headers=headers) as resp,
        ):
            text = await resp.text()
        return resp.status, text, time.perf_counter() - started

    async def warm_up(self) -> None:
        """One small request of each kind, so that what is loaded once is not counted."""
        post = json.dumps({"kind": "alert", "title": "warm-up", "body": "x"}).encode()
        status, text, _ = await self.send("client", post)
        if status != 201:
            raise SystemExit(f"warm-up post refused: {status} {text[:200]}")
        await self.send("fed", b'{"txn":"t","envelopes":[{"header":{}}]}')
        await self.send("client", b'{"kind":"alert","title":"t","indicators":{"airports":["xx"]}}')


def detail(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return text[:70]
    if isinstance(body, dict) and "detail" in body:
        return str(body.get("title", "")) + ": " + str(body["detail"])[:70]
    return "created" if isinstance(body, dict) and "id" in body else text[:70]


async def measure(target: Target, kind: Kind, limit: int) -> str:
    body = kind.make(limit)
    await target.start()
    try:
        await target.warm_up()
        pid = target.pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS now
        before = proc_status(pid)
        status, text, seconds = await target.send(kind.route, body)
        after = proc_status(pid)
    finally:
        target.stop()
    growth = after["VmHWM"] - before["VmRSS"]
    return (
        f"{kind.name:<20} {len(body) / MiB:6.2f} MiB  {status}  {seconds:6.2f}s  "
        f"rss {before['VmRSS'] / MiB:5.0f} -> peak {after['VmHWM'] / MiB:5.0f} MiB  "
        f"growth {growth / MiB:6.1f} MiB = {growth / len(body):4.1f}x   {detail(text)}"
    )


async def run(only: str, postgres: bool) -> None:
    database = f"ex_hostile_memory_{os.getpid()}" if postgres else None
    if database:
        admin = await asyncpg.connect(PG_ADMIN_URL)
        await admin.execute(f'CREATE DATABASE "{database}"')
        await admin.close()
    try:
        await run_in(only, database)
    finally:
        if database:
            admin = await asyncpg.connect(PG_ADMIN_URL)
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await admin.close()


async def run_in(only: str, database: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="exchange-hostile-") as tmp:
        folder = Path(tmp)
        urls = {TARGET: f"postgresql+asyncpg://root@127.0.0.1:5432/{database}"} if database else {}
        write_federation(folder / "nodes", NODES, [CHANNEL], urls)
        await init_federation(folder / "nodes")
        target = Target(folder)
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} cores")
        print(f"route limits: client post {CLIENT_LIMIT / MiB:.2f} MiB, transaction {FED_LIMIT / MiB:.2f} MiB")
        store = "PostgreSQL at 127.0.0.1:5432" if database else "SQLite"
        print(f"python {sys.version.split()[0]}; {store}; a fresh node per body, after a warm-up\n")
        for kind in KINDS:
            if not kind.name.startswith(only):
                continue
            limit = CLIENT_LIMIT if kind.route == "client" else FED_LIMIT
            try:
                print(await measure(target, kind, limit), flush=True)
            except Exception:
                print(f"{kind.name}: the node failed; its log: {folder / (TARGET + '.log')}")
                print(Path(folder / f"{TARGET}.log").read_text()[-3000:])
                raise
        print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only the kinds whose name starts with this")
    parser.add_argument("--postgres", action="store_true", help="keep the node's data in PostgreSQL, not SQLite")
    args = parser.parse_args()
    asyncio.run(run(args.only, args.postgres))


if __name__ == "__main__":
    main()
