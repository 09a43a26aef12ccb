"""Issue 11, must-show 2: a new administration joins a running federation across hosts.

Every node is its own `exchange node run` process in its own network namespace, with its own
address and its own folder (tests/netns.py); the authority's holders and the proposer are offline
"machines" (namespaces with loopback only). Nothing is shared between hosts but the files an
administrator would carry: holders' public keys, the join request, the proposal, signature files
and the signed versions. The three nodes of the running federation were provisioned the release
0.1.0 way (`exchange federation init`, one folder, then each node's folder carried to its host);
the authority migrates them to roster v2 (2 of 3 holders and the v1 key sign version 1) and admits
the newcomer in version 2 (2 of 3 sign). Both versions are imported at ONE running node, the
newcomer takes the chain itself, and the other nodes converge by gossip. The newcomer is invited to
the channel, reads a bulletin and answers it, and the others receive the answer.

In-process counterpart: tests/test_roster_runtime.py::test_a_newcomer_joins_by_roster_v2_and_exchanges_bulletins.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from exchange.store.tables import bulletins, roster_versions
from tests.conftest import PG_ADMIN_URL, REQUIRE_PG, _pg_available
from tests.netns import PORT, Host, Network, require, until

pytestmark = [pytest.mark.netns, pytest.mark.slow]

OLD = {"nl-customs": "NL", "ke-customs": "KE", "de-customs": "DE"}
NEW, OWNER, IMPORTER = "za-customs", "nl-customs", "nl-customs"
HOLDERS = {"wco": "WCO Secretariat", "icao": "ICAO", "rilo": "RILO Eastern and Southern Africa"}
FEDERATION = "test federation"
PG_SOCKET = "/var/run/postgresql"  # nodes in namespaces cannot reach 127.0.0.1:5432 of the machine
SETTINGS = "retry_base_seconds = 0.1\nretry_max_seconds = 1.0\nrequest_timeout_seconds = 10\ncrypto_workers = 0\n"

POST = ["--channel", "c2c", "--json", "--kind"]  # then the kind

DatabaseUrl = Callable[[str, Path], Awaitable[str]]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest) -> AsyncIterator[DatabaseUrl]:
    """database_url(node_id, host_folder): a fresh database for one node, reached from inside its
    namespace (a file in its folder, or PostgreSQL over the Unix socket); dropped afterwards."""
    created: list[str] = []
    if request.param == "postgres":
        reason = await _pg_available()
        if reason:
            if REQUIRE_PG:
                pytest.fail(reason + " and EXCHANGE_REQUIRE_POSTGRES=1")
            pytest.skip(reason)
    import asyncpg

    async def make(node_id: str, folder: Path) -> str:
        if request.param == "sqlite":
            (folder / "var").mkdir(parents=True, exist_ok=True)
            return f"sqlite+aiosqlite:///{folder / 'var' / (node_id + '.db')}"
        db = f"ex_{node_id.replace('-', '_')}_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(PG_ADMIN_URL)
        await conn.execute(f'CREATE DATABASE "{db}"')
        await conn.close()
        created.append(db)
        return f"postgresql+asyncpg://root@/{db}?host={PG_SOCKET}"

    yield make
    if created:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        for db in created:
            await conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await conn.close()


@pytest.fixture
def network(tmp_path: Path) -> Any:
    require()
    net = Network(tmp_path / "hosts")
    try:
        yield net
    finally:
        net.close()


def carry(src: Host, path: str, dst: Host, to: str | None = None) -> str:
    """Copy one public file from one host's folder to another's, as an administrator would."""
    target = dst.folder / (to or Path(path).name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src.folder / path, target)
    return str(target.relative_to(dst.folder))


def write_node_file(folder: Path, node_id: str, country: str, address: str, url: str) -> str:
    nodes = folder / "nodes"
    nodes.mkdir(parents=True, exist_ok=True)
    if not (nodes / "federation.toml").exists():
        (nodes / "federation.toml").write_text(
            f'[federation]\nname = "{FEDERATION}"\nkeys_dir = "../keys"\ndata_dir = "../var"\n'
        )
    (nodes / f"{node_id}.toml").write_text(
        f'[node]\nid = "{node_id}"\nname = "Test {node_id}"\ncountry = "{country}"\nagency = "customs"\n'
        f'host = "{address}"\npublic_host = "{address}"\nport = {PORT}\n'
        + (f'database_url = "{url}"\n' if url else "")
        + SETTINGS
    )
    return f"nodes/{node_id}.toml"


async def holds_version(url: str, version: int) -> bool:
    """Whether a node's database holds roster `version` (read beside the node, as `roster status` does)."""
    held = await _probe(url, sa.select(sa.func.max(roster_versions.c.version)))
    return bool(held == version)


