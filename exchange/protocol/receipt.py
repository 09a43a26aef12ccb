"""Signed receipts: a receiving node's proof that it received, or a user opened, a bulletin.

A v1 receipt costs its node one signature. A v2 receipt is one leaf of a batch: the node signs
once a statement holding the RFC 9162 Merkle root of the batch's bulletin ids, and each receipt
carries its inclusion proof, so it stays provable alone (docs/protocol.md, section 10).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import ValidationError

from exchange.crypto import SigningKey, b64d, b64e, canonical_json
from exchange.errors import ExchangeError, InvalidEnvelope, InvalidInput, ProofError, UnknownPeer
from exchange.merkle import HASH_SIZE, leaf_hash, node_hash, root_from_inclusion
from exchange.model import MAX_RECEIPT_BATCH, NodeId, Receipt, first_error
from exchange.protocol.roster import Federation
from exchange.protocol.signing import sign, verify

DOMAIN = "receipt"  # v1: the receipt without its signature
BATCH_DOMAIN = "receipt-batch"  # v2: the batch statement
STATEMENT_MEMBERS = ("v", "node", "status", "at", "signer", "size", "root")
ReceiptStatus = Literal["received", "opened"]
H = TypeVar("H", bytes, str)
BULLETIN_ID = re.compile(r"[0-9a-f]{64}")


def parse_receipt(raw: Any) -> Receipt:
    """A receipt from its JSON value (v1 or v2); a schema violation is InvalidInput."""
    try:
        return raw if isinstance(raw, Receipt) else Receipt.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"receipt does not match the schema: {first_error(exc)}") from exc


def receipt_json(receipt: Receipt) -> str:
    """`canonical_json(receipt.model_dump(mode="json"))` as text, written directly for a v2
    receipt, as an author stores one per reader per bulletin: its members sorted, and every
    string of it one that JSON writes as it is (the schema's patterns allow no character that is
    escaped). tests/protocol/test_receipt_json.py holds it to canonical_json."""
    if receipt.v != 2:
        return canonical_json(receipt.model_dump(mode="json")).decode()
    return v2_json(statement(receipt), receipt.signature, receipt.bulletin, receipt.index, receipt.proof or [])


def v2_json(st: dict[str, Any], signature: str, bulletin: str, index: Any, proof: list[str]) -> str:
    """A v2 receipt's canonical JSON from its statement, signature and leaf members, all of them
    checked against the schema (whose strings JSON writes as they are)."""
    path = ",".join(f'"{p}"' for p in proof)
    return (
        f'{{"at":"{st["at"]}","bulletin":"{bulletin}","index":{index},'
        f'"node":"{st["node"]}","proof":[{path}],"root":"{st["root"]}",'
        f'"signature":"{signature}","signer":"{st["signer"]}","size":{st["size"]},'
        f'"status":"{st["status"]}","v":2}}'
    )


@dataclass(frozen=True, slots=True)
class HeldBatch:
    """A partner's checked batch statement, kept once for its receipts (docs/protocol.md 10.4):
    the statement's JCS, its signature, and its bulletin ids in leaf order."""

    node: str
    statement: str
    signature: str
    bulletins: tuple[str, ...]

    def __hash__(self) -> int:
        # Every receipt of a batch names it, and the author's job keys its new batches by it: the
        # generated hash would hash the tuple of up to 1,024 ids each time. Equal batches have
        # equal signatures, so this is a hash of the whole as equality needs.
        return hash((self.node, self.signature))


@dataclass(slots=True)  # not frozen: one is made per reader per bulletin, and frozen took 4 times as long
class StoredReceipt:
    """A checked receipt as its holder stores it: the members its row shows, and its canonical
    text, the signed claim behind them (docs/protocol.md 10.3); or, for a leaf of a batch taken
    in the batch form, no text but the batch and the leaf's index, from which the text is made
    when it is shown (the same bytes)."""

    bulletin: str
    node: str
    status: str
    at: str
    text: str
    batch: HeldBatch | None = None
    index: int | None = None


