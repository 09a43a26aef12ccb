"""Must-show 1 of the first slice: two real nodes over mutual TLS deliver a bulletin and a receipt."""

from __future__ import annotations

import sqlalchemy as sa

from exchange.model import Receipt
from exchange.protocol.receipt import verify_receipt
from exchange.service.held_receipts import checked_receipts
from exchange.store import bulletins, receipts
from tests.conftest import MakeFederation, eventually

BULLETIN = {
    "kind": "threat-bulletin",
    "handling": {"tlp": "AMBER", "no_onward_sharing": True},
    "title": "Undervalued lithium batteries declared as toys",
    "body": "Shipper XYZ Trading routes via AMS; batteries mis-declared under HS 9503.",
    "indicators": {
        "air_waybills": ["176-12345675"],
        "hs_codes": ["8507.60"],
        "airports": ["AMS", "NBO"],
        "flights": ["KL565"],
        "companies": ["XYZ Trading Ltd"],
        "risk_indicators": ["undervaluation"],
    },
    "references": [],
    "language": "en",
    "expires": "2027-01-31",
}


async def count(member, table) -> int:  # type: ignore[no-untyped-def]
    async with member.service.store.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


async def test_post_at_a_is_readable_at_b_and_a_holds_bs_receipt(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    a, b = fed["nl-customs"], fed["ke-customs"]

    status, posted, _ = await a.api("POST", "/api/v1/channels/c2c/bulletins", body=BULLETIN)
    assert status == 201, posted
    bid = posted["id"]

    async def at_b() -> bool:
        status, page, _ = await b.api("GET", "/api/v1/bulletins")
        return status == 200 and any(item["id"] == bid for item in page["items"])

    await eventually(at_b, what="the bulletin to reach B")
    status, shown, _ = await b.api("GET", f"/api/v1/bulletins/{bid}")
    assert status == 200
    assert shown["bulletin"] == {**BULLETIN, "attachments": []}
    assert shown["author"] == "nl-customs" and shown["signature_verified"] is True

    async def receipt_at_a() -> bool:
        return await count(a, receipts) >= 1

    await eventually(receipt_at_a, what="B's receipt at A")
    async with a.service.store.read() as conn:  # as shown: kept as a leaf of its batch (protocol 10.4)
        (held,) = [h for h in await checked_receipts(conn, a.service.fed, bid) if h.node == "ke-customs"]
    receipt = Receipt.model_validate_json(held.receipt)
    assert receipt.bulletin == bid and receipt.status == "received"
    verify_receipt(receipt, a.service.fed)  # signed by B's roster key
    assert await count(b, bulletins) == 1


async def test_attachments_travel_encrypted_and_the_size_limit_is_enforced(make_federation: MakeFederation) -> None:
    from exchange.crypto import b64d, b64e
    from exchange.model import MAX_ATTACHMENT_BYTES

    fed = await make_federation()
    a, b = fed["nl-customs"], fed["ke-customs"]
    blob = bytes(range(256)) * 64
    with_file = {
        **BULLETIN,
        "attachments": [{"name": "manifest.pdf", "media_type": "application/pdf", "data": b64e(blob)}],
    }
    status, posted, _ = await a.api("POST", "/api/v1/channels/c2c/bulletins", body=with_file)
    assert status == 201, posted

    async def at_b() -> bool:
        return (await b.api("GET", f"/api/v1/bulletins/{posted['id']}"))[0] == 200

    await eventually(at_b, what="the bulletin with its attachment at B")
    _, shown, _ = await b.api("GET", f"/api/v1/bulletins/{posted['id']}")
    assert b64d(shown["bulletin"]["attachments"][0]["data"]) == blob
    async with b.service.store.read() as conn:  # encrypted in the envelope: the bytes are not in the clear there
        env = (await conn.execute(sa.select(bulletins.c.envelope).where(bulletins.c.id == posted["id"]))).scalar_one()
    assert b64e(blob[:300]).encode() not in bytes(env)
    too_big = b64e(b"x" * (MAX_ATTACHMENT_BYTES + 1))
    for bad in (
        [{"name": "big.bin", "media_type": "application/octet-stream", "data": too_big}],
        [{"name": "../etc/passwd", "media_type": "text/plain", "data": "eA"}],
    ):
        status, problem, ctype = await a.api(
            "POST", "/api/v1/channels/c2c/bulletins", body={**BULLETIN, "attachments": bad}
        )
        assert status == 422 and ctype == "application/problem+json", problem
    assert await count(a, bulletins) == 1
