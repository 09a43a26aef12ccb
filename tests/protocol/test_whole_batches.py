"""A transaction's receipts checked a whole batch at a time (`whole_batches`, the sender's usual
way) against the receipt-by-receipt check it stands for (`answered`, then `verify_receipts`):
on the honest answers it applies to, and on answers altered every way a partner could, it
accepts only what the full check accepts, and gives the same receipts."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from exchange.crypto import SigningKey
from exchange.errors import ExchangeError, InvalidEnvelope, UnknownPeer
from exchange.model import NodeId, Receipt
from exchange.protocol.receipt import (
    StoredReceipt,
    answered,
    make_receipt,
    make_receipts,
    receipt_json,
    stored,
    verify_receipts,
    whole_batches,
)
from exchange.protocol.roster import Federation, FormerKeys
from tests.protocol.test_receipts import AT, FED, SIGNER, ids

DEST = "ke-customs"


def wire(receipts: list[Receipt]) -> list[dict[str, Any]]:
    """The receipts as the sender reads them from the answer's JSON."""
    return [json.loads(receipt_json(r)) for r in receipts]


def full_check(raws: list[Any], sent: set[str]) -> dict[str, StoredReceipt] | None:
    """The receipt-by-receipt check, as stored: None where it refuses."""
    try:
        got = answered(raws, DEST, sent)
        verify_receipts(list(got.values()), FED)
    except ExchangeError:
        return None
    return {b: stored(r) for b, r in got.items()}


def test_an_honest_answer_is_checked_whole_and_gives_what_the_full_check_gives() -> None:
    bids = ids(37)
    raws = wire(make_receipts(bids, NodeId(DEST), "received", AT, SIGNER))
    fast = whole_batches(raws, DEST, set(bids), FED)
    assert fast is not None
    assert fast == full_check(raws, set(bids))


def test_two_whole_batches_in_one_answer_in_any_order_are_checked_whole() -> None:
    first, second = ids(5, "first"), ids(3, "second")
    raws = wire(make_receipts(first, NodeId(DEST), "received", AT, SIGNER))
    raws += wire(make_receipts(second, NodeId(DEST), "received", "2025-03-14T09:27:00.000Z", SIGNER))
    raws.reverse()
    fast = whole_batches(raws, DEST, {*first, *second}, FED)
    assert fast is not None
    assert fast == full_check(raws, {*first, *second})


@pytest.mark.parametrize(
    "case",
    [
        "part of a batch",  # a retried envelope answered from an earlier, larger batch
        "a v1 receipt",
        "another node",
        "opened",
        "a receipt too many",
    ],
)
def test_answers_it_does_not_apply_to_go_to_the_full_check(case: str) -> None:
    bids = ids(4)
    raws = wire(make_receipts(bids, NodeId(DEST), "received", AT, SIGNER))
    sent = set(bids)
    if case == "part of a batch":
        sent.discard(bids[0])
        raws = raws[1:]
    elif case == "a v1 receipt":
        raws[0] = json.loads(receipt_json(make_receipt(bids[0], NodeId(DEST), "received", AT, SIGNER)))
    elif case == "another node":
        raws = wire(make_receipts(bids, NodeId("gb-avsec"), "received", AT, SIGNER))
    elif case == "opened":
        raws = wire(make_receipts(bids, NodeId(DEST), "opened", AT, SIGNER))
    else:
        raws.append(raws[0])
    assert whole_batches(raws, DEST, sent, FED) is None
    if case in ("part of a batch", "a v1 receipt"):
        assert full_check(raws, sent) is not None  # honest: the full check takes it
    else:
        assert full_check(raws, sent) is None


def test_proofs_of_the_bulletins_sent_under_a_statement_signed_for_another_root_are_refused() -> None:
    """The node signed a statement, but over the root of other bulletins: each proof is the right
    path in the tree of the bulletins sent, and leads to that tree's root, not to the signed one."""
    bids = ids(6)
    signed = wire(make_receipts(ids(6, "other"), NodeId(DEST), "received", AT, SIGNER))
    honest = wire(make_receipts(bids, NodeId(DEST), "received", AT, SIGNER))
    raws = [{**s, "bulletin": h["bulletin"], "proof": h["proof"]} for s, h in zip(signed, honest, strict=True)]
    assert whole_batches(raws, DEST, set(bids), FED) is None
    assert full_check(raws, set(bids)) is None


# Every way to alter one member of one receipt: another value of the same type, of another type,
# a canonical encoding's neighbour, the member dropped, a member added.
OTHER_VALUES: list[Any] = [None, True, False, 0, 1, 2, 2.0, -1, 65536, "", "x", [], {}, ["a"]]