def stored(receipt: Receipt) -> StoredReceipt:
    return StoredReceipt(receipt.bulletin, receipt.node, receipt.status, receipt.at, receipt_json(receipt))


def make_receipt(bid: str, node: NodeId, status: ReceiptStatus, at: str, key: SigningKey) -> Receipt:
    """A v1 receipt: one signature for one bulletin."""
    body = {"v": 1, "bulletin": bid, "node": node, "status": status, "at": at, "signer": key.kid}
    try:
        return Receipt.model_validate({**body, "signature": sign(DOMAIN, body, key)})
    except ValidationError as exc:
        raise InvalidInput(f"receipt does not match the schema: {first_error(exc)}") from exc


def make_receipts(bids: Sequence[str], node: NodeId, status: ReceiptStatus, at: str, key: SigningKey) -> list[Receipt]:
    """v2 receipts of `bids`, in their order, under one signed batch statement."""
    if not 1 <= len(bids) <= MAX_RECEIPT_BATCH:
        raise InvalidInput(f"a receipt batch holds 1 to {MAX_RECEIPT_BATCH} bulletins, not {len(bids)}")
    if len(set(bids)) != len(bids) or not all(BULLETIN_ID.fullmatch(b) for b in bids):
        raise InvalidInput("a receipt batch names distinct bulletin ids")
    levels = tree_levels([leaf_hash(bytes.fromhex(b)) for b in bids])
    statement = {
        "v": 2,
        "node": node,
        "status": status,
        "at": at,
        "signer": key.kid,
        "size": len(bids),
        "root": b64e(levels[-1][0]),
    }
    signature = sign(BATCH_DOMAIN, statement, key)
    first = {**statement, "bulletin": bids[0], "index": 0, "proof": _proof(levels, 0), "signature": signature}
    try:
        checked = Receipt.model_validate(first)  # the statement's members, checked once for the batch
    except ValidationError as exc:
        raise InvalidInput(f"receipt does not match the schema: {first_error(exc)}") from exc
    # Every other member was made here from checked ids: validating each receipt again would cost
    # as much as the signatures the batch saves.
    return [checked] + [
        checked.model_copy(update={"bulletin": bid, "index": i, "proof": _proof(levels, i)})
        for i, bid in enumerate(bids[1:], 1)
    ]


def tree_levels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """Every level of the RFC 9162 tree over `leaves`, leaves first, root last.

    Pairing adjacent nodes and promoting a lone last node unchanged yields exactly the RFC 9162
    tree (exchange.merkle.root_from_leaf_hashes), so all n proofs cost O(n log n), not O(n^2).
    """
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        level = levels[-1]
        up = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            up.append(level[-1])
        levels.append(up)
    return levels


def inclusion_path(levels: Sequence[Sequence[H]], index: int) -> list[H]:
    """The RFC 9162 inclusion proof of leaf `index`, leaf to root, read off `tree_levels` (or
    off its levels encoded)."""
    path = []
    for level in levels[:-1]:
        if index ^ 1 < len(level):  # a lone last node has no sibling: it is promoted as it is
            path.append(level[index ^ 1])
        index >>= 1
    return path


def _proof(levels: Sequence[Sequence[bytes]], index: int) -> list[str]:
    return [b64e(h) for h in inclusion_path(levels, index)]


def statement(receipt: Receipt) -> dict[str, Any]:
    """The batch statement a v2 receipt's signature covers."""
    return {name: getattr(receipt, name) for name in STATEMENT_MEMBERS}


def statement_key(receipt: Receipt) -> tuple[Any, ...]:
    """Equal for receipts under one signed statement (a v1 receipt is a statement of its own)."""
    if receipt.v == 1:
        return (receipt.bulletin, receipt.node, receipt.status, receipt.at, receipt.signer, receipt.signature)
    return (*(getattr(receipt, name) for name in STATEMENT_MEMBERS), receipt.signature)


