"""Epochs and history grants in the audit log, on real nodes over mutual TLS (docs/audit.md, 1;
docs/protocol.md, 15): the owner audits each epoch it makes and each grant it makes, a reader
each epoch key it takes from its wrap, the grantee each grant it takes; the logs still verify."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from exchange.audit.epoch_events import EPOCH_GRANT_TAKEN, EPOCH_GRANTED, EPOCH_KEY_TAKEN, EPOCH_MADE
from exchange.protocol.epoch import epoch_hash, grant_digest
from exchange.store import audit_log
from tests.conftest import MakeFederation, Member, eventually
from tests.test_epoch_attacks import NODES, V2, admin_invite_and_accept, arrives, channel, post, stored_wire
from tests.workers import run_cli

KINDS = (EPOCH_MADE, EPOCH_KEY_TAKEN, EPOCH_GRANTED, EPOCH_GRANT_TAKEN)


async def epoch_entries(member: Member) -> list[dict[str, Any]]:
    async with member.service.store.read() as conn:
        rows = await conn.scalars(sa.select(audit_log.c.entry).order_by(audit_log.c.idx))
        entries = [json.loads(e) for e in rows]
    return [e for e in entries if e["event"] in KINDS]


async def test_epochs_and_grants_are_audited_at_both_ends(make_federation: MakeFederation) -> None:
    fed = await make_federation(
        nodes={n: NODES[n] for n in ("nl-customs", "ke-customs", "de-customs")},
        channels=[channel("nl-customs", "ke-customs")],
        options=V2,
    )
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    early = await post(nl, "under epoch 0")
    await arrives(ke, early["id"])
    await admin_invite_and_accept(nl, de)
    late = await post(nl, "under epoch 1")
    for member in (ke, de):
        await arrives(member, late["id"])
    status, body, _ = await nl.api(
        "POST", "/api/v1/channels/c2c/grant-history", user="admin", body={"node": "de-customs"}
    )
    assert status == 200, body

    async def granted() -> bool:
        de.service.catchup.wake()
        return await stored_wire(de, early["id"]) is not None

    await eventually(granted, timeout=30, what="the earlier bulletin at de-customs, by its grant")

    records = [r for n in (0, 1) if (r := nl.service.epochs.record("c2c", n)) is not None]
    assert len(records) == 2
    hashes = [epoch_hash(r) for r in records]
    grant = de.service.epochs.grants["c2c"][0]
    # The owner: each epoch it made (with the readers its wraps are for), and the grant it made.
    at_nl = await epoch_entries(nl)
    assert [e["event"] for e in at_nl] == [EPOCH_MADE, EPOCH_MADE, EPOCH_GRANTED], at_nl
    for entry, record, h in zip(at_nl, records, hashes, strict=False):
        assert entry | {"at": ""} == {
            "idx": entry["idx"],
            "event": EPOCH_MADE,
            "at": "",
            "channel": "c2c",
            "n": record.n,
            "hash": h,
            "state": record.state.pos,
            "readers": list(record.readers),
        }
    assert at_nl[1]["readers"] == ["de-customs", "ke-customs", "nl-customs"]
    made = at_nl[2]
    assert (made["channel"], made["node"], made["epochs"], made["hash"]) == (
        "c2c",
        "de-customs",
        [0],
        grant_digest(grant),
    )
    assert made["state"] == grant.state.pos
    # A reader: each key it took from its wrap. The grantee: the key of epoch 1 from its wrap,
    # then the grant (the same hash as the owner's entry), which gave it epoch 0.
    at_ke = await epoch_entries(ke)
    assert [(e["event"], e["n"], e["hash"], e["owner"]) for e in at_ke] == [
        (EPOCH_KEY_TAKEN, 0, hashes[0], "nl-customs"),
        (EPOCH_KEY_TAKEN, 1, hashes[1], "nl-customs"),
    ]
    at_de = await epoch_entries(de)
    assert [e["event"] for e in at_de] == [EPOCH_KEY_TAKEN, EPOCH_GRANT_TAKEN], at_de
    assert (at_de[0]["n"], at_de[0]["hash"]) == (1, hashes[1])
    taken = at_de[1]
    assert (taken["owner"], taken["epochs"], taken["hash"], taken["state"]) == (
        "nl-customs",
        [0],
        made["hash"],
        made["state"],
    )
    # Nothing is audited twice: a second pull of the same epochs and grants takes nothing new.
    await de.service.epochs.pull("nl-customs", "c2c")
    assert await epoch_entries(de) == at_de
    for member in (nl, ke, de):
        code, out, err = await run_cli("audit", "verify", "--node", str(fed.folder / f"{member.id}.toml"))
        assert code == 0 and "OK" in out, (member.id, out, err)
