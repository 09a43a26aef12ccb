"""A node rotates its signing and encryption keys while bulletins are in flight, on real nodes over
mutual TLS, on SQLite and PostgreSQL (issue 11, must-show 3; docs/protocol.md, 6a.13;
docs/operations.md, "Rotating a node's keys").

ke-customs makes its new keys and rotation requests on its own host (`exchange node rotate`); two
of three authority holders sign version 2, which lists the new keys active and the old ones
retiring; it is imported at ONE node (nl-customs) and reaches the others by gossip, ke-customs
included, which switches keys live, while ke-customs and nl-customs keep posting. Every bulletin
is delivered and opens at every reader, what was signed before still verifies, receipts verify,
and `exchange audit verify` passes on every node. Version 3 ends the overlap (verify-only): the
old signing key then signs nothing new, and nothing new may be wrapped for the old encryption key.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import sqlalchemy as sa
from click.testing import CliRunner

from exchange.cli.main import cli
from exchange.clock import timestamp
from exchange.crypto import DecryptionKey, SigningKey, b64d
from exchange.keystore import read_file
from exchange.model import Bulletin, NodeId
from exchange.node.tls import peer_context
from exchange.protocol.envelope import build_envelope, envelope_bytes
from exchange.protocol.receipt import parse_receipt, verify_receipts
from exchange.protocol.roster2_model import SignedRosterV2
from exchange.protocol.rostermigration import propose
from exchange.protocol.rotation import parse_rotation_request, rotate
from exchange.service.gossip import ROSTER_HEADER
from exchange.store import bulletins
from tests.conftest import MakeFederation, Member, eventually
from tests.test_roster_gossip import CONVERGE, Authority, holds, import_at, runs_on

CUSTOMS3 = {"nl-customs": ("NL", "customs"), "ke-customs": ("KE", "customs"), "gb-avsec": ("GB", "customs")}
BULLETIN = Bulletin.model_validate({"kind": "alert", "handling": {"tlp": "AMBER"}, "title": "forged", "body": "x"})


async def post(member: Member, title: str) -> str:
    body = {"kind": "alert", "title": title, "body": "AWB 176-12345675"}
    status, answer, _ = await member.api("POST", "/api/v1/channels/c2c/bulletins", body=body)
    assert status == 201, answer
    return str(answer["id"])


async def rotate_on_host(member: Member, folder: Path, use: str) -> Any:
    """`exchange node rotate` on the node's own host: the new key stays in its keys folder."""
    node_file = folder / f"{member.id}.toml"
    done = await asyncio.to_thread(CliRunner().invoke, cli, ["node", "rotate", "--node", str(node_file), "--use", use])
    assert done.exit_code == 0, done.output
    assert "request hash" in done.output
    (path,) = member.config.keys_dir.glob(f"rotate-{use}-*.json")
    return parse_rotation_request(path.read_bytes())


async def opens_everywhere(members: list[Member], bid: str) -> None:
    """Every member holds the bulletin and reads it: the signature checked again, the content
    opened with its own key (current or former)."""
    for member in members:
        await eventually(lambda m=member: holds(m, bid), timeout=CONVERGE, what=f"{bid[:8]} at {member.id}")  # type: ignore[misc]
        status, read, _ = await member.api("GET", f"/api/v1/bulletins/{bid}")
        assert status == 200 and read["signature_verified"] is True, (member.id, read)


async def audit_verifies(member: Member, folder: Path) -> None:
    args = ["audit", "verify", "--node", str(folder / f"{member.id}.toml"), "--user", "auditor"]
    done = await asyncio.to_thread(CliRunner().invoke, cli, args)
    assert done.exit_code == 0 and "verifies" in done.output, (member.id, done.output)


def forged(author: Member, key: SigningKey, readers: dict[str, Any], seq: int) -> bytes:
    """An envelope as `author` would make it, but signed with `key` and wrapped for `readers`' keys."""
    state = author.service.channels.state("c2c")
    keys = [(NodeId(n), readers[n]) for n in state.readers]
    env = build_envelope(
        BULLETIN, state=state, author=author.service.me, key=key, seq=seq, readers=keys, created=timestamp()
    )
    return b'{"txn":"t-rot","envelopes":[' + envelope_bytes(env) + b"]}"


