"""A push's transaction body (exchange.service.outbox_txn): joined once for the readers that are
sent the same batch, and always the bytes `transaction_body` makes for that batch."""

from __future__ import annotations

import json

from exchange.service.outbox_refs import EnvelopeRef, EventRef, OutItem
from exchange.service.outbox_txn import Bodies, transaction_body, transaction_id


def _envelopes(tag: str, count: int, size: int = 100, first: int = 1) -> list[OutItem]:
    return [
        OutItem(first + k, "envelope", EnvelopeRef(f"{tag}{k:063d}"), json.dumps({"e": "x" * size}).encode())
        for k in range(count)
    ]


def _txn(batch: list[OutItem]) -> str:
    return transaction_id([i.key for i in batch])


def test_the_readers_of_one_batch_are_sent_one_body_and_it_is_the_batch_s() -> None:
    bodies = Bodies()
    for_one, for_another = _envelopes("a", 50), _envelopes("a", 50, first=1001)  # two readers' rows, one batch
    sent = bodies.body(_txn(for_one), for_one)
    assert sent == transaction_body(_txn(for_one), for_one)
    again = bodies.body(_txn(for_another), for_another)
    assert again is sent  # joined once
    body = json.loads(sent)
    assert body["txn"] == _txn(for_one) and len(body["envelopes"]) == 50 and body["events"] == []


def test_another_batch_or_other_bytes_under_one_id_get_their_own_body() -> None:
    bodies = Bodies()
    one, other = _envelopes("a", 3), _envelopes("b", 3)
    assert bodies.body(_txn(one), one) != bodies.body(_txn(other), other)
    # The same keys with other bytes (a row edited by hand): the size differs, so it is joined anew.
    edited = [OutItem(i.n, i.kind, i.ref, i.data + b" ") for i in one]
    assert bodies.body(_txn(edited), edited) == transaction_body(_txn(edited), edited)
    mixed = [OutItem(9, "event", EventRef("c", 1), b'{"ev":1}'), *one]
    assert json.loads(bodies.body(_txn(mixed), mixed))["events"] == [{"ev": 1}]


def test_the_bodies_kept_stay_within_their_bound_and_a_large_one_is_not_kept() -> None:
    bodies = Bodies(limit=40_000)
    batches = [_envelopes(f"{k:x}", 10, size=900) for k in range(10)]  # about 9 KB each
    for batch in batches:
        bodies.body(_txn(batch), batch)
    assert bodies._bytes <= 40_000 and len(bodies._kept) < 10
    assert bodies._bytes == sum(len(b) for b in bodies._kept.values())
    newest = batches[-1]
    assert bodies.body(_txn(newest), newest) is bodies.body(_txn(newest), newest)  # the newest is kept
    large = _envelopes("f", 20, size=900)  # about 18 KB: over a quarter of the bound
    assert bodies.body(_txn(large), large) is not bodies.body(_txn(large), large)
    assert bodies._bytes <= 40_000


def test_a_body_sent_again_is_kept_longer_than_one_not_used_since() -> None:
    """Least recently used first out: a body still being sent to readers outlives older ones."""
    bodies = Bodies(limit=40_000)
    batches = [_envelopes(f"{k:x}", 10, size=900) for k in range(4)]  # about 9 KB each: four fit
    sent = [bodies.body(_txn(b), b) for b in batches]
    assert bodies.body(_txn(batches[0]), batches[0]) is sent[0]  # used again: now the most recent
    extra = _envelopes("e", 10, size=900)
    bodies.body(_txn(extra), extra)  # one must go: the least recently used, batches[1]
    assert bodies.body(_txn(batches[0]), batches[0]) is sent[0]
    assert bodies.body(_txn(batches[1]), batches[1]) is not sent[1]


def test_pushes_under_way_share_one_body_whatever_its_size_and_it_goes_with_the_last() -> None:
    """A body over a quarter of the bound is not kept, and each reader's push joined its own: a
    post of an 8 MiB envelope to 199 readers held 199 copies at once (found by a read-only review)."""
    bodies = Bodies(limit=40_000)
    large = _envelopes("f", 20, size=900)  # about 18 KB: not kept
    txn = _txn(large)
    with bodies.sending(txn, large) as one, bodies.sending(txn, large) as two:
        assert one is two and one == transaction_body(txn, large)  # before: a copy each
        with bodies.sending(txn, large) as three:
            assert three is one
    assert bodies._sending == {}  # dropped with the last push sending it
    with bodies.sending(txn, large) as later:
        assert later == one and later is not one  # joined again: it was not kept
