"""CLI commands that failed half way (found by a read-only review), each now refused in one line
with nothing left behind:

1. `exchange db upgrade` where no node is (a SQLite file not there, or another application's
   database) made one: a file with the umask's mode, or exchange's tables among the other's.
2. `exchange audit export -o FILE` emptied an earlier export before it had connected.
3. `exchange node init` wrote the keys, then refused a detail (`--country za`); the corrected
   command was then refused because the keys existed.
4. `exchange node rotate` wrote a new private key, then failed to write its request (the file
   existed, its folder did not): a key that no request named, at every try.
5. `exchange roster keygen` over an existing key said "use --force", an option it does not have.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from exchange.cli.main import cli
from tests.conftest import MakeFederation
from tests.test_cli_bad_input import one_line_error
from tests.test_key_rotation import CUSTOMS3
from tests.test_roster_gossip import Authority, import_at

FED = '[federation]\nname = "t"\nkeys_dir = "../keys"\ndata_dir = "../var"\n'
NODE = '[node]\nid = "nl-customs"\nname = "NL"\ncountry = "NL"\nagency = "customs"\nport = 0\n'


def node_file(tmp_path: Path) -> Path:
    nodes = tmp_path / "nodes"
    nodes.mkdir()
    (nodes / "federation.toml").write_text(FED)
    (nodes / "nl-customs.toml").write_text(NODE)
    (tmp_path / "var").mkdir(mode=0o700)
    return nodes / "nl-customs.toml"


def test_db_upgrade_makes_no_database_where_there_is_none(tmp_path: Path) -> None:
    node = node_file(tmp_path)
    one_line_error(CliRunner().invoke(cli, ["db", "upgrade", "--node", str(node)]), "holds no node")
    assert not (tmp_path / "var" / "nl-customs.db").exists()


def test_db_upgrade_leaves_another_applications_database_alone(tmp_path: Path) -> None:
    node = node_file(tmp_path)
    other = tmp_path / "billing.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    env = {"EXCHANGE_DATABASE_URL": f"sqlite+aiosqlite:///{other}"}
    one_line_error(CliRunner().invoke(cli, ["db", "upgrade", "--node", str(node)], env=env), "holds no node")
    with sqlite3.connect(other) as conn:
        assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {"invoices"}


def test_an_export_that_fails_leaves_the_earlier_file_as_it_was(tmp_path: Path) -> None:
    node = node_file(tmp_path)
    assert CliRunner().invoke(cli, ["keys", "generate", str(node)]).exit_code == 0
    out = tmp_path / "nl.jsonl"
    out.write_text("an earlier export\n")
    args = ["audit", "export", "--node", str(node), "--token", "x" * 20, "-o", str(out)]
    done = CliRunner().invoke(cli, args, env={"EXCHANGE_PORT": "1"})  # no node listens there
    one_line_error(done)
    assert out.read_text() == "an earlier export\n"  # before: emptied
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys", "nl.jsonl", "nodes", "var"]  # no part left


def test_node_init_with_a_detail_refused_writes_no_keys(tmp_path: Path) -> None:
    host = tmp_path / "host"
    args = ["node", "init", str(host), "--federation", "F", "--id", "za-customs", "--name", "N"]
    args += ["--agency", "customs", "--endpoint", "https://za.example:8443"]
    one_line_error(CliRunner().invoke(cli, [*args, "--country", "za"]), "country")
    assert not host.exists() or not any(host.iterdir())
    done = CliRunner().invoke(cli, [*args, "--country", "ZA"])  # the corrected command
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in host.glob("*.key")) == ["encryption.key", "signing.key", "tls.key"]


async def test_a_rotation_whose_request_cannot_be_written_writes_no_key(make_federation: MakeFederation) -> None:
    fed = await make_federation(nodes=CUSTOMS3, start=False)
    nl = fed["nl-customs"]
    assert await import_at(nl.config, Authority.of(fed).migration()) == 1
    keys = nl.config.keys_dir
    out = fed.folder / "rotate.json"
    base = ["node", "rotate", "--node", str(fed.folder / "nl-customs.toml")]
    for use, pattern in (("signing", "signing-*.key"), ("encryption", "encryption-*.key"), ("tls", "tls-*.key")):
        done = await asyncio.to_thread(CliRunner().invoke, cli, [*base, "--use", use, "--out", str(out)])
        assert done.exit_code == 0, done.output
        written = sorted(keys.glob(pattern))
        assert len(written) == 1
        for target in (out, fed.folder / "no-such-folder" / "r.json"):  # exists; its folder does not
            again = await asyncio.to_thread(CliRunner().invoke, cli, [*base, "--use", use, "--out", str(target)])
            one_line_error(again)
            assert sorted(keys.glob(pattern)) == written, (use, target)  # before: one more key each time
        os.remove(out)


def test_keygen_over_an_existing_key_names_no_option_it_lacks(tmp_path: Path) -> None:
    args = ["roster", "keygen", str(tmp_path / "wco"), "--holder", "WCO"]
    assert CliRunner().invoke(cli, args).exit_code == 0
    again = CliRunner().invoke(cli, args)
    one_line_error(again, "exists")
    assert "--force" not in again.output
