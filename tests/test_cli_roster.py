"""The roster ceremony through the `exchange` command, each party in a folder of its own, on SQLite
and PostgreSQL: a 0.1.0 federation moves to roster v2 (2 of 3 holders and the v1 key sign), a new
administration runs `node init` on its own host, the authority proposes, two of three holders sign
offline, the signatures are combined, and nodes import the result. A tampered signature file is
refused with exit 1 and one line, and so is a signed roster whose signature was changed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from exchange.cli.main import cli
from exchange.crypto import b64d, b64e
from exchange.protocol.rostermigration import propose
from tests.conftest import MakeFederation
from tests.protocol.test_roster_chain import BOTH, CHAIN
from tests.vectors.make_roster_vectors import signed

HOLDERS = {"wco": "WCO Secretariat", "icao": "ICAO", "rilo": "RILO Asia/Pacific"}
FEDERATION = "test federation"


async def run(*args: str | Path) -> Result:
    """One `exchange` command through click's runner, in a thread (it runs its own event loop)."""
    return await asyncio.to_thread(CliRunner().invoke, cli, [str(a) for a in args])


async def ok(*args: str | Path) -> str:
    result = await run(*args)
    assert result.exit_code == 0, (args, result.output, result.stderr)
    return result.stdout


async def refused(*args: str | Path) -> str:
    """The command fails with exit 1 and exactly one `error:` line, no traceback."""
    result = await run(*args)
    lines = result.stderr.splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), (result.output, lines)
    return lines[0]


def tamper(path: Path, out: Path, where: list[Any]) -> None:
    """A copy of a JSON file with one byte of the signature at `where` flipped."""
    value = json.loads(path.read_text())
    holder = value
    for key in where[:-1]:
        holder = holder[key]
    raw = bytearray(b64d(holder[where[-1]]))
    raw[0] ^= 1
    holder[where[-1]] = b64e(bytes(raw))
    out.write_text(json.dumps(value))