async def holds(url: str, bulletin_id: str) -> bool:
    return await _probe(url, sa.select(bulletins.c.id).where(bulletins.c.id == bulletin_id)) is not None


async def _probe(url: str, query: sa.Select[Any]) -> Any:
    """One value read beside a running node; None while the database cannot answer (a SQLite lock)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(query)).scalar()
    except sa.exc.OperationalError:
        return None
    finally:
        await engine.dispose()


def hash_in(output: str, pattern: str) -> str:
    m = re.search(pattern, output)
    assert m, f"no {pattern!r} in {output}"
    return m.group(1)


async def provision_old_federation(
    net: Network, database_url: DatabaseUrl
) -> tuple[Host, dict[str, Host], dict[str, str]]:
    """Release 0.1.0's way: one folder on the v1 authority's machine makes every key; then each node's
    keys folder, the public roster, authority key and channel files go to that node's own host."""
    v1 = net.add("v1-authority", wired=False)
    hosts = {node_id: net.add(node_id) for node_id in OLD}
    urls = {node_id: await database_url(node_id, hosts[node_id].folder) for node_id in OLD}
    for node_id, country in OLD.items():  # SQLite: in its own data folder, carried to the host below
        url = urls[node_id] if urls[node_id].startswith("postgresql") else ""
        write_node_file(v1.folder, node_id, country, hosts[node_id].address, url)
    members = ", ".join(f'"{n}" = {json.dumps(["read", "post"] + (["admin"] if n == OWNER else []))}' for n in OLD)
    with (v1.folder / "nodes" / "federation.toml").open("a") as fh:
        fh.write(
            f'\n[[channel]]\nid = "c2c"\nowner = "{OWNER}"\ntitle = "c2c"\nagencies = ["customs"]\n'
            f'tlp = "AMBER"\nmembers = {{ {members} }}\n'
        )
    await v1.exchange("federation", "init", "nodes")
    for node_id, host in hosts.items():
        write_node_file(host.folder, node_id, OLD[node_id], host.address, urls[node_id])
        shutil.copytree(v1.folder / "keys" / node_id, host.folder / "keys" / node_id)
        shutil.copytree(v1.folder / "keys" / "channels", host.folder / "keys" / "channels")
        carry(v1, "keys/roster.json", host, "keys/roster.json")
        carry(v1, "keys/federation/authority.pub", host, "keys/federation/authority.pub")
        if not urls[node_id].startswith("postgresql"):
            carry(v1, f"var/{node_id}.db", host, f"var/{node_id}.db")
    return v1, hosts, urls


