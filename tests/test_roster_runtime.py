"""Nodes run on the roster v2 version they hold, on SQLite and PostgreSQL: a federation of release
0.1.0's v1 roster moves to roster v2 (a 2-of-3 authority), a new administration with no v1 roster
at all joins in version 2, every node imports the chain and restarts on it, and the newcomer is
invited to a channel, receives a bulletin and answers it.

In process, on loopback (the netns test of issue 11 is for later; gossip and live install:
tests/test_roster_gossip.py).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from exchange.app import local_roster
from exchange.clock import timestamp, utc_now
from exchange.config import NodeConfig
from exchange.crypto import SigningKey, b64d
from exchange.keystore import NodeKeyFiles, read_file
from exchange.model import SignedRoster
from exchange.protocol.rosterchain import TrustedRoster, combine, sign_roster_v2
from exchange.protocol.rostermigration import admit, authority, from_v1, sign_join_request
from exchange.provision import InitReport, sample_users
from exchange.store import bulletins
from tests.conftest import MakeFederation, Member, eventually, free_port

NOTE = {"kind": "alert", "title": "Undeclared lithium batteries", "body": "AWB 176-12345675"}


async def holds(member: Member, bid: str) -> bool:
    async with member.service.store.read() as conn:
        return (await conn.scalar(sa.select(bulletins.c.id).where(bulletins.c.id == bid))) is not None


async def test_a_newcomer_joins_by_roster_v2_and_exchanges_bulletins(
    tmp_path: Path, make_federation: MakeFederation, database: Callable[[str], Awaitable[str]]
) -> None:
    fed = await make_federation(start=False)
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    keys = nl.config.roster_path.parent
    holders = [SigningKey.generate() for _ in range(3)]
    authority_ = authority([(f"holder {i}", k.verify_key) for i, k in enumerate(holders)], 2)
    now = utc_now()
    issued, expires = timestamp(now), timestamp(now + dt.timedelta(days=365))

    # Version 1: the v1 roster migrated, signed by two holders and the v1 authority key.
    v1_key = SigningKey(b64d(read_file(keys / "federation" / "authority.key").decode().strip()))
    signed_v1 = SignedRoster.model_validate(json.loads(nl.config.roster_path.read_text()))
    doc1 = from_v1(signed_v1, v1_key.verify_key, authority_, issued, expires)
    version1 = combine(doc1, [sign_roster_v2(doc1, k) for k in (holders[0], holders[1], v1_key)])

    # The newcomer: its own node file, no v1 roster, its keys made "on its host", a join request.
    url = await database("za-customs")
    (fed.folder / "za-customs.toml").write_text(
        '[node]\nid = "za-customs"\nname = "Test za-customs"\ncountry = "ZA"\nagency = "customs"\n'
        f'port = {free_port()}\nroster_path = "{tmp_path / "no-v1-roster.json"}"\n'
        + (f'database_url = "{url}"\n' if url else "")
        + "retry_base_seconds = 0.05\nretry_max_seconds = 0.5\nrequest_timeout_seconds = 5\n"
    )
    za_cfg = NodeConfig.load(fed.folder / "za-customs.toml", environ={})
    za_keys = NodeKeyFiles(za_cfg.keys_dir)
    made = za_keys.generate("za-customs")
    details = {"federation": doc1.federation, "id": "za-customs", "name": "Test za-customs", "country": "ZA"}
    details |= {"agency": "customs", "endpoint": za_cfg.endpoint}
    request = sign_join_request(details, timestamp(), made.signing, made.decryption.public, read_file(za_keys.tls_cert))

    # Version 2 admits it; two of the three holders sign.
    doc2 = admit(doc1, timestamp(), expires, [request])
    version2 = combine(doc2, [sign_roster_v2(doc2, k) for k in (holders[1], holders[2])])
    assert TrustedRoster.restore(version1).accept(version2).version == 2
    chain = [json.dumps(v.model_dump(mode="json")).encode() for v in (version1, version2)]

    for cfg in (nl.config, ke.config, za_cfg):
        async with local_roster(cfg, create=True) as roster:  # as `roster import` opens it
            assert (roster.v1 is None) == (cfg.id == "za-customs")
            assert (await roster.import_chain(chain)).version == 2
    await sample_users(za_cfg, [], InitReport())
    tokens = {p.name: p.read_text().strip() for p in (za_cfg.keys_dir / "tokens").iterdir()}
    za = fed.members["za-customs"] = Member(za_cfg, None, tokens)
    for node_id in ("nl-customs", "ke-customs", "za-customs"):
        await fed.start(node_id)

    # Every node runs on version 2: it knows the newcomer, and the newcomer knows them.
    for member in (nl, ke, za):
        held = member.service.roster.held
        assert held is not None and held.version == 2
        assert member.service.fed.roster.version == 2
        assert {n.id for n in member.service.fed.roster.nodes} == {"nl-customs", "ke-customs", "za-customs"}
    status, entries, _ = await za.api("GET", "/api/v1/audit/entries", user="auditor")
    started = [e for e in entries["entries"] if e["event"] == "node.started"]
    assert started and started[-1]["roster_version"] == 2

    # Invited to the channel, it accepts, receives a bulletin and answers it.
    status, body, _ = await nl.api(
        "POST", "/api/v1/channels/c2c/invite", user="admin", body={"node": "za-customs", "rights": ["read", "post"]}
    )
    assert status == 200, body

    async def invited() -> bool:
        try:
            return "za-customs" in za.service.channels.state("c2c").invited
        except Exception:
            return False

    await eventually(invited, what="the invitation at za-customs")
    status, body, _ = await za.api("POST", "/api/v1/channels/c2c/accept", user="admin")
    assert status == 200 and "za-customs" in body["members"], body
    await za.api("POST", "/api/v1/channels/c2c/users", user="admin", body={"user": "officer"})

    async def member_at(m: Member) -> bool:
        return "za-customs" in m.service.channels.state("c2c").members

    await eventually(lambda: member_at(nl), what="za-customs a member at nl-customs")
    status, alert = await post(nl)
    assert status == 201 and "za-customs" in alert["recipients"], alert
    await eventually(lambda: holds(za, alert["id"]), what="the bulletin at za-customs")
    status, read, _ = await za.api("GET", f"/api/v1/bulletins/{alert['id']}")
    assert status == 200 and read["signature_verified"] is True
    status, answer = await post(za, kind="feedback", title="Consignment held", references=[alert["id"]])
    assert status == 201, answer
    await eventually(lambda: holds(nl, answer["id"]), what="the answer at nl-customs")
    await eventually(lambda: holds(ke, answer["id"]), what="the answer at ke-customs")


async def post(member: Member, channel: str = "c2c", **fields: Any) -> tuple[int, Any]:
    status, body, _ = await member.api("POST", f"/api/v1/channels/{channel}/bulletins", body={**NOTE, **fields})
    return status, body
