"""The batch form of a push's answer (docs/protocol.md, 10.4): a whole v2 batch as its signed
statement, its signature and its bulletin ids, instead of one full receipt per bulletin.

Every receipt of a batch repeats the statement and the signature and carries its own proof, so
an answer to a push of 50 bulletins is about 50 times the statement; the author parsed each,
compared each proof and built the tree anyway. In the batch form the author builds the tree from
the ids, compares its root with the statement's, checks the one signature, and makes each
receipt itself (`v2_json`): the same receipts, byte for byte, as the full form gives, provable
alone as before. A receiver answers in this form only to a sender that asks for it (the request
header RECEIPT_FORM_HEADER), so nodes that do not know it keep getting full receipts.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from exchange.crypto import b64e, canonical_json, strict_loads
from exchange.errors import InvalidEnvelope, InvalidInput, ProofError
from exchange.merkle import leaf_hash
from exchange.model import MAX_RECEIPT_BATCH, Receipt, first_error
from exchange.protocol.receipt import (
    BULLETIN_ID,
    STATEMENT_MEMBERS,
    HeldBatch,
    StoredReceipt,
    inclusion_path,
    statement,
    statement_key,
    tree_levels,
    v2_json,
    verify_receipts,
)
from exchange.protocol.roster import Federation

RECEIPT_FORM_HEADER = "Exchange-Receipt-Form"  # a push's request header; its one value: "batches"
BATCHES = "batches"
BATCH_MEMBERS = frozenset(("statement", "signature", "bulletins"))
_STATEMENT = frozenset(STATEMENT_MEMBERS)
DISTINCT_IDS = "a batch names distinct bulletin ids"
CACHED_TREE = 1024  # trees of batches up to this many bulletins are kept (`_levels`): 32 at most, about 8 MiB


def batch_form(receipts: Sequence[Receipt]) -> tuple[list[Receipt], list[dict[str, Any]]]:
    """An answer's receipts as the receipts to send in full and the whole batches in the batch
    form: a v2 batch every leaf of which is in `receipts` goes as one object; the rest (v1, and
    the leaves of a batch not all here: receipts given before, re-sent for a retried push) in full."""
    groups: dict[tuple[Any, ...], list[Receipt]] = {}
    for receipt in receipts:
        if receipt.v == 2:
            groups.setdefault(statement_key(receipt), []).append(receipt)
    whole: dict[tuple[Any, ...], list[Receipt]] = {}
    for key, members in groups.items():
        if sorted(r.index for r in members if r.index is not None) == list(range(members[0].size or 0)):
            whole[key] = sorted(members, key=lambda r: r.index or 0)
    full = [r for r in receipts if r.v != 2 or statement_key(r) not in whole]
    batches = [
        {
            "statement": statement(members[0]),
            "signature": members[0].signature,
            "bulletins": [r.bulletin for r in members],
        }
        for members in whole.values()
    ]
    return full, batches


def checked_batches(raws: Any, dest: str, sent: set[str], fed: Federation) -> dict[str, StoredReceipt]:
    """The receipts that batches in the batch form give, by bulletin, each checked as section 10.3
    checks a receipt and as a sender checks the answer to its transaction: from `dest`,
    `received`, for bulletins in `sent`, none twice. Raise at the first that fails, as the full
    check does: InvalidInput for the form, InvalidEnvelope for what does not match what was
    sent or the roster, ProofError for a root its bulletins do not make, BadSignature."""
    if type(raws) is not list:
        raise InvalidInput("batches must be a list")
    got: dict[str, StoredReceipt] = {}
    for raw in raws:
        for made in _batch(raw, dest, sent, fed):
            if made.bulletin in got:
                raise InvalidEnvelope("the peer returned two receipts for one envelope")
            got[made.bulletin] = made
    return got


def _batch(raw: Any, dest: str, sent: set[str], fed: Federation) -> list[StoredReceipt]:
    """One batch's receipts, checked in the order of docs/protocol.md 10.4."""
    if type(raw) is not dict or raw.keys() != BATCH_MEMBERS:
        raise InvalidInput('a batch is {"statement": {...}, "signature": ..., "bulletins": [...]}')
    st, signature, bids = raw["statement"], raw["signature"], raw["bulletins"]
    if type(st) is not dict or st.keys() != _STATEMENT:
        raise InvalidInput(f"a batch statement has exactly the members {', '.join(STATEMENT_MEMBERS)}")
    if type(bids) is not list or not 1 <= len(bids) <= MAX_RECEIPT_BATCH:
        raise InvalidInput(f"a batch names 1 to {MAX_RECEIPT_BATCH} bulletins")
    if not all(type(b) is str for b in bids):
        raise InvalidInput(DISTINCT_IDS)
    levels = _levels(tuple(bids))  # the ids checked with it
    try:  # the statement's members, as the receipt of the first bulletin carries them
        first = Receipt.model_validate(
            {**st, "bulletin": bids[0], "index": 0, "proof": _path(levels, 0), "signature": signature}
        )
    except ValidationError as exc:
        raise InvalidInput(f"receipt does not match the schema: {first_error(exc)}") from exc
    if first.v != 2 or first.node != dest or first.status != "received" or not set(bids) <= sent:
        raise InvalidEnvelope("a receipt does not match what was sent")
    if first.size != len(bids):
        raise ProofError("a batch's size is not the number of its bulletins")
    if first.root != b64e(levels[-1][0]):
        raise ProofError("a batch's bulletins do not make its root")
    verify_receipts([first], fed)  # the node and its key (steps 1 and 2 of 10.3), the one signature
    held = HeldBatch(first.node, canonical_json(statement(first)).decode(), first.signature, tuple(bids))
    return [StoredReceipt(bid, first.node, first.status, first.at, "", held, i) for i, bid in enumerate(bids)]


