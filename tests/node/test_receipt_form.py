"""The answer to a push over real mutual TLS, in full or in the batch form (docs/protocol.md 10.4):
a sender that does not ask for the batch form gets full receipts, as before; one that asks gets
whole batches, from which it makes the same receipts; and a real author's pushes use it."""

from __future__ import annotations

import sqlalchemy as sa

from exchange.crypto import canonical_json, strict_loads
from exchange.model import Bulletin
from exchange.protocol.envelope import envelope_bytes
from exchange.protocol.receipt import parse_receipt, verify_receipt
from exchange.protocol.receipt_batches import BATCHES, RECEIPT_FORM_HEADER, checked_batches, receipt_text
from exchange.service.held_receipts import checked_receipts
from exchange.store import receipts
from tests.conftest import MakeFederation, authored, eventually

ALERT = Bulletin.model_validate({"kind": "alert", "handling": {"tlp": "AMBER"}, "title": "Alert", "body": "text"})
BATCH_FORM = {RECEIPT_FORM_HEADER: BATCHES}


def transaction(*envelopes: bytes, txn: str = "t1") -> bytes:
    return b'{"txn":"%s","envelopes":[%s]}' % (txn.encode(), b",".join(envelopes))


async def test_the_answer_is_in_full_unless_the_sender_asks_for_the_batch_form(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    a, b = fed["nl-customs"], fed["ke-customs"]
    one, two, three = (envelope_bytes(authored(a, ALERT, seq=seq)) for seq in (1, 2, 3))
    status, full, _ = await b.fed_post(a, transaction(one, two))
    assert status == 200 and set(full) == {"txn", "receipts"} and len(full["receipts"]) == 2
    # The same two again with a third, asking for the batch form: the two held come back as the
    # whole batch they were given in, the third as a batch of its own.
    status, answer, _ = await b.fed_post(a, transaction(one, two, three, txn="t2"), headers=BATCH_FORM)
    assert status == 200 and answer["receipts"] == [] and len(answer["batches"]) == 2
    sent = {parse_receipt(r).bulletin for r in full["receipts"]}
    pushed = {bid for batch in answer["batches"] for bid in batch["bulletins"]}
    assert sent < pushed
    made = checked_batches(answer["batches"], "ke-customs", pushed, a.service.fed)
    given = {r["bulletin"]: canonical_json(r).decode() for r in full["receipts"]}
    assert {b: receipt_text(made[b]) for b in sent} == given
    # Any other value of the header is the full form.
    status, other, _ = await b.fed_post(a, transaction(three, txn="t3"), headers={RECEIPT_FORM_HEADER: "Batches"})
    assert status == 200 and set(other) == {"txn", "receipts"}


async def test_an_author_pushing_to_a_real_node_stores_receipts_that_verify(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    a, b = fed["nl-customs"], fed["ke-customs"]

    async def swept() -> bool:
        return b.service.catchup.sweeps >= 1

    # Posted after the reader's first catch-up: else, on a loaded machine, that sweep can pull the
    # posts before they are pushed, and the reader pushes its receipts itself, in full (CI, once).
    await eventually(swept, what="the reader's first catch-up")
    officer = await a.service.users.get("officer")
    ids = [(await a.service.post(officer, "c2c", ALERT)).id for _ in range(3)]

    async def receipted() -> bool:
        async with a.service.store.read() as conn:
            return len((await conn.execute(sa.select(receipts.c.bulletin_id))).all()) == 3

    await eventually(receipted, what="three receipts at the author")
    async with a.service.store.read() as conn:  # as shown: made from the batch it was taken in
        held = {b: h.receipt for b in ids for h in await checked_receipts(conn, a.service.fed, b)}
        # (a receipt the reader pushed itself, after a catch-up, is kept in full)
        assert "" in {r.receipt for r in await conn.execute(sa.select(receipts))}
    async with b.service.store.read() as conn:
        given = {r.bulletin_id: r.receipt for r in await conn.execute(sa.select(receipts))}
    assert held == given and set(held) == set(ids)
    for text in held.values():
        verify_receipt(parse_receipt(strict_loads(text)), a.service.fed)
