"""Receipts a partner pushes on its own ('opened', or 'received' for what it pulled), from the
attacker's side, on real nodes over mutual TLS, SQLite and PostgreSQL (docs/protocol.md 11.2):
only a recipient of a bulletin this node wrote may file one; a bad receipt refuses the whole
transaction, its envelopes with it, with nothing stored; a receipt sent twice counts once."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from exchange.clock import timestamp
from exchange.model import NodeId, Receipt
from exchange.protocol.envelope import envelope_bytes
from exchange.protocol.receipt import make_receipt
from exchange.store import audit_log, bulletins, receipts
from tests.conftest import DEFAULT_NODES, MakeFederation, Member, eventually
from tests.test_federation_security import envelope_from

THREE = {k: DEFAULT_NODES[k] for k in ("nl-customs", "ke-customs", "wco-rilo")}
BULLETIN = {"kind": "alert", "handling": {"tlp": "AMBER"}, "title": "Undeclared cells", "body": "AWB 074-12345675"}


async def count(member: Member, table: sa.Table, *where: Any) -> int:
    async with member.service.store.read() as conn:
        query = sa.select(sa.func.count()).select_from(table).where(*where)
        return int((await conn.execute(query)).scalar_one())


async def events(member: Member) -> list[dict[str, Any]]:
    async with member.service.store.read() as conn:
        rows = (await conn.execute(sa.select(audit_log.c.entry).order_by(audit_log.c.idx))).scalars().all()
    return [json.loads(r) for r in rows]


def pushed(*receipts_: Receipt, envelopes: bytes = b"") -> bytes:
    listed = ",".join(json.dumps(r.model_dump(mode="json")) for r in receipts_)
    return b'{"txn":"t1","envelopes":[' + envelopes + b'],"receipts":[' + listed.encode() + b"]}"


async def posted_by(author: Member) -> str:
    status, body, _ = await author.api("POST", "/api/v1/channels/c2c/bulletins", body=BULLETIN)
    assert status == 201, body
    return str(body["id"])


async def test_a_recipients_opened_receipt_is_kept_and_a_non_recipients_refused(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation(nodes=THREE)
    nl, ke, outsider = fed["nl-customs"], fed["ke-customs"], fed["wco-rilo"]
    assert outsider.id not in nl.service.channels.state("c2c").members
    bid = await posted_by(nl)
    before = await events(nl)
    forged = make_receipt(bid, NodeId(outsider.id), "opened", timestamp(), outsider.service.keys.signing)
    status, problem, ctype = await nl.fed_post(outsider, pushed(forged))
    assert (status, ctype) == (422, "application/problem+json"), problem
    assert "was not a recipient" in json.dumps(problem)
    assert await count(nl, receipts, receipts.c.node == outsider.id) == 0
    assert not [e for e in await events(nl) if e["event"] == "bulletin.opened_by"]
    about = [e["event"] for e in (await events(nl))[len(before) :] if outsider.id in json.dumps(e)]
    assert about == ["request.rejected"], about  # the refusal's own entry, and nothing else of it
    opened = make_receipt(bid, NodeId(ke.id), "opened", timestamp(), ke.service.keys.signing)
    status, body, _ = await nl.fed_post(ke, pushed(opened))
    assert status == 200, body
    assert await count(nl, receipts, receipts.c.node == ke.id, receipts.c.status == "opened") == 1
    assert [e["to"] for e in await events(nl) if e["event"] == "bulletin.opened_by"] == [ke.id]


async def test_a_bad_receipt_refuses_the_envelopes_beside_it(make_federation: MakeFederation) -> None:
    """The receipts are checked before the transaction's envelopes are stored."""
    fed = await make_federation()
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    wire = envelope_bytes(envelope_from(nl))
    body = b'{"txn":"t1","envelopes":[' + wire + b'],"receipts":["not a receipt"]}'
    status, problem, ctype = await ke.fed_post(nl, body)
    assert (status, ctype) == (422, "application/problem+json"), problem
    assert await count(ke, bulletins) == 0 and await count(ke, receipts) == 0
    assert not [e for e in await events(ke) if e["event"] == "bulletin.received"]
    # A receipt for a bulletin ke never wrote, beside the same envelope: refused alike.
    stray = make_receipt("ab" * 32, NodeId(nl.id), "opened", timestamp(), nl.service.keys.signing)
    status, problem, _ = await ke.fed_post(nl, pushed(stray, envelopes=wire))
    assert status == 422 and "did not author" in json.dumps(problem)
    assert await count(ke, bulletins) == 0
    status, body, _ = await ke.fed_post(nl, b'{"txn":"t1","envelopes":[' + wire + b"]}")
    assert status == 200, body  # the same envelope alone is taken
    assert await count(ke, bulletins) == 1