class _Hashes(dict[str, bytes]):
    """Root and proof hashes decoded once: a batch's receipts share their root and upper paths."""

    def __missing__(self, text: str) -> bytes:
        try:
            raw = b64d(text)
        except InvalidInput as exc:
            raise ProofError(f"receipt hash: {exc.detail}") from exc
        if len(raw) != HASH_SIZE:
            raise ProofError("a receipt's root and proof hashes are 32 bytes")
        self[text] = raw
        return raw


def _check_unsigned(receipt: Receipt, fed: Federation, hashes: _Hashes, stored: bool = False) -> None:
    """Every check of one receipt but its signature (steps 1 to 3 of section 10.3)."""
    try:
        current = fed.node(receipt.node).signing_kid == receipt.signer  # no key parsed per receipt
    except UnknownPeer:
        # A suspended or revoked node's keys, but compromised ones, still check what this node
        # took in from it before (6a.7): its receipts held here are still shown.
        if not stored or fed.signing_key_of(receipt.node, receipt.signer, stored=True) is None:
            raise
        current = True  # its verify-only key, found just above
    if not current and fed.former_signing_key(receipt.node, receipt.signer, stored=stored) is None:
        raise InvalidEnvelope("receipt is not signed with the node's roster key")
    if receipt.v == 1:
        return
    if receipt.index is None or receipt.size is None or receipt.root is None or receipt.proof is None:
        raise InvalidInput("a v2 receipt needs its batch members")  # the schema makes sure of it
    root = hashes[receipt.root]
    path = [hashes[p] for p in receipt.proof]
    if root_from_inclusion(leaf_hash(bytes.fromhex(receipt.bulletin)), receipt.index, receipt.size, path) != root:
        raise ProofError("the receipt's inclusion proof does not lead to its root")


def verify_receipts(receipts: Sequence[Receipt], fed: Federation, *, stored: bool = False) -> None:
    """Return None if every receipt verifies (section 10.3); raise at the first that does not.

    Each receipt is checked in full, its inclusion proof included (a few hashes), then one
    signature per distinct statement: the receipts of one batch share theirs, so n receipts of
    one batch cost one Ed25519 verification. A receipt by a node's former key (6a.13) verifies
    while the key is retiring, and with `stored` (one this node took in earlier) verify-only.
    """
    pending: dict[tuple[Any, ...], Receipt] = {}
    hashes = _Hashes()
    for receipt in receipts:
        _check_unsigned(receipt, fed, hashes, stored)
        pending.setdefault(statement_key(receipt), receipt)
    for receipt in pending.values():
        if receipt.v == 1:
            domain, body = DOMAIN, receipt.model_dump(mode="json", exclude={"signature"})
        else:
            domain, body = BATCH_DOMAIN, statement(receipt)
        key = fed.signing_key_of(receipt.node, receipt.signer, stored=stored)
        if key is None:  # pragma: no cover - `_check_unsigned` refused it already
            raise InvalidEnvelope("receipt is not signed with the node's roster key")
        verify(domain, body, receipt.signature, key)


def verify_receipt(receipt: Receipt, fed: Federation, *, stored: bool = False) -> None:
    """Return None if the receipt, v1 or v2, is signed by a key of the node it names that
    `verify_receipts` accepts."""
    verify_receipts([receipt], fed, stored=stored)


def signatures_needed(receipts: Sequence[Receipt]) -> int:
    """How many Ed25519 verifications `verify_receipts` makes for these receipts."""
    return len({statement_key(r) for r in receipts})


def answered(raws: Sequence[Any], dest: str, sent: set[str]) -> dict[str, Receipt]:
    """The receipts of the answer to a transaction by bulletin, parsed, with the sender's checks
    (10.3): each from `dest`, `received`, for a bulletin in `sent`, and exactly one for each. Their
    proofs and signatures are `verify_receipts`'s to check."""
    got: dict[str, Receipt] = {}
    for raw in raws:
        receipt = parse_receipt(raw)
        if receipt.node != dest or receipt.status != "received" or receipt.bulletin not in sent:
            raise InvalidEnvelope("a receipt does not match what was sent")
        if receipt.bulletin in got:
            raise InvalidEnvelope("the peer returned two receipts for one envelope")
        got[receipt.bulletin] = receipt
    if got.keys() != sent:
        raise InvalidEnvelope("the peer did not return a receipt for every envelope")
    return got