def altered(raw: dict[str, Any], member: str, how: int, donor: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    value = out.get(member)
    if how == 0:
        out.pop(member, None)
    elif how == 1:
        out["extra"] = 1
    elif how == 2:
        out[member] = donor.get(member)  # the same member of another receipt of the answer
    elif how == 3 and isinstance(value, str) and value:
        out[member] = value[:-1] + ("A" if value[-1] != "A" else "B")  # a last character changed
    elif how == 4 and isinstance(value, list) and value:
        out[member] = value[::-1] if len(value) > 1 else [*value, value[0]]
    elif how == 5 and type(value) is int:
        out[member] = float(value)  # equal to the int, and not JSON's integer
    else:
        out[member] = OTHER_VALUES[how % len(OTHER_VALUES)]
    return out


MEMBERS = ["v", "bulletin", "node", "status", "at", "signer", "size", "root", "index", "proof", "signature"]


@settings(max_examples=400, deadline=None)
@given(
    size=st.integers(1, 12),
    alterations=st.lists(
        st.tuples(st.integers(0, 11), st.sampled_from(MEMBERS), st.integers(0, 20), st.integers(0, 11)), max_size=3
    ),
    order=st.randoms(use_true_random=False),
    drop=st.booleans(),
)
def test_no_altered_answer_is_taken_that_the_full_check_refuses(
    size: int, alterations: list[tuple[int, str, int, int]], order: Any, drop: bool
) -> None:
    bids = ids(size, "altered")
    raws = wire(make_receipts(bids, NodeId(DEST), "received", AT, SIGNER))
    for which, member, how, donor in alterations:
        raws[which % size] = altered(raws[which % size], member, how, raws[donor % size])
    order.shuffle(raws)
    if drop and size > 1:
        raws.pop()
    fast = whole_batches(raws, DEST, set(bids), FED)
    full = full_check(raws, set(bids))
    if fast is not None:
        assert fast == full
    if not alterations and not drop:
        assert fast is not None  # an honest answer, reordered, is checked whole


@pytest.mark.parametrize("version", [2.0, True])
def test_a_version_that_is_not_an_integer_is_refused_both_ways(version: Any) -> None:
    """The fast way declined `"v": 2.0` (not an int) and the full check then took it, as 2."""
    bids = ids(3)
    raws = wire(make_receipts(bids, NodeId(DEST), "received", AT, SIGNER))
    raws[1]["v"] = version
    assert whole_batches(raws, DEST, set(bids), FED) is None
    assert full_check(raws, set(bids)) is None
    v1 = make_receipt(bids[0], NodeId(DEST), "received", AT, SIGNER)
    alone = json.loads(receipt_json(v1))
    assert full_check([alone], {bids[0]}) is not None
    assert full_check([{**alone, "v": True}], {bids[0]}) is None


@pytest.mark.parametrize("state", ["retiring", "verify-only", "compromised"])
def test_a_former_keys_receipts_are_taken_new_only_while_it_is_retiring(state: str) -> None:
    """10.3 step 2 and 6a.13, both ways alike: an answer signed with the node's former key is taken
    while the key is `retiring`; once it is `verify-only` only as one held from before; never
    once `compromised`."""
    old = SigningKey.generate()
    former = {(DEST, old.verify_key.kid): (state, old.verify_key.raw)}
    fed = Federation.index(FED.roster, FormerKeys(former, frozenset()))
    bids = ids(3, "former")
    raws = wire(make_receipts(bids, NodeId(DEST), "received", AT, old))
    fast = whole_batches(raws, DEST, set(bids), fed)
    got = answered(raws, DEST, set(bids))
    if state == "retiring":
        assert fast is not None
        verify_receipts(list(got.values()), fed)
        return
    assert fast is None
    with pytest.raises(InvalidEnvelope, match="roster key"):
        verify_receipts(list(got.values()), fed)
    if state == "verify-only":
        verify_receipts(list(got.values()), fed, stored=True)
    else:
        with pytest.raises(InvalidEnvelope):
            verify_receipts(list(got.values()), fed, stored=True)


def departed(compromised: bool = False) -> Federation:
    """FED once a version suspends or revokes DEST: its key verify-only (6a.7), unless compromised."""
    kept = [n for n in FED.roster.nodes if n.id != DEST]
    signing = {} if compromised else {(DEST, SIGNER.verify_key.kid): ("verify-only", SIGNER.verify_key.raw)}
    return Federation.index(
        FED.roster.model_copy(update={"nodes": kept}), FormerKeys(signing, frozenset(), {DEST: "x"})
    )


def test_a_departed_nodes_receipts_held_from_before_still_verify_and_new_ones_are_refused() -> None:
    """6a.7: a suspended or revoked node's keys, but compromised ones, stay verify-only for what the
    receiver stores. `verify_receipts` refused a held receipt of such a node (UnknownPeer), so an
    author no longer showed that a reader it had delivered to, since suspended, got the bulletin."""
    bids = ids(3, "departed")
    receipts = make_receipts(bids, NodeId(DEST), "received", AT, SIGNER)
    opened = make_receipt(bids[0], NodeId(DEST), "opened", AT, SIGNER)
    verify_receipts([*receipts, opened], departed(), stored=True)
    for fed, stored_ in ((departed(), False), (departed(compromised=True), True), (departed(compromised=True), False)):
        with pytest.raises(UnknownPeer):
            verify_receipts([*receipts, opened], fed, stored=stored_)
    assert whole_batches(wire(receipts), DEST, set(bids), departed()) is None
    never = Federation.index(departed().roster)  # a node no version lists
    with pytest.raises(UnknownPeer):
        verify_receipts(receipts, never, stored=True)