async def test_a_receipt_sent_twice_in_one_request_counts_once(make_federation: MakeFederation) -> None:
    """It was a 500: both copies were inserted and broke the receipts table's key."""
    fed = await make_federation()
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    bid = await posted_by(nl)

    async def delivered() -> bool:
        return await count(nl, receipts, receipts.c.node == ke.id) >= 1

    await eventually(delivered, what="ke's receipt at nl")
    opened = make_receipt(bid, NodeId(ke.id), "opened", timestamp(), ke.service.keys.signing)
    status, body, _ = await nl.fed_post(ke, pushed(opened, opened))
    assert status == 200, body
    assert await count(nl, receipts, receipts.c.node == ke.id, receipts.c.status == "opened") == 1
    assert len([e for e in await events(nl) if e["event"] == "bulletin.opened_by"]) == 1


async def test_a_receipt_whose_version_is_true_is_refused_and_nothing_stored(make_federation: MakeFederation) -> None:
    """`"v": true` passes the strict parser, and pydantic's Literal[1] took it for 1 (2.5: no
    coercion): the receipt was verified and stored as a v1 receipt."""
    fed = await make_federation()
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    bid = await posted_by(nl)
    opened = make_receipt(bid, NodeId(ke.id), "opened", timestamp(), ke.service.keys.signing)
    listed = json.dumps({**opened.model_dump(mode="json"), "v": True}).encode()
    status, problem, ctype = await nl.fed_post(ke, b'{"txn":"t1","envelopes":[],"receipts":[' + listed + b"]}")
    assert (status, ctype) == (422, "application/problem+json"), problem
    assert await count(nl, receipts, receipts.c.node == ke.id, receipts.c.status == "opened") == 0
    assert not [e for e in await events(nl) if e["event"] == "bulletin.opened_by"]
    status, body, _ = await nl.fed_post(ke, pushed(opened))  # the same receipt with "v": 1
    assert status == 200, body
    assert await count(nl, receipts, receipts.c.node == ke.id, receipts.c.status == "opened") == 1


async def test_a_second_receipt_for_one_bulletin_and_status_is_checked_too(make_federation: MakeFederation) -> None:
    """Only the first receipt of each (bulletin, status) was checked: after a good one, a forged
    one (bad signature, or another node's) was dropped unchecked and the transaction taken."""
    fed = await make_federation(nodes=THREE)
    nl, ke, outsider = fed["nl-customs"], fed["ke-customs"], fed["wco-rilo"]
    bid = await posted_by(nl)
    opened = make_receipt(bid, NodeId(ke.id), "opened", timestamp(), ke.service.keys.signing)
    tampered = opened.model_copy(update={"at": "2020-01-01T00:00:00.000Z"})  # its signature no longer holds
    another = make_receipt(bid, NodeId(outsider.id), "opened", timestamp(), outsider.service.keys.signing)
    for second, error in ((tampered, "BadSignature"), (another, "its own receipts")):
        status, problem, ctype = await nl.fed_post(ke, pushed(opened, second))
        assert (status, ctype) == (422, "application/problem+json"), problem
        assert error in json.dumps(problem)
        assert await count(nl, receipts, receipts.c.status == "opened") == 0
        assert not [e for e in await events(nl) if e["event"] == "bulletin.opened_by"]
    status, body, _ = await nl.fed_post(ke, pushed(opened, opened))
    assert status == 200, body
    assert await count(nl, receipts, receipts.c.status == "opened") == 1