_V2_MEMBERS = frozenset((*STATEMENT_MEMBERS, "bulletin", "index", "proof", "signature"))


def whole_batches(raws: Sequence[Any], dest: str, sent: set[str], fed: Federation) -> dict[str, StoredReceipt] | None:
    """What `answered` and then `verify_receipts` make of an answer's receipts, as `stored`, checked a whole
    batch at a time; or None where this way does not apply, and each is to be checked alone.

    It applies when the answer is whole v2 batches from `dest`, `received`, one receipt for each
    bulletin in `sent` and for no other: the usual answer to a push. The tree of each batch is
    built once from its bulletins in index order, its nodes encoded once, and each receipt's
    proof compared with its path as text; then one signature per batch. A proof that leads to
    the root is that path (or SHA-256 collides), and text equal to the canonical encoding is
    canonical base64url: so this accepts what the receipt-by-receipt check accepts
    (tests/protocol/test_whole_batches.py compares them). Anything else (a mismatch, a malformed
    member, a failed check) gives None, for the full check to refuse with its own error.
    """
    batches: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for raw in raws:
        if type(raw) is not dict or raw.keys() != _V2_MEMBERS or not _plain(raw):
            return None
        key = (*(raw[name] for name in STATEMENT_MEMBERS), raw["signature"])
        try:
            batches.setdefault(key, []).append(raw)
        except TypeError:  # a member that is a list or an object
            return None
    got: dict[str, StoredReceipt] = {}
    for members in batches.values():
        made = _whole_batch(members, dest, sent, fed)
        if made is None:
            return None
        got.update((r.bulletin, r) for r in made)
    return got if len(got) == len(raws) and got.keys() == sent else None


def _plain(raw: dict[str, Any]) -> bool:
    """The members of the JSON types a v2 receipt has where a batch's statement does not settle
    it: a bool or a float compares equal to an int, and a string to no other type, so the
    statement's strings are checked once, on the batch's first receipt."""
    return (
        type(raw["v"]) is int
        and type(raw["size"]) is int
        and type(raw["index"]) is int
        and type(raw["proof"]) is list
        and type(raw["bulletin"]) is str
    )


def _whole_batch(
    members: list[dict[str, Any]], dest: str, sent: set[str], fed: Federation
) -> list[StoredReceipt] | None:
    """One batch's receipts, every leaf present, checked as `whole_batches` says; else None."""
    first = members[0]
    size = first["size"]
    if first["v"] != 2 or first["node"] != dest or first["status"] != "received" or len(members) != size:
        return None
    leaves: list[str | None] = [None] * size
    for raw in members:
        index, bulletin = raw["index"], raw["bulletin"]
        if not 0 <= index < size or leaves[index] is not None or bulletin not in sent:
            return None
        leaves[index] = bulletin
    levels = tree_levels([leaf_hash(bytes.fromhex(str(b))) for b in leaves])
    encoded = [[b64e(h) for h in level] for level in levels]
    if encoded[-1][0] != first["root"] or any(raw["proof"] != inclusion_path(encoded, raw["index"]) for raw in members):
        return None
    try:
        checked = Receipt.model_validate(first)  # the statement's members, once for the batch
        verify_receipts([checked], fed)  # its node, key, proof and the batch's one signature
    except (ValidationError, ExchangeError):
        return None
    st, signature = statement(checked), checked.signature
    node, status, at = checked.node, checked.status, checked.at
    return [
        StoredReceipt(r["bulletin"], node, status, at, v2_json(st, signature, r["bulletin"], r["index"], r["proof"]))
        for r in members
    ]
