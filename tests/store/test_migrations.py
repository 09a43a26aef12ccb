"""The versioned store: a database written by release 0.1.0 is refused, upgraded, and then reads the same.

The fixture (tests/fixtures/release_0_1_0/, rebuilt by tests/fixtures/make_release_0_1_0.py with
release 0.1.0's own code) holds node nl-customs's database as that release left it, and what the
release answered. Each test loads it into SQLite or into a fresh PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy.ext.asyncio import create_async_engine

from exchange.app import start_node
from exchange.audit.checkpoint import open_checkpoint
from exchange.cli.audit import audit
from exchange.cli.db import db
from exchange.config import NodeConfig
from exchange.crypto import VerifyKey, b64d
from exchange.errors import ConfigError, SchemaOutdated
from exchange.merkle import consistency_proof, leaf_hash, root_from_leaf_hashes, verify_consistency
from exchange.store import Store, metadata, schema
from tests.conftest import free_port

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "release_0_1_0"
EXPECTED: dict[str, Any] = json.loads((FIXTURE / "expected.json").read_text())
NODE = EXPECTED["node"]
REFUSAL = "is at schema 0.1.0 (unversioned); run: exchange db upgrade --node FILE"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Deployed:
    """A node of release 0.1.0 whose database is in place, as an operator finds it before upgrading."""

    folder: Path
    node_file: Path
    url: str
    kind: str

    @property
    def config(self) -> NodeConfig:
        return NodeConfig.load(self.node_file, environ={})


# -- loading the fixture --------------------------------------------------------------------------


def _dump() -> str:
    return (FIXTURE / "nl-customs.sqlite.sql").read_text()


def _statements(sql: str) -> list[str]:
    text = "\n".join(line for line in sql.splitlines() if not line.startswith("--"))
    return [s.strip() for s in text.split(";\n") if s.strip()]


async def _load_postgres(url: str) -> None:
    """Release 0.1.0's PostgreSQL schema (the DDL it ran), then the rows of its SQLite database."""
    source = sqlite3.connect(":memory:")
    source.executescript(_dump())
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        async with conn.transaction():
            for statement in _statements((FIXTURE / "schema.postgresql.sql").read_text()):
                await conn.execute(statement)
            tables = [r[0] for r in source.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                columns = [r[1] for r in source.execute(f'PRAGMA table_info("{table}")')]
                rows = source.execute(f'SELECT * FROM "{table}"').fetchall()
                if rows:
                    await conn.copy_records_to_table(table, records=rows, columns=columns)
            # Serial columns go on after the rows, as in a database that 0.1.0 filled itself.
            serials = await conn.fetch(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND column_default LIKE 'nextval(%'"
            )
            for table, column in serials:
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                    f'coalesce(max("{column}"), 0) + 1, false) FROM "{table}"'
                )
    finally:
        await conn.close()
        source.close()


@pytest.fixture
async def deployed(tmp_path: Path, database: Callable[[str], Awaitable[str]]) -> Deployed:
    """The fixture's federation folder in tmp_path and nl-customs's 0.1.0 database in SQLite or PostgreSQL."""
    shutil.copytree(FIXTURE / "nodes", tmp_path / "nodes")
    shutil.copytree(FIXTURE / "keys", tmp_path / "keys")
    url = await database(NODE)
    if url:
        await _load_postgres(url)
        kind = "postgres"
    else:
        (tmp_path / "var").mkdir()
        path = tmp_path / "var" / f"{NODE}.db"
        with sqlite3.connect(path) as conn:
            conn.executescript(_dump())
        conn.close()
        url = f"sqlite+aiosqlite:///{path}"
        kind = "sqlite"
    node_file = tmp_path / "nodes" / f"{NODE}.toml"
    if kind == "postgres":
        node_file.write_text(node_file.read_text() + f'database_url = "{url}"\n')
    return Deployed(tmp_path / "nodes", node_file, url, kind)


def run_here(deployed: Deployed) -> None:
    """Serve on a free port (the roster's one may be taken) without background rounds in the way."""
    text = deployed.node_file.read_text()
    lines = [line for line in text.splitlines() if not line.startswith("port =")]
    lines += [
        f"port = {free_port()}",
        "catchup_interval_seconds = 3600",
        "audit_checkpoint_seconds = 3600",
        "request_timeout_seconds = 5",
    ]
    deployed.node_file.write_text("\n".join(lines) + "\n")


