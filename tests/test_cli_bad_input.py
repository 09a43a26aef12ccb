"""Bad input to the CLI is one line and a non-zero exit, never a traceback, and changes nothing
(found by a read-only review): a token broken by a copy and paste, a user name the node cannot
carry, a node file copied to the wrong folder (which made a new, empty node database), a file
that is not a node file. On SQLite and PostgreSQL where the store is involved."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from exchange.cli.main import cli
from exchange.config import NodeConfig
from exchange.store import Store, users
from tests.conftest import Federation, MakeFederation


async def run(*argv: str, env: dict[str, str] | None = None) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli, list(argv), env=env)


def one_line_error(result: Result, *words: str) -> None:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for word in words:
        assert word in lines[0], lines[0]


def node_file(fed: Federation, node: str = "nl-customs") -> str:
    return str(fed.folder / f"{node}.toml")


async def test_a_broken_token_is_one_line(make_federation: MakeFederation) -> None:
    fed = await make_federation(start=False)
    tokens = fed["nl-customs"].config.keys_dir / "tokens"
    one_line_error(await run("inbox", "--node", node_file(fed), "--token", "abc\ndef"), "not a token")
    one_line_error(await run("inbox", "--node", node_file(fed), env={"EXCHANGE_TOKEN": "abc\r\ndef"}), "not a token")
    (tokens / "pasted").write_bytes(b"abc\r\ndef\n")
    one_line_error(await run("inbox", "--node", node_file(fed), "--user", "pasted"), "not a token")
    (tokens / "binary").write_bytes(b"\xff\xfe\x00bad")
    one_line_error(await run("inbox", "--node", node_file(fed), "--user", "binary"), "not UTF-8")


async def test_a_user_name_the_node_cannot_carry_is_refused_and_not_stored(make_federation: MakeFederation) -> None:
    """A name of 80 characters was a 158-line traceback on PostgreSQL (its column holds 64) and
    stored as it was on SQLite; a name with a colon could never sign in to TAXII (Basic splits
    name:password on the first colon); spaces and slashes went into the audit log as they were."""
    fed = await make_federation(start=False)
    for name in ("a" * 80, "bad name", "x/../y", "ops:team", "tab\there", ""):
        one_line_error(await run("users", "add", "--node", node_file(fed), name, "--role", "admin"), "user name")
    good = await run("users", "add", "--node", node_file(fed), "j.doe@customs.example", "--role", "auditor")
    assert good.exit_code == 0, good.output
    cfg = fed["nl-customs"].config
    store = await Store.open(cfg.database_url, node=cfg.id)
    try:
        async with store.read() as conn:
            names = set(await conn.scalars(sa.select(users.c.name)))
    finally:
        await store.close()
    assert "j.doe@customs.example" in names and not {n for n in names if " " in n or ":" in n or "/" in n}


@pytest.mark.parametrize(
    "database", ["sqlite"], indirect=True
)  # a PostgreSQL URL names its database, whatever the folder
async def test_a_node_file_in_the_wrong_folder_makes_no_database(
    make_federation: MakeFederation, tmp_path: Path
) -> None:
    """`users list` and `db current` beside a copy of the node file in another folder made a new,
    empty node database there (`db current` is documented as changing nothing): an administrator
    who mistyped a folder believed they had changed their node. Now they refuse, and create nothing."""
    fed = await make_federation(start=False)
    elsewhere = tmp_path / "elsewhere" / "nodes"
    elsewhere.mkdir(parents=True)
    shutil.copy(fed.folder / "nl-customs.toml", elsewhere)
    shutil.copy(fed.folder / "federation.toml", elsewhere)
    copied = NodeConfig.load(elsewhere / "nl-customs.toml", environ={})
    db = Path(copied.database_url.split("///", 1)[1])
    assert not db.exists()
    one_line_error(await run("users", "list", "--node", str(elsewhere / "nl-customs.toml")), "holds no node")
    one_line_error(
        await run("users", "add", "--node", str(elsewhere / "nl-customs.toml"), "clerk", "--role", "admin"),
        "holds no node",
    )
    shown = await run("db", "current", "--node", str(elsewhere / "nl-customs.toml"))
    assert shown.exit_code == 0 and "empty" in shown.output, shown.output
    assert not db.exists()


async def test_a_file_that_is_not_a_node_file_is_named_so(make_federation: MakeFederation) -> None:
    fed = await make_federation(start=False)
    one_line_error(await run("users", "list", "--node", str(fed.folder / "federation.toml")), "not a node file")
    broken = fed.folder / "broken.toml"
    broken.write_text('[node]\nid = "Not An Id"\n')
    result = await run("users", "list", "--node", str(broken))
    one_line_error(result, "broken.toml")
    assert len(result.output) < 300 and "pydantic" not in result.output
