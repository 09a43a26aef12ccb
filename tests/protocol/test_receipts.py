"""Receipts, v1 and v2 (docs/protocol.md, section 10): the golden vectors in receipt-v2.json, a
check written from the text alone, tampering with a batch, and one receipt proven on its own."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from exchange import errors
from exchange.crypto import SigningKey, b64d, b64e, canonical_json, strict_loads
from exchange.errors import ExchangeError, InvalidInput
from exchange.merkle import inclusion_proof, leaf_hash, root_from_leaf_hashes
from exchange.model import NodeId, Receipt
from exchange.protocol.receipt import (
    BATCH_DOMAIN,
    inclusion_path,
    make_receipt,
    make_receipts,
    parse_receipt,
    signatures_needed,
    statement,
    tree_levels,
    verify_receipt,
    verify_receipts,
)
from exchange.protocol.signing import signing_input
from tests.vectors import make_vectors
from tests.vectors.make_vectors import RECEIPTS_FILE, recorded_federation

RAW = RECEIPTS_FILE.read_text("utf-8")
V: dict[str, Any] = strict_loads(RAW)
INPUTS, OUTPUTS = V["inputs"], V["outputs"]
ENVELOPE_VECTOR: dict[str, Any] = strict_loads(make_vectors.ENVELOPE_FILE.read_text("utf-8"))
FED = recorded_federation(ENVELOPE_VECTOR["outputs"])
SIGNER = SigningKey(b64d(INPUTS["signer"]["ed25519_private"]))
AT = "2025-03-14T09:26:54.120Z"


def ids(n: int, label: str = "b") -> list[str]:
    return [hashlib.sha256(f"{label}/{i}".encode()).hexdigest() for i in range(n)]


def batch(n: int, *, at: str = AT, label: str = "b") -> list[Receipt]:
    return make_receipts(ids(n, label), NodeId("ke-customs"), "received", at, SIGNER)


# -- the vectors --------------------------------------------------------------------------------


def test_the_receipt_vectors_reproduce_byte_for_byte() -> None:
    assert make_vectors.render(make_vectors.build_receipts(ENVELOPE_VECTOR)) == RAW


@pytest.mark.parametrize("part", ["batch", "single"])
def test_each_v2_vector_is_rebuilt_from_its_inputs_and_verifies(part: str) -> None:
    given, out = INPUTS[part], OUTPUTS[part]
    receipts = make_receipts(given["bulletins"], NodeId(given["node"]), given["status"], given["at"], SIGNER)
    assert [r.model_dump(mode="json") for r in receipts] == [r["signed"] for r in out["receipts"]]
    for receipt, recorded in zip(receipts, out["receipts"], strict=True):
        assert canonical_json(receipt.model_dump(mode="json")).decode() == recorded["jcs"]
        assert signing_input(BATCH_DOMAIN, statement(receipt)).decode() == out["statement_signing_input"]
        verify_receipt(parse_receipt(strict_loads(recorded["jcs"])), FED)
    assert signatures_needed(receipts) == 1


def test_the_v1_vector_still_verifies_and_matches_the_envelope_file() -> None:
    signed = OUTPUTS["v1"]["signed"]
    assert signed == ENVELOPE_VECTOR["outputs"]["receipt"]["signed"]
    again = make_receipt(signed["bulletin"], NodeId(signed["node"]), signed["status"], signed["at"], SIGNER)
    assert again.model_dump(mode="json") == signed
    verify_receipt(parse_receipt(signed), FED)


@pytest.mark.parametrize("part", ["batch", "single"])
def test_the_vectors_check_out_with_code_written_from_the_text_alone(part: str) -> None:
    """Section 10 by hand: hashlib for the tree, pyca's Ed25519 for the signature."""
    out = OUTPUTS[part]
    leaves = [hashlib.sha256(b"\x00" + bytes.fromhex(b)).digest() for b in out["bulletins"]]
    assert [b64e(h) for h in leaves] == out["leaf_hashes"]

    def node(left: bytes, right: bytes) -> bytes:
        return hashlib.sha256(b"\x01" + left + right).digest()

    root = leaves[0] if len(leaves) == 1 else node(node(leaves[0], leaves[1]), leaves[2])
    assert b64e(root) == out["root"] == out["statement"]["root"]
    statement_ = {"v": 2, "node": "ke-customs", "status": INPUTS[part]["status"], "at": INPUTS[part]["at"]}
    statement_ |= {"signer": INPUTS["signer"]["kid"], "size": len(leaves), "root": b64e(root)}
    assert out["statement"] == statement_
    message = b"exchange-v1/receipt-batch\n" + canonical_json(statement_)
    assert message.decode() == out["statement_signing_input"]
    Ed25519PublicKey.from_public_bytes(b64d(INPUTS["signer"]["public_key"])).verify(b64d(out["signature"]), message)
    for index, recorded in enumerate(out["receipts"]):
        receipt = recorded["signed"]
        assert receipt["index"] == index and receipt["size"] == len(leaves) and receipt["root"] == out["root"]
        assert receipt["signature"] == out["signature"]
        # Walk the proof up as RFC 9162 section 2.1.3.2 does.
        fn, sn, r = index, len(leaves) - 1, leaves[index]
        for p in map(b64d, receipt["proof"]):
            if fn & 1 or fn == sn:
                r = node(p, r)
                while not fn & 1 and fn != 0:
                    fn, sn = fn >> 1, sn >> 1
            else:
                r = node(r, p)
            fn, sn = fn >> 1, sn >> 1
        assert sn == 0 and r == root


@pytest.mark.parametrize("case", OUTPUTS["negatives"], ids=lambda c: c["name"])
def test_negative_receipt_vectors_fail_with_the_recorded_error(case: dict[str, Any]) -> None:
    with pytest.raises(ExchangeError) as caught:
        verify_receipt(parse_receipt(case["receipt"]), FED)
    assert type(caught.value) is getattr(errors, case["error"])