# -- looking at a database ------------------------------------------------------------------------


async def snapshot(url: str, only: dict[str, tuple[str, ...]] | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order; of the tables in `only`, only those columns."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:

            def read(sync: sa.Connection) -> dict[str, list[tuple[Any, ...]]]:
                found = sa.MetaData()
                found.reflect(sync)

                def columns(name: str, table: sa.Table) -> list[Any]:
                    return [table.c[c] for c in (only or {}).get(name, table.c.keys())]

                return {
                    name: sorted((tuple(row) for row in sync.execute(sa.select(*columns(name, table)))), key=repr)
                    for name, table in sorted(found.tables.items())
                }

            return await conn.run_sync(read)
    finally:
        await engine.dispose()


async def structure(url: str, *, skip: frozenset[str] = frozenset({"alembic_version"})) -> dict[str, Any]:
    """Tables, columns (type, nullability, default), keys, unique constraints and indexes, reflected."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:

            def read(sync: sa.Connection) -> dict[str, Any]:
                insp = sa.inspect(sync)
                out: dict[str, Any] = {}
                for table in sorted(set(insp.get_table_names()) - skip):
                    out[table] = {
                        "columns": [
                            (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                            for c in insp.get_columns(table)
                        ],
                        "primary_key": insp.get_pk_constraint(table)["constrained_columns"],
                        "unique": sorted(
                            (u["name"] or "", tuple(u["column_names"])) for u in insp.get_unique_constraints(table)
                        ),
                        "indexes": sorted(
                            (i["name"] or "", tuple(i["column_names"]), bool(i["unique"]))
                            for i in insp.get_indexes(table)
                        ),
                    }
                return out

            return await conn.run_sync(read)
    finally:
        await engine.dispose()


async def audit_rows(url: str) -> list[tuple[int, bytes, bytes]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(sa.text("SELECT idx, entry, leaf_hash FROM audit_log ORDER BY idx"))
            return [(int(r[0]), bytes(r[1]), bytes(r[2])) for r in rows]
    finally:
        await engine.dispose()


# -- talking to the node and running commands ----------------------------------------------------


async def api(cfg: NodeConfig, method: str, path: str, user: str = "officer", body: Any = None) -> Any:
    """The node's client API as one of its users, over TLS pinned to the node's certificate."""
    ctx = ssl.create_default_context(cadata=(cfg.keys_dir / "tls.crt").read_text())
    ctx.check_hostname = False
    token = (cfg.keys_dir / "tokens" / user).read_text().strip()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    data = None if body is None else io.BytesIO(json.dumps(body).encode())
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.request(method, cfg.endpoint + path, data=data, headers=headers) as resp,
    ):
        raw = await resp.read()
        assert resp.status < 400, (method, path, resp.status, raw[:500])
        return json.loads(raw) if raw else None


async def invoke(group: Any, *args: str) -> Any:
    """A CLI command through click's runner, in a thread: the command runs its own event loop."""
    result = await asyncio.to_thread(CliRunner().invoke, group, list(args))
    return result


def exchange_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The `exchange` command in a process of its own: its real exit status and stderr."""
    code = "from exchange.cli.main import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )


def log_key(folder: Path, node: str) -> VerifyKey:
    roster = json.loads((folder.parent / "keys" / "roster.json").read_text())
    entry = next(n for n in roster["roster"]["nodes"] if n["id"] == node)
    return VerifyKey(b64d(entry["signing_key"]))


def same_reading(got: dict[str, Any], shown: dict[str, Any]) -> None:
    """A bulletin as read now against what 0.1.0 showed; receipts are a set (no order was promised)."""

    def key(r: dict[str, Any]) -> str:
        return json.dumps(r, sort_keys=True)

    signer = got.pop("signer")  # shown since 0.1.0: the author's key id the signature verified under
    assert signer and shown.get("signer", signer) == signer
    assert {**got, "receipts": None} == {**shown, "receipts": None}
    assert sorted(got["receipts"], key=key) == sorted(shown["receipts"], key=key)


# -- the tests ------------------------------------------------------------------------------------


async def test_the_fixture_is_release_0_1_0s_database(deployed: Deployed) -> None:
    rows = await snapshot(deployed.url)
    assert {t: len(r) for t, r in rows.items()} == EXPECTED["rows"]
    assert EXPECTED["rows"]["bulletins"] > 0 and EXPECTED["rows"]["receipts"] > 0
    assert EXPECTED["rows"]["audit_log"] > 0 and EXPECTED["rows"]["audit_checkpoints"] >= 2
    assert EXPECTED["rows"]["users"] >= 4 and EXPECTED["rows"]["audit_cosignatures"] > 0
    assert "alembic_version" not in rows
    # The adoption check knows release 0.1.0's tables and columns exactly.
    found = await structure(deployed.url)
    assert {t: tuple(c[0] for c in s["columns"]) for t, s in found.items()} == schema.RELEASE_0_1_0


async def test_open_refuses_a_release_0_1_0_database_and_changes_nothing(deployed: Deployed) -> None:
    before = await snapshot(deployed.url)
    with pytest.raises(SchemaOutdated) as refused:
        await Store.open(deployed.url, node=NODE)
    assert refused.value.detail == f"the database of node {NODE} {REFUSAL}"
    with pytest.raises(SchemaOutdated) as refused:
        await Store.open(deployed.url)
    assert refused.value.detail.endswith(REFUSAL) and "\n" not in refused.value.detail
    assert isinstance(refused.value, ConfigError)
    assert await snapshot(deployed.url) == before


async def test_a_node_on_the_old_schema_refuses_to_start(deployed: Deployed) -> None:
    with pytest.raises(SchemaOutdated, match="exchange db upgrade"):
        await start_node(deployed.config)

    ran = await asyncio.to_thread(exchange_cli, "node", "run", str(deployed.node_file))
    assert ran.returncode == 1, ran.stderr
    errors = [line for line in ran.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].endswith(REFUSAL), ran.stderr
    assert "Traceback" not in ran.stderr

    # `federation up` starts every node of the folder: it refuses the same way.
    ran = await asyncio.to_thread(exchange_cli, "federation", "up", str(deployed.folder))
    assert ran.returncode == 1, ran.stderr
    errors = [line for line in ran.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].endswith(REFUSAL), ran.stderr
    assert "Traceback" not in ran.stderr


async def test_upgrade_keeps_every_bulletin_and_extends_the_audit_log(deployed: Deployed) -> None:
    before = await snapshot(deployed.url)
    old_log = await audit_rows(deployed.url)
    assert len(old_log) == EXPECTED["audit_size"]

    upgraded = await invoke(db, "upgrade", "--node", str(deployed.node_file))
    assert upgraded.exit_code == 0, upgraded.output
    assert f"{NODE}: adopted the release 0.1.0 database as schema 0001 (release 0.1.0)" in upgraded.stdout
    after = await snapshot(deployed.url)
    assert after.pop("alembic_version") == [(schema.head(),)]
    # Adopting changes no value of the node's; later revisions add tables, empty but for the counts
    # that 0003 makes of what is stored, and columns, which 0003 fills (test_v0003_flat_store).
    release_columns = await snapshot(deployed.url, only=schema.RELEASE_0_1_0)
    assert {t: r for t, r in release_columns.items() if t in before} == before
    assert all(after[t] == [] for t in set(after) - set(before) - {"channel_counts", "user_channel_reads", "no_onward"})
    # 0016 lists the bulletins marked no-onward-sharing, from their envelopes.
    columns = schema.RELEASE_0_1_0["bulletins"]
    bid, envelope = columns.index("id"), columns.index("envelope")
    marked = sorted((r[bid],) for r in before["bulletins"] if b'"no_onward_sharing":true' in bytes(r[envelope]))
    assert after["no_onward"] == marked

    # Twice: the second run changes nothing.
    again = await invoke(db, "upgrade", "--node", str(deployed.node_file))
    assert again.exit_code == 0, again.output
    assert again.stdout == f"{NODE}: the database is current (schema {schema.describe(schema.head())}); nothing to do\n"
    assert (await snapshot(deployed.url)) == {**after, "alembic_version": [(schema.head(),)]}
    current = await invoke(db, "current", "--node", str(deployed.node_file))
    assert current.stdout == f"{NODE}: schema {schema.describe(schema.head())}, current\n"

    # The node starts, and every bulletin reads back as release 0.1.0 showed it.
    run_here(deployed)
    cfg = deployed.config
    node = await start_node(cfg)
    try:
        for user, inbox in EXPECTED["inbox"].items():
            assert await api(cfg, "GET", "/api/v1/bulletins?limit=500", user=user) == inbox
        for bid, shown in EXPECTED["bulletins"].items():
            same_reading(await api(cfg, "GET", f"/api/v1/bulletins/{bid}"), shown)
        assert len(EXPECTED["bulletins"]) == EXPECTED["rows"]["bulletins"]

        # New entries after the upgrade: a post (queued for the partners, who are not running), a read.
        posted = await api(
            cfg,
            "POST",
            "/api/v1/channels/c2c-cargo-fraud/bulletins",
            body={"kind": "alert", "title": "Posted after the upgrade", "body": "Same log, same tree."},
        )
        await api(cfg, "GET", f"/api/v1/bulletins/{posted['id']}")
        new_cp = await api(cfg, "POST", "/api/v1/audit/checkpoint?witness=false", user="auditor")

        # The old signed checkpoint is consistent with the new one: the node's proof verifies.
        old_cp = EXPECTED["checkpoint"]
        key = log_key(deployed.folder, NODE)
        old, _ = open_checkpoint(old_cp["note"], key)
        new, _ = open_checkpoint(new_cp["note"], key)
        assert old.size == old_cp["size"] and new.size > EXPECTED["audit_size"] >= old.size
        proof = await api(cfg, "GET", f"/api/v1/audit/proof/consistency?from={old.size}&to={new.size}", user="auditor")
        verify_consistency(old.size, new.size, [b64d(p) for p in proof["proof"]], old.root, new.root)

        # `exchange audit verify` recomputes the whole log, old entries and new, and the checkpoints
        # the export carries: of the release's two, signed the same day, that day's last (43), then
        # the new ones (docs/audit.md, section 6).
        verified = await invoke(audit, "verify", "--node", str(deployed.node_file), "--no-witness", "--json")
        assert verified.exit_code == 0, verified.output
        report = json.loads(verified.stdout)
        assert report["ok"] and report["complete"] and report["node"] == NODE
        assert report["entries"] >= new.size > EXPECTED["audit_size"]
        assert report["checkpoints"] >= 1 + 1 and report["latest"]["size"] >= new.size
    finally:
        await node.stop()

    # The stored log itself: the old entries untouched, the old root their root, the new log extends it.
    log = await audit_rows(deployed.url)
    assert log[: len(old_log)] == old_log
    assert [idx for idx, _, _ in log] == list(range(len(log)))
    assert all(leaf_hash(entry) == stored for _, entry, stored in log)
    leaves = [stored for _, _, stored in log]
    assert root_from_leaf_hashes(leaves[: old.size]) == old.root
    assert root_from_leaf_hashes(leaves[: new.size]) == new.root
    verify_consistency(old.size, len(log), consistency_proof(leaves, old.size), old.root, root_from_leaf_hashes(leaves))


async def test_upgrade_refuses_a_database_that_is_not_release_0_1_0s(deployed: Deployed) -> None:
    engine = create_async_engine(deployed.url)
    async with engine.begin() as conn:
        await conn.execute(sa.text("ALTER TABLE outbox DROP COLUMN sent_at"))
    await engine.dispose()
    before = await snapshot(deployed.url)
    refused = await asyncio.to_thread(exchange_cli_db, "upgrade", "--node", str(deployed.node_file))
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"error: the database of node {NODE} has no schema version and is not release 0.1.0's "
        "(outbox lacks sent_at); it was left unchanged"
    ]
    assert await snapshot(deployed.url) == before


def exchange_cli_db(*args: str) -> subprocess.CompletedProcess[str]:
    """`exchange db ...` in a process of its own (before the group is registered in exchange.cli.main)."""
    code = "import sys; from exchange.cli.db import db; sys.argv[0] = 'exchange db'; db()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )


# -- the migrations themselves -------------------------------------------------------------------


@pytest.fixture
async def empty_url(tmp_path: Path, database: Callable[[str], Awaitable[str]]) -> AsyncIterator[str]:
    url = await database("empty")
    yield url or f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"


async def test_an_empty_database_gets_release_0_1_0s_schema_from_the_migrations(
    deployed: Deployed, empty_url: str
) -> None:
    store = await Store.open(empty_url)
    assert store.audit_size == 0
    await store.close()
    assert (await snapshot(empty_url))["alembic_version"] == [(schema.head(),)]
    # The migrations build the schema tables.py describes: nothing for autogenerate to add.
    engine = create_async_engine(empty_url)
    async with engine.connect() as conn:
        diffs = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
    await engine.dispose()
    assert diffs == []
    # Opening it again is one query for the revision and changes nothing.
    again = await Store.open(empty_url)
    await again.close()
    state = await schema.current(empty_url)
    assert state.kind == "versioned" and state.revision == schema.head()
    # Revision 0001 builds exactly the schema that release 0.1.0 built (same dialect).
    engine = create_async_engine(empty_url)
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.downgrade(schema.alembic_config(sync), schema.FIRST))
    await engine.dispose()
    assert await structure(empty_url) == await structure(deployed.url)


async def test_downgrade_to_nothing_and_up_again(empty_url: str) -> None:
    store = await Store.open(empty_url)
    await store.close()
    engine = create_async_engine(empty_url)
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync: command.downgrade(schema.alembic_config(sync), "base"))
    async with engine.connect() as conn:
        left = await conn.run_sync(lambda sync: set(sa.inspect(sync).get_table_names()))
    await engine.dispose()
    assert left <= {"alembic_version"}
    assert (await schema.current(empty_url)).kind == "empty"
    done = await schema.upgrade(empty_url)
    every = tuple(reversed([s.revision for s in schema.scripts().walk_revisions()]))  # oldest first
    assert every[0] == schema.FIRST and every[-1] == schema.head()
    assert (done.before, done.after, done.adopted, done.applied) == (None, schema.head(), False, every)


async def test_open_names_an_older_or_unknown_revision(empty_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    store = await Store.open(empty_url)
    await store.close()
    # A release whose code needs a later revision than the database's.
    current = schema.describe(schema.head())
    monkeypatch.setattr(schema, "head", lambda: "9998")
    with pytest.raises(SchemaOutdated) as refused:
        await Store.open(empty_url, node=NODE)
    assert refused.value.detail == (
        f"the database of node {NODE} is at schema {current}, not 9998; run: exchange db upgrade --node FILE"
    )
    monkeypatch.undo()
    # A database that a newer release wrote: this one does not know its revision.
    engine = create_async_engine(empty_url)
    async with engine.begin() as conn:
        await conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    await engine.dispose()
    with pytest.raises(ConfigError, match="revision 9999, which this release of exchange does not know") as unknown:
        await Store.open(empty_url, node=NODE)
    assert not isinstance(unknown.value, SchemaOutdated)
    with pytest.raises(ConfigError, match="does not know"):
        await schema.upgrade(empty_url)


def test_head_is_the_migrations_one_head() -> None:
    heads = schema.scripts().get_heads()
    assert heads == [schema.HEAD], f"set schema.HEAD to the newest revision in migrations/versions: {heads}"
    newest = max(p.name for p in (schema.MIGRATIONS / "versions").glob("v[0-9][0-9][0-9][0-9]_*.py"))
    assert newest.startswith(f"v{schema.HEAD}_")


def test_a_node_that_opens_its_current_database_does_not_import_alembic(tmp_path: Path) -> None:
    """A node checks its revision against HEAD without Alembic (about 11 MB of its memory)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'node.db'}"
    asyncio.run(schema.upgrade(url))
    probe = (
        "import asyncio, sys\n"
        "from exchange.store import Store\n"
        "async def main():\n"
        f"    store = await Store.open({url!r})\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout == "[]\n"