def _levels(bids: tuple[str, ...]) -> list[list[bytes]]:
    """The tree over these strings, once they are checked to be distinct bulletin ids (else
    InvalidInput), not to be changed by the caller. Its leaves are the ids alone, so every reader
    of a push answers with the same ids and tree: they are checked and built once per push, not
    once per reader (at 200 readers, 199 times), for the pushes of about a batch's size."""
    return _tree(bids) if len(bids) <= CACHED_TREE else _checked_tree(bids)


@functools.lru_cache(maxsize=32)
def _tree(bids: tuple[str, ...]) -> list[list[bytes]]:
    return _checked_tree(bids)  # a refusal is raised, not kept


def _checked_tree(bids: tuple[str, ...]) -> list[list[bytes]]:
    if not all(BULLETIN_ID.fullmatch(b) for b in bids) or len(set(bids)) != len(bids):
        raise InvalidInput(DISTINCT_IDS)
    return tree_levels([leaf_hash(bytes.fromhex(b)) for b in bids])


def _path(levels: list[list[bytes]], index: int) -> list[str]:
    return [b64e(h) for h in inclusion_path(levels, index)]


def texts_of_batches(
    batches: Mapping[int, tuple[str, str, str]], leaves: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], str]:
    """The receipt texts of these leaves (batch id, index) of stored batches (id: the statement's
    JCS, the signature, the bulletin ids joined by ","), each the JCS the full form carries. A
    leaf whose batch is missing or not well formed, or whose index is outside it, is left out:
    its row was written by hand, and is shown as a receipt that does not verify would be."""
    wanted: dict[int, set[int]] = {}
    for batch, index in leaves:
        wanted.setdefault(batch, set()).add(index)
    out: dict[tuple[int, int], str] = {}
    for batch, indices in wanted.items():
        if batch not in batches:
            continue
        text, signature, joined = batches[batch]
        try:
            st = strict_loads(text)
            bids = joined.split(",")
            if type(st) is not dict or st.keys() != _STATEMENT or not all(BULLETIN_ID.fullmatch(b) for b in bids):
                continue
            levels = tree_levels([leaf_hash(bytes.fromhex(b)) for b in bids])
        except (ValueError, InvalidInput):
            continue
        for i in indices:
            if 0 <= i < len(bids):
                out[batch, i] = v2_json(st, signature, bids[i], i, _path(levels, i))
    return out


def receipt_text(receipt: StoredReceipt) -> str:
    """A stored receipt's text, made from its batch if it has one."""
    if receipt.batch is None or receipt.index is None:
        return receipt.text
    held = receipt.batch
    made = texts_of_batches({0: (held.statement, held.signature, ",".join(held.bulletins))}, [(0, receipt.index)])
    return made[0, receipt.index]


__all__ = [
    "BATCHES",
    "BATCH_MEMBERS",
    "RECEIPT_FORM_HEADER",
    "batch_form",
    "checked_batches",
    "receipt_text",
    "texts_of_batches",
]