async def test_the_whole_ceremony_across_folders(tmp_path: Path, make_federation: MakeFederation) -> None:
    fed = await make_federation(start=False)
    nl = fed.members["nl-customs"].config
    nl_file, ke_file = fed.folder / "nl-customs.toml", fed.folder / "ke-customs.toml"
    keys = nl.roster_path.parent
    holder = {h: tmp_path / "holders" / h for h in HOLDERS}
    proposer = tmp_path / "proposer"
    proposer.mkdir()

    # Each holder makes a key in their own folder and hands over only the public file.
    for label, name in HOLDERS.items():
        assert "authority key" in await ok("roster", "keygen", holder[label], "--holder", name)
        shutil.copy(holder[label] / "authority.pub.json", proposer / f"{label}.pub.json")
    pubs = [a for label in HOLDERS for a in ("--holder-key", proposer / f"{label}.pub.json")]

    # Version 1: the v1 roster migrated, signed by two holders and by the v1 authority key.
    out = await ok(
        "roster", "migrate", "--v1-roster", nl.roster_path, "--v1-authority", nl.authority_key_path,
        *pubs, "--threshold", "2", "--out", proposer / "v1.json",
    )  # fmt: skip
    v1_hash = out.split("hash: ")[1].split()[0]
    for label in ("wco", "icao"):
        shutil.copy(proposer / "v1.json", holder[label] / "v1.json")
        signed_out = await ok(
            "roster", "sign", holder[label] / "v1.json", "--key", holder[label] / "authority.key",
            "--out", holder[label] / "v1.sig.json",
        )  # fmt: skip
        assert v1_hash in signed_out  # each holder sees the hash to compare before signing
        shutil.copy(holder[label] / "v1.sig.json", proposer / f"v1.{label}.sig.json")
    await ok(
        "roster", "sign", proposer / "v1.json", "--key", keys / "federation" / "authority.key",
        "--out", proposer / "v1.v1key.sig.json",
    )  # fmt: skip
    sigs1 = [proposer / f"v1.{s}.sig.json" for s in ("wco", "icao", "v1key")]
    out = await ok(
        "roster", "combine", proposer / "v1.json", *sigs1, "--v1-authority", nl.authority_key_path,
        "--out", proposer / "roster-1.json",
    )  # fmt: skip
    assert v1_hash in out
    out = await ok("roster", "import", "--node", nl_file, proposer / "roster-1.json", "--expect-hash", v1_hash)
    assert f"nl-customs: installed roster version 1 (hash {v1_hash}), from none" in out

    # A new administration, on its own host: keys and a signed join request, private keys 0600.
    host = tmp_path / "host-za"
    out = await ok(
        "node", "init", host, "--federation", FEDERATION, "--id", "za-customs", "--name", "South African customs",
        "--country", "ZA", "--agency", "customs", "--endpoint", "https://za.example.test:8443",
    )  # fmt: skip
    request_hash = out.split("request hash ")[1].split()[0]
    for private in ("signing.key", "encryption.key", "tls.key"):
        assert stat.S_IMODE((host / private).stat().st_mode) == 0o600
        assert (host / private).read_text().strip() not in (host / "join-request.json").read_text()
    shutil.copy(host / "join-request.json", proposer / "za-join.json")  # only the public request travels

    # The proposal, two of three holders sign it offline, and a tampered signature is refused.
    out = await ok(
        "roster", "propose", "--held", proposer / "roster-1.json", "--join", proposer / "za-join.json",
        "--out", proposer / "v2.json",
    )  # fmt: skip
    assert f"join request of za-customs: hash {request_hash}" in out and "za-customs: active since this version" in out
    v2_hash = out.split("hash: ")[1].split()[0]
    for label in ("icao", "rilo"):
        shutil.copy(proposer / "v2.json", holder[label] / "v2.json")
        await ok(
            "roster", "sign", holder[label] / "v2.json", "--key", holder[label] / "authority.key",
            "--out", holder[label] / "v2.sig.json",
        )  # fmt: skip
        shutil.copy(holder[label] / "v2.sig.json", proposer / f"v2.{label}.sig.json")
    tamper(proposer / "v2.rilo.sig.json", proposer / "v2.bad.sig.json", ["signature"])
    line = await refused(
        "roster", "combine", proposer / "v2.json", proposer / "v2.icao.sig.json", proposer / "v2.bad.sig.json",
        "--held", proposer / "roster-1.json", "--out", proposer / "roster-2.json",
    )  # fmt: skip
    assert "does not verify" in line and not (proposer / "roster-2.json").exists()
    line = await refused(
        "roster", "combine", proposer / "v2.json", proposer / "v2.icao.sig.json",
        "--held", proposer / "roster-1.json", "--out", proposer / "roster-2.json",
    )  # fmt: skip
    assert "1 valid signatures" in line and "2 needed" in line
    out = await ok(
        "roster", "combine", proposer / "v2.json", proposer / "v2.icao.sig.json", proposer / "v2.rilo.sig.json",
        "--held", proposer / "roster-1.json", "--out", proposer / "roster-2.json",
    )  # fmt: skip
    assert v2_hash in out

    # Node nl-customs takes version 2; ke-customs refuses a copy with a changed signature, keeps
    # nothing, then takes the chain from version 1.
    out = await ok("roster", "import", "--node", nl_file, proposer / "roster-2.json")
    assert f"installed roster version 2 (hash {v2_hash}), from 1" in out
    tamper(proposer / "roster-2.json", proposer / "roster-2-bad.json", ["signatures", 0, "signature"])
    line = await refused(
        "roster", "import", "--node", ke_file, proposer / "roster-1.json", proposer / "roster-2-bad.json"
    )
    assert "roster version 2: 1 valid signatures" in line
    assert "holds no roster v2 version" in await ok("roster", "status", "--node", ke_file)
    await ok("roster", "import", "--node", ke_file, proposer / "roster-1.json", proposer / "roster-2.json")
    status = json.loads(await ok("roster", "status", "--node", ke_file, "--json"))
    assert (status["version"], status["hash"], status["nodes"]["active"]) == (2, v2_hash, 3)

    # Going back is refused, with one line, and the node keeps version 2.
    line = await refused("roster", "import", "--node", nl_file, proposer / "roster-1.json")
    assert "older than the held version 2" in line
    assert "already holds roster version 2" in await ok(
        "roster", "import", "--node", nl_file, proposer / "roster-2.json"
    )


