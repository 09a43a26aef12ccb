"""The batch form of a push's answer (docs/protocol.md 10.4): the vectors of receipt-v2.json
(`outputs.batch_form`), every altered batch refused with its error, and a property test that the
batch form gives the author the very receipts, byte for byte, that the full form gives."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from exchange import errors
from exchange.crypto import strict_loads
from exchange.model import NodeId, Receipt
from exchange.protocol.receipt import make_receipts, parse_receipt, receipt_json, verify_receipt
from exchange.protocol.receipt_batches import batch_form, checked_batches, receipt_text
from tests.protocol.test_receipts import AT, FED, OUTPUTS, SIGNER

FORM: dict[str, Any] = OUTPUTS["batch_form"]
DEST = "ke-customs"


def ids(n: int, label: str) -> list[str]:
    return [hashlib.sha256(f"{label}/{i}".encode()).hexdigest() for i in range(n)]


def test_the_vector_answer_gives_the_batch_receipts_byte_for_byte() -> None:
    batch = OUTPUTS["batch"]
    got = checked_batches(FORM["answer"]["batches"], DEST, set(batch["bulletins"]), FED)
    assert [receipt_text(got[b]) for b in batch["bulletins"]] == [r["jcs"] for r in batch["receipts"]]
    for made in got.values():  # each provable alone, as any receipt
        verify_receipt(parse_receipt(strict_loads(receipt_text(made))), FED)
    assert FORM["answer"]["receipts"] == []


@pytest.mark.parametrize("negative", FORM["negatives"], ids=[n["name"] for n in FORM["negatives"]])
def test_each_altered_batch_is_refused_with_its_error(negative: dict[str, Any]) -> None:
    sent = set(OUTPUTS["batch"]["bulletins"])
    with pytest.raises(errors.ExchangeError) as caught:
        checked_batches([negative["batch"]], DEST, sent, FED)
    assert type(caught.value).__name__ == negative["error"], caught.value


def test_the_form_itself_is_checked() -> None:
    good = FORM["answer"]["batches"][0]
    sent = set(OUTPUTS["batch"]["bulletins"])
    for bad in ({"batches": 1}, "batches", 5, None):
        with pytest.raises(errors.InvalidInput):
            checked_batches(bad, DEST, sent, FED)
    with pytest.raises(errors.InvalidInput):
        checked_batches([[good]], DEST, sent, FED)
    with pytest.raises(errors.InvalidInput):
        checked_batches([{**good, "bulletins": []}], DEST, sent, FED)
    with pytest.raises(errors.InvalidInput):
        checked_batches([{**good, "signature": 7}], DEST, sent, FED)
    with pytest.raises(errors.InvalidEnvelope):  # another node's batch
        checked_batches([good], "gb-avsec", sent, FED)
    with pytest.raises(errors.InvalidEnvelope):  # one bulletin in two batches
        checked_batches([good, good], DEST, sent, FED)


def test_a_batch_not_whole_in_the_answer_goes_in_full() -> None:
    three = make_receipts(ids(3, "w"), NodeId(DEST), "received", AT, SIGNER)
    held = make_receipts(ids(4, "h"), NodeId(DEST), "received", AT, SIGNER)[1:3]  # two of a batch of four
    full, batches = batch_form([held[0], *three, held[1]])
    assert full == held
    assert batches == [
        {
            "statement": {k: getattr(three[0], k) for k in ("v", "node", "status", "at", "signer", "size", "root")},
            "signature": three[0].signature,
            "bulletins": [r.bulletin for r in three],
        }
    ]


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=70), min_size=1, max_size=4),
    partial=st.lists(st.integers(min_value=0, max_value=69), max_size=6),
    shuffle=st.randoms(use_true_random=False),
)
def test_the_batch_form_gives_the_receipts_of_the_full_form(sizes: list[int], partial: list[int], shuffle: Any) -> None:
    """Whole batches and leaves of others, in any order: the author stores the same texts either way."""
    answer: list[Receipt] = []
    for n, size in enumerate(sizes):
        answer += make_receipts(ids(size, f"s{n}"), NodeId(DEST), "received", f"2025-03-14T09:26:5{n}.120Z", SIGNER)
    other = make_receipts(ids(70, "other"), NodeId(DEST), "received", AT, SIGNER)
    answer += [other[i] for i in sorted(set(partial))]
    shuffle.shuffle(answer)
    full, batches = batch_form(answer)
    sent = {r.bulletin for r in answer}
    got = checked_batches(batches, DEST, sent, FED)
    assert len(batches) == len(sizes) and got.keys().isdisjoint({r.bulletin for r in full})
    assert {b: receipt_text(s) for b, s in got.items()} | {r.bulletin: receipt_json(r) for r in full} == {
        r.bulletin: receipt_json(r) for r in answer
    }