async def test_a_node_rotates_its_keys_while_bulletins_are_in_flight(make_federation: MakeFederation) -> None:
    fed = await make_federation(nodes=CUSTOMS3)
    nl, ke, gb = fed["nl-customs"], fed["ke-customs"], fed["gb-avsec"]
    everyone = [nl, ke, gb]
    auth = Authority.of(fed)
    version1 = auth.migration()
    assert await import_at(nl.config, version1) == 1
    for member in everyone:
        await eventually(runs_on(member, 1), timeout=CONVERGE, what=f"version 1 at {member.id}")
    old_signing = SigningKey(b64d(read_file(ke.config.keys_dir / "signing.key").decode().strip()))
    old_decryption = DecryptionKey(b64d(read_file(ke.config.keys_dir / "encryption.key").decode().strip()))
    assert ke.service.keys.signing.kid == old_signing.kid

    before = [await post(ke, "before, from ke"), await post(nl, "before, from nl")]

    # On ke-customs' host: a new signing key and a new encryption key, each with its request.
    requests = [await rotate_on_host(ke, fed.folder, "signing"), await rotate_on_host(ke, fed.folder, "encryption")]
    new_signing, new_encryption = (r.request.key.kid for r in requests)
    assert ke.service.keys.signing.kid == old_signing.kid  # nothing changes before a version lists them

    # The authority: the new keys active, the old ones retiring; two holders of three sign.
    doc2 = rotate(version1.roster, propose(version1.roster, timestamp(), version1.roster.expires), requests)
    version2: SignedRosterV2 = auth.sign(doc2)

    # A stream of bulletins from and to the rotating node while version 2 spreads.
    posted: list[str] = []
    stop = asyncio.Event()

    async def stream() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            posted.append(await post(ke if n % 2 else nl, f"in flight {n}"))
            await asyncio.sleep(0)  # the nodes' own loops run between posts

    streaming = asyncio.create_task(stream())
    while len(posted) < 6:
        await asyncio.sleep(0.05)
    assert await import_at(nl.config, version2) == 2  # at ONE node; the others take it by gossip
    for member in everyone:
        await eventually(runs_on(member, 2), timeout=CONVERGE, what=f"version 2 at {member.id}")
    await eventually(
        lambda: _signs_with(ke, new_signing, new_encryption), timeout=CONVERGE, what="ke-customs on its new keys"
    )
    target = len(posted) + 6
    while len(posted) < target:
        await asyncio.sleep(0.05)
    stop.set()
    await streaming
    assert len(posted) >= 12

    # Every bulletin, before and in flight, is delivered and opens at every reader.
    for bid in before + posted:
        await opens_everywhere(everyone, bid)
    after = await post(ke, "after, from ke")
    await opens_everywhere(everyone, after)
    assert await _signer(nl, after) == new_signing and await _signer(nl, before[0]) == old_signing.kid

    # Receipts verify: those at the author, of bulletins posted before, during and after.
    for bid in (before[0], posted[0], after):
        await _receipts_verify(ke, bid)
    await _receipts_verify(nl, before[1])

    # During the overlap, what ke-customs' old key signed (still in flight) is accepted.
    status, body, _ = await nl.fed_post(ke, forged(ke, old_signing, _current_keys(ke), 10_000))
    assert status == 200, body

    # Version 3 ends the overlap, imported at gb-avsec this time.
    doc3 = rotate(version2.roster, propose(version2.roster, timestamp(), version2.roster.expires), [], ["ke-customs"])
    ke3 = next(n for n in doc3.nodes if n.id == "ke-customs")
    assert {k.state for k in ke3.keys if k.kid in (old_signing.kid, old_decryption.kid)} == {"verify-only"}
    version3 = auth.sign(doc3)
    assert await import_at(gb.config, version2, version3) == 3
    for member in everyone:
        await eventually(runs_on(member, 3), timeout=CONVERGE, what=f"version 3 at {member.id}")

    # Old signatures still verify: what was received before the change opens everywhere, and the
    # receipts ke-customs signed with its old key still verify where they are held.
    for bid in (*before, posted[0], posted[1], after):
        await opens_everywhere(everyone, bid)
    await _receipts_verify(nl, before[1])
    _, read, _ = await nl.api("GET", f"/api/v1/bulletins/{before[1]}")
    assert old_signing.kid in {r["signer"] for r in read["receipts"] if r["node"] == "ke-customs"}, read
    # A reader is shown the key that signed a bulletin, not the author's key of now (the console's
    # "Signed by ... with its roster key" named the current one; found by a read-only review).
    _, read, _ = await nl.api("GET", f"/api/v1/bulletins/{before[0]}")
    assert read["signer"] == old_signing.kid != new_signing, read
    _, read, _ = await nl.api("GET", f"/api/v1/bulletins/{after}")
    assert read["signer"] == new_signing, read

    # The attacker's side: the old signing key signs nothing new now, and nothing new may be
    # wrapped for the old encryption key; both are refused, nothing stored.
    status, body, _ = await nl.fed_post(ke, forged(ke, old_signing, _current_keys(ke), 10_001))
    assert status == 422 and "roster key" in json.dumps(body), body
    wrapped_old = {**_current_keys(nl), "ke-customs": old_decryption.public}
    for receiver in (ke, gb):
        status, body, _ = await receiver.fed_post(nl, forged(nl, nl.service.keys.signing, wrapped_old, 10_002))
        assert status == 422 and "recipient key of ke-customs" in json.dumps(body), (receiver.id, body)

    # A sender that names a newer roster version than the receiver runs on: the receiver judges
    # none of its items before it holds that version (they may use keys only it lists); 503, retry.
    held = await _count(gb)
    status, body = await post_naming_version(gb, nl, 99, forged(nl, nl.service.keys.signing, _current_keys(nl), 1))
    assert status == 503 and body["type"].endswith("RosterBehind"), body
    assert await _count(gb) == held

    # `exchange audit verify` passes on every node; ke-customs restarts on its new keys.
    for member in everyone:
        await audit_verifies(member, fed.folder)
    await fed.stop("ke-customs")
    await fed.start("ke-customs")
    ke = fed["ke-customs"]
    assert (ke.service.keys.signing.kid, ke.service.keys.decryption.kid) == (new_signing, new_encryption)
    for bid in (*before, posted[0], after):
        status, read, _ = await ke.api("GET", f"/api/v1/bulletins/{bid}")
        assert status == 200 and read["signature_verified"] is True, read
    await opens_everywhere(everyone, await post(ke, "after the restart"))
    await audit_verifies(ke, fed.folder)