async def test_a_join_request_that_was_changed_is_refused(tmp_path: Path, make_federation: MakeFederation) -> None:
    fed = await make_federation(start=False)
    nl = fed.members["nl-customs"].config
    await ok("roster", "keygen", tmp_path / "wco", "--holder", "WCO")
    await ok(
        "roster", "migrate", "--v1-roster", nl.roster_path, "--v1-authority", nl.authority_key_path,
        "--holder-key", tmp_path / "wco" / "authority.pub.json", "--threshold", "1", "--out", tmp_path / "v1.json",
    )  # fmt: skip
    for key, name in (
        (tmp_path / "wco" / "authority.key", "wco"),
        (nl.roster_path.parent / "federation" / "authority.key", "v1"),
    ):
        await ok("roster", "sign", tmp_path / "v1.json", "--key", key, "--out", tmp_path / f"{name}.sig")
    await ok(
        "roster", "combine", tmp_path / "v1.json", tmp_path / "wco.sig", tmp_path / "v1.sig",
        "--v1-authority", nl.authority_key_path, "--out", tmp_path / "roster-1.json",
    )  # fmt: skip
    await ok(
        "node", "init", tmp_path / "host", "--federation", FEDERATION, "--id", "za-customs", "--name", "ZA",
        "--country", "ZA", "--agency", "customs", "--endpoint", "https://za.example.test",
    )  # fmt: skip
    request = json.loads((tmp_path / "host" / "join-request.json").read_text())
    request["request"]["endpoint"] = "https://elsewhere.example.test"
    (tmp_path / "changed.json").write_text(json.dumps(request))
    line = await refused(
        "roster", "propose", "--held", tmp_path / "roster-1.json", "--join", tmp_path / "changed.json",
        "--out", tmp_path / "v2.json",
    )  # fmt: skip
    assert "not signed by the signing key it lists" in line
    line = await refused(
        "roster", "propose", "--held", tmp_path / "roster-1.json", "--join", tmp_path / "host" / "join-request.json",
        "--revoke", "xx-nobody", "--out", tmp_path / "v2.json",
    )  # fmt: skip
    assert "xx-nobody is not in roster version 1" in line


@pytest.mark.parametrize("junk", [b"not json", b'{"v": 2}'])
async def test_files_that_are_not_what_they_should_be_are_one_line(tmp_path: Path, junk: bytes) -> None:
    (tmp_path / "junk.json").write_bytes(junk)
    await ok("roster", "keygen", tmp_path / "k", "--holder", "H")
    line = await refused(
        "roster", "sign", tmp_path / "junk.json", "--key", tmp_path / "k" / "authority.key", "--out", tmp_path / "s"
    )
    assert "is not a proposed roster version" in line


async def test_the_proposer_will_not_build_on_a_version_issued_in_the_future(tmp_path: Path) -> None:
    """A held version issued after the proposer's clock can have no successor issued now (6a.5):
    `propose` wrote one all the same, which every node then refused as "issued before"."""
    doc = propose(CHAIN[3].roster, "2035-06-01T00:00:00.000Z", "2036-06-01T00:00:00.000Z")
    (tmp_path / "held.json").write_text(json.dumps(signed(doc, BOTH).model_dump(mode="json")))
    line = await refused("roster", "propose", "--held", tmp_path / "held.json", "--out", tmp_path / "v5.json")
    assert "version 4 is issued at 2035-06-01T00:00:00.000Z" in line and "check this host's clock" in line
    assert not (tmp_path / "v5.json").exists()


async def test_the_proposer_will_not_propose_a_version_nodes_cannot_run_on(tmp_path: Path) -> None:
    """Nodes run on a version's v1 view and take none without one (here: no active node left)."""
    (tmp_path / "held.json").write_text(json.dumps(CHAIN[3].model_dump(mode="json")))
    suspend = [a for node in ("ke-customs", "nl-customs", "za-customs") for a in ("--suspend", node)]
    line = await refused("roster", "propose", "--held", tmp_path / "held.json", *suspend, "--out", tmp_path / "v4.json")
    assert "roster version 4 has no v1 form" in line and not (tmp_path / "v4.json").exists()