# -- one receipt on its own ---------------------------------------------------------------------


def test_one_bulletins_receipt_is_proven_from_the_batch_without_the_others() -> None:
    """An auditor holding one receipt and the roster proves it; it never sees the other ids."""
    receipts = batch(7)
    alone = canonical_json(receipts[4].model_dump(mode="json"))
    for other in ids(7):
        if other != receipts[4].bulletin:
            assert other.encode() not in alone
    verify_receipt(parse_receipt(strict_loads(alone)), FED)
    assert receipts[4].bulletin == ids(7)[4] and receipts[4].index == 4 and receipts[4].size == 7


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33])
def test_every_receipt_of_a_batch_carries_the_rfc9162_proof_of_its_leaf(size: int) -> None:
    receipts = batch(size)
    leaves = [leaf_hash(bytes.fromhex(b)) for b in ids(size)]
    assert {r.root for r in receipts} == {b64e(root_from_leaf_hashes(leaves))}
    assert {r.signature for r in receipts} == {receipts[0].signature}
    for i, r in enumerate(receipts):
        assert (r.v, r.index, r.size) == (2, i, size)
        assert [b64d(p) for p in r.proof or []] == inclusion_proof(leaves, i)
    verify_receipts(receipts, FED)
    assert (receipts[0].proof == []) == (size == 1)


def test_the_levels_give_rfc9162_proofs_for_every_size_and_index() -> None:
    for n in range(1, 70):
        leaves = [hashlib.sha256(bytes([n, i])).digest() for i in range(n)]
        levels = tree_levels(leaves)
        assert levels[-1] == [root_from_leaf_hashes(leaves)]
        for i in range(n):
            assert inclusion_path(levels, i) == inclusion_proof(leaves, i), (n, i)


# -- tampering with a batch ---------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_flipping_any_bit_of_a_batch_receipt_is_refused(mask: int) -> None:
    for receipt in batch(3):
        wire = canonical_json(receipt.model_dump(mode="json"))
        accepted = []
        for i in range(len(wire)):
            mutated = bytearray(wire)
            mutated[i] ^= mask
            try:
                verify_receipt(parse_receipt(strict_loads(bytes(mutated))), FED)
            except ExchangeError:
                continue
            accepted.append(i)
        assert accepted == [], wire


def test_one_receipts_proof_given_to_another_bulletin_is_refused() -> None:
    first, second, *_ = batch(5)
    stolen = Receipt.model_validate({**second.model_dump(mode="json"), "index": first.index, "proof": first.proof})
    with pytest.raises(errors.ProofError):
        verify_receipt(stolen, FED)


def test_a_batch_signature_is_checked_once_per_statement_but_binds_every_member() -> None:
    """Receipts are grouped by their whole statement and signature, never by the signature alone."""
    early, late = batch(4, label="early"), batch(3, at="2025-03-14T09:30:00.000Z", label="late")
    assert signatures_needed([*early, *late]) == 2
    verify_receipts([*early, *late], FED)
    # The late batch's receipt, given the early batch's signature: same signature, other statement.
    forged = Receipt.model_validate({**late[0].model_dump(mode="json"), "signature": early[0].signature})
    assert signatures_needed([*early, forged]) == 2
    with pytest.raises(errors.BadSignature):
        verify_receipts([*early, forged], FED)


def test_v1_and_v2_receipts_verify_together() -> None:
    v1 = make_receipt(ids(1, "v1")[0], NodeId("ke-customs"), "opened", AT, SIGNER)
    receipts = [v1, *batch(3)]
    assert signatures_needed(receipts) == 2
    verify_receipts(receipts, FED)


@pytest.mark.parametrize(
    "bids",
    [[], ids(2) + ids(1), ["AB" * 32], ["ab" * 31], [" " + "ab" * 32]],
    ids=["empty", "repeated", "upper-case", "short", "space"],
)
def test_a_batch_names_one_to_many_distinct_lowercase_ids(bids: list[str]) -> None:
    with pytest.raises(InvalidInput):
        make_receipts(bids, NodeId("ke-customs"), "received", AT, SIGNER)


def test_a_batch_is_not_signed_with_a_timestamp_off_the_clock() -> None:
    with pytest.raises(InvalidInput, match="schema: at"):
        make_receipts(ids(2), NodeId("ke-customs"), "received", "2025-02-30T00:00:00Z", SIGNER)


# -- the version is a JSON integer ---------------------------------------------------------------


@pytest.mark.parametrize("version", [True, 1.0, 2.0], ids=["true", "1.0", "2.0"])
def test_a_receipts_version_that_is_not_a_json_integer_is_refused(version: Any) -> None:
    """2.5: no coercion. pydantic's Literal[1, 2] takes `true` and `1.0` for 1 and `2.0` for 2 even
    in strict mode, and `true` passes `strict_loads`: such a receipt was checked, and stored, as
    the integer's (a sender parses its partner's answer with `json.loads`, which gives floats)."""
    v1 = make_receipt(ids(1)[0], NodeId("ke-customs"), "opened", AT, SIGNER).model_dump(mode="json")
    v2 = batch(1)[0].model_dump(mode="json")
    for good in (v1, v2):
        verify_receipt(parse_receipt(good), FED)  # the integer: taken
    raw = {**(v2 if version == 2 else v1), "v": version}
    with pytest.raises(InvalidInput, match="schema: v"):
        parse_receipt(raw)
    with pytest.raises(InvalidInput, match="schema: v"):
        parse_receipt(strict_loads(canonical_json(v1).decode().replace('"v":1', '"v":true')))