async def post_naming_version(receiver: Member, sender: Member, version: int, body: bytes) -> tuple[int, Any]:
    """A federation transaction from `sender` whose header names roster `version`."""
    ctx = peer_context(
        receiver.service.fed.node(receiver.id), sender.config.keys_dir / "tls.crt", sender.config.keys_dir / "tls.key"
    )
    headers = {"Content-Type": "application/json", ROSTER_HEADER: str(version)}
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.post(receiver.config.endpoint + "/fed/v1/envelopes", data=body, headers=headers) as resp,
    ):
        return resp.status, json.loads(await resp.read())


async def _signs_with(member: Member, signing: str, encryption: str) -> bool:
    keys = member.service.keys
    return bool(keys.signing.kid == signing and keys.decryption.kid == encryption)


def _current_keys(author: Member) -> dict[str, Any]:
    """Each reader's current encryption key, as `author`'s roster lists it."""
    svc = author.service
    return {n: svc.fed.encryption_key(n) for n in svc.channels.state("c2c").readers}


async def _count(member: Member) -> int:
    async with member.service.store.read() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(bulletins)) or 0)


async def _signer(member: Member, bid: str) -> str:
    async with member.service.store.read() as conn:
        raw = await conn.scalar(sa.select(bulletins.c.envelope).where(bulletins.c.id == bid))
    assert raw is not None
    return str(json.loads(raw if isinstance(raw, str) else bytes(raw))["header"]["signer"])


async def _receipts_verify(author: Member, bid: str) -> None:
    async def all_in() -> bool:
        status, read, _ = await author.api("GET", f"/api/v1/bulletins/{bid}")
        return status == 200 and {r["node"] for r in read["receipts"]} >= {"nl-customs", "ke-customs", "gb-avsec"} - {
            author.id
        }

    await eventually(all_in, timeout=CONVERGE, what=f"the receipts of {bid[:8]} at {author.id}")
    _, read, _ = await author.api("GET", f"/api/v1/bulletins/{bid}")
    verify_receipts([parse_receipt(r) for r in read["receipts"]], author.service.fed, stored=True)


def test_roster_propose_takes_a_rotation_request_and_refuses_a_forged_one(tmp_path: Path) -> None:
    """The authority's side: `exchange roster propose --rotate` lists the new key active and the old
    one retiring; a request the node's current key did not sign is one error line, nothing written."""
    from tests.protocol.test_rotation import FR_SIGNING, NEW_SIGNING, REFUSED, requests, version1

    held = tmp_path / "held.json"
    held.write_text(version1().model_dump_json())
    good, bad = tmp_path / "rotate.json", tmp_path / "forged.json"
    good.write_text(requests()[0].model_dump_json())
    bad.write_text(REFUSED["not signed by the old key"]().model_dump_json())
    out = tmp_path / "proposal.json"
    runner = CliRunner()
    done = runner.invoke(cli, ["roster", "propose", "--held", str(held), "--rotate", str(good), "--out", str(out)])
    assert done.exit_code == 0 and "rotation request of fr-customs" in done.output, done.output
    fr = next(n for n in json.loads(out.read_text())["nodes"] if n["id"] == "fr-customs")
    assert {k["kid"]: k["state"] for k in fr["keys"] if k["use"] == "signing"} == {
        FR_SIGNING.kid: "retiring",
        NEW_SIGNING.kid: "active",
    }
    refused = tmp_path / "refused.json"
    done = runner.invoke(cli, ["roster", "propose", "--held", str(held), "--rotate", str(bad), "--out", str(refused)])
    assert done.exit_code == 1 and "not signed by its active signing key" in done.output, done.output
    assert not refused.exists()