async def test_a_newcomer_joins_across_hosts_and_answers_bulletins(database_url: DatabaseUrl, network: Network) -> None:
    net = network
    v1, hosts, urls = await provision_old_federation(net, database_url)
    for node_id, host in hosts.items():
        host.start("-v", "node", "run", f"nodes/{node_id}.toml", log=host.folder / "node.log")

    # The authority's holders, each on an offline machine, and the proposer (no private key).
    holders = {slug: net.add(f"holder-{slug}", wired=False) for slug in HOLDERS}
    proposer = net.add("proposer", wired=False)
    await asyncio.gather(*(h.exchange("roster", "keygen", "key", "--holder", HOLDERS[s]) for s, h in holders.items()))
    for slug, holder in holders.items():
        carry(holder, "key/authority.pub.json", proposer, f"{slug}.pub.json")

    # Version 1: the v1 roster migrated; two holders and the v1 authority key sign.
    carry(hosts[OWNER], "keys/roster.json", proposer, "roster-v1.json")
    carry(hosts[OWNER], "keys/federation/authority.pub", proposer, "v1-authority.pub")
    holder_keys = [a for slug in HOLDERS for a in ("--holder-key", f"{slug}.pub.json")]
    out = await proposer.exchange(
        "roster", "migrate", "--v1-roster", "roster-v1.json", "--v1-authority", "v1-authority.pub",
        *holder_keys, "--threshold", "2", "--out", "v1.json",
    )  # fmt: skip
    hash1 = hash_in(out, r"hash: ([0-9a-f]{64})")
    signers1 = [(holders["wco"], "key/authority.key"), (holders["icao"], "key/authority.key")]
    signers1.append((v1, "keys/federation/authority.key"))
    sigs1 = await asyncio.gather(*(sign(proposer, "v1", signer, key, hash1) for signer, key in signers1))
    await proposer.exchange(
        "roster", "combine", "v1.json", *sigs1, "--v1-authority", "v1-authority.pub", "--out", "roster-1.json"
    )

    # The newcomer, on its own host: its keys and a join request, made there.
    za = net.add(NEW)
    za_url = await database_url(NEW, za.folder)
    za_file = write_node_file(za.folder, NEW, "ZA", za.address, za_url)
    made = await za.exchange(
        "node", "init", f"keys/{NEW}", "--federation", FEDERATION, "--id", NEW, "--name", "Test za-customs",
        "--country", "ZA", "--agency", "customs", "--endpoint", f"https://{za.address}:{PORT}",
    )  # fmt: skip
    request_hash = hash_in(made, r"request hash ([0-9a-f]{64})")
    assert not (za.folder / "keys" / "roster.json").exists()  # it holds no v1 roster, and needs none

    # Version 2 admits it; two of the three holders (another pair) sign.
    carry(za, f"keys/{NEW}/join-request.json", proposer, "za-join.json")
    out = await proposer.exchange(
        "roster", "propose", "--held", "roster-1.json", "--join", "za-join.json", "--out", "v2.json"
    )
    assert hash_in(out, rf"join request of {NEW}: hash ([0-9a-f]{{64}})") == request_hash
    hash2 = hash_in(out, r"hash: ([0-9a-f]{64})")
    signers2 = (holders["icao"], holders["rilo"])
    sigs2 = await asyncio.gather(*(sign(proposer, "v2", signer, "key/authority.key", hash2) for signer in signers2))
    await proposer.exchange("roster", "combine", "v2.json", *sigs2, "--held", "roster-1.json", "--out", "roster-2.json")

    # Imported at ONE running node of the federation (the newcomer takes the chain too, before it
    # starts: docs/operations.md, "A new administration joins", step 5); the others learn it by gossip.
    for host in hosts.values():
        await host.ready(host.folder / "node.log")
    chain = [carry(proposer, f"roster-{v}.json", hosts[IMPORTER]) for v in (1, 2)]
    done = await hosts[IMPORTER].exchange(
        "roster", "import", "--node", f"nodes/{IMPORTER}.toml", *chain, "--expect-hash", hash2
    )
    assert "installed roster version 2" in done, done
    chain = [carry(proposer, f"roster-{v}.json", za) for v in (1, 2)]
    await za.exchange("roster", "import", "--node", za_file, *chain, "--expect-hash", hash2)
    tokens = za.folder / "keys" / NEW / "tokens"
    tokens.mkdir(mode=0o700, exist_ok=True)
    for user, role in (("admin", "admin"), ("officer", "contact-point")):
        token = (await za.exchange("users", "add", "--node", za_file, user, "--role", role)).strip()
        (tokens / user).write_text(token + "\n")
        (tokens / user).chmod(0o600)
    za.start("-v", "node", "run", za_file, log=za.folder / "node.log")
    await za.ready(za.folder / "node.log")
    urls[NEW] = za_url

    # Every node converges on version 2 by gossip (a bound, not a speed claim).
    everyone = {**hosts, NEW: za}
    for node_id, url in urls.items():
        await until(lambda url=url: holds_version(url, 2), f"{node_id} holds roster version 2")  # type: ignore[misc]
    shown = await asyncio.gather(
        *(h.exchange("roster", "status", "--node", f"nodes/{n}.toml", "--json") for n, h in everyone.items())
    )
    for status in map(json.loads, shown):
        assert status["version"] == 2 and status["hash"] == hash2 and status["nodes"]["active"] == 4, status

    # The owner invites the newcomer; it accepts and lets its contact point work in the channel.
    owner = hosts[OWNER]
    owner_file = f"nodes/{OWNER}.toml"
    await owner.exchange("channels", "invite", "c2c", NEW, "--rights", "read,post", "--node", owner_file)

    async def invited() -> bool:  # the invited node's administrator sees the channel and the invitation
        out = await za.exchange("channels", "show", "c2c", "--node", za_file, "--user", "admin", "--json", ok=False)
        return out.startswith("{") and NEW in json.loads(out)["invited"]

    async def explain() -> str:  # what the owner's outbox and the newcomer's API say
        peers = await owner.exchange("peers", "--node", owner_file, "--user", "admin", "--json", ok=False)
        shown = await za.exchange("channels", "show", "c2c", "--node", za_file, "--user", "admin", "--json", ok=False)
        return f"{OWNER} peers: {peers}\n{NEW} channels show c2c: {shown}"

    await until(invited, f"the invitation at {NEW}", explain=explain)
    await za.exchange("channels", "accept", "c2c", "--node", za_file)
    await za.exchange("channels", "assign", "c2c", "officer", "--node", za_file)

    async def member_at_owner() -> bool:
        shown = json.loads(
            await owner.exchange("channels", "show", "c2c", "--node", owner_file, "--user", "admin", "--json")
        )
        return NEW in shown["members"]

    await until(member_at_owner, f"{NEW} a member at {OWNER}")

    # A bulletin of an old node reaches the newcomer; it reads it and answers; everyone gets the answer.
    body = ["--body", "Courier on the morning flight", "--awb", "176-12345675"]
    posted = await owner.exchange("post", "--node", owner_file, *POST, "alert", "--title", "Undeclared cash", *body)
    alert = json.loads(posted)
    assert NEW in alert["recipients"], alert
    await until(lambda: holds(za_url, alert["id"]), f"the bulletin at {NEW}")
    inbox = json.loads(await za.exchange("inbox", "--node", za_file, "--channel", "c2c", "--json"))
    assert alert["id"] in json.dumps(inbox), inbox
    read = json.loads(await za.exchange("read", alert["id"], "--node", za_file, "--json"))
    assert read["signature_verified"] is True and read["author"] == OWNER, read
    posted = await za.exchange(
        "post", "--node", za_file, *POST, "feedback", "--title", "Consignment held", "--ref", alert["id"]
    )
    answer = json.loads(posted)
    assert set(OLD) <= set(answer["recipients"]), answer
    for node_id in hosts:
        await until(lambda url=urls[node_id]: holds(url, answer["id"]), f"the answer at {node_id}")  # type: ignore[misc]
    reads = await asyncio.gather(
        *(h.exchange("read", answer["id"], "--node", f"nodes/{n}.toml", "--json") for n, h in hosts.items())
    )
    for got in map(json.loads, reads):
        assert got["author"] == NEW and got["signature_verified"] is True, got
        assert alert["id"] in got["bulletin"]["references"], got


async def sign(proposer: Host, name: str, signer: Host, key: str, expected_hash: str) -> str:
    """One holder signs a proposal on their machine, after comparing its hash with the proposer's."""
    carry(proposer, f"{name}.json", signer)
    shown = await signer.exchange("roster", "sign", f"{name}.json", "--key", key, "--out", f"{name}.sig.json")
    assert hash_in(shown, r"hash: ([0-9a-f]{64})") == expected_hash  # compared out of band before signing
    return carry(signer, f"{name}.sig.json", proposer, f"{name}.{signer.name}.sig.json")
