"""A partial bundle holds only entries with inclusion proofs (docs/audit.md 6): a full export
relabelled `"complete": false` skipped every root check (found by a read-only review)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from exchange.audit.log import BundleCheck, KeyRing, LogVerifier
from exchange.crypto import b64e, strict_loads
from exchange.errors import AuditTampered
from exchange.merkle import leaf_hash
from tests.vectors import make_audit_vectors as gen
from tests.vectors.make_vectors import recorded_federation

OUTPUTS: dict[str, Any] = strict_loads(gen.FILE.read_text("utf-8"))["outputs"]
KEYS = KeyRing.from_federation(recorded_federation(gen.load_v1()["outputs"]))


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"))


def relabelled(lines: list[str]) -> list[str]:
    """The attacker's bundle: the vector's full export with entry 5 rewritten (and its stored leaf
    hash with it), flagged partial, keeping only the latest checkpoint and an end count of 0."""
    latest = next(json.loads(line)["note"] for line in reversed(lines) if json.loads(line)["type"] == "checkpoint")
    out = []
    for line in lines:
        record = json.loads(line)
        if record["type"] == "header":
            record["complete"] = False
        elif record["type"] == "checkpoint" and record["note"] != latest:
            continue
        elif record["type"] == "entry" and record["idx"] == 5:
            body = {**json.loads(record["entry"]), "event": "console.signed_in", "user": "mallory"}
            record["entry"] = json.dumps(body, separators=(",", ":"), sort_keys=True)
            record["leaf_hash"] = b64e(leaf_hash(record["entry"].encode()))
        elif record["type"] == "end":
            record["entries"] = 0
        out.append(_line(record))
    return out


@pytest.mark.parametrize("batch", [True, False])
def test_a_full_export_relabelled_partial_is_refused(batch: bool) -> None:
    check = BundleCheck(keys=KEYS)
    lines = [line.encode() for line in relabelled(OUTPUTS["bundle"]["lines"])]
    with pytest.raises(AuditTampered, match="entry 0 of a partial bundle is not one with an inclusion proof"):
        if batch:
            check.feed_lines(lines)
        else:
            for line in lines:
                check.feed_line(line)
        check.finish(quorum=2)


def test_a_proven_entry_carrying_a_stored_leaf_hash_is_refused_in_a_partial_bundle() -> None:
    lines = list(OUTPUTS["bulletin_bundle"]["lines"])
    at = next(i for i, line in enumerate(lines) if json.loads(line)["type"] == "entry")
    record = json.loads(lines[at])
    lines[at] = _line({**record, "leaf_hash": b64e(leaf_hash(record["entry"].encode()))})
    check = BundleCheck(keys=KEYS)
    with pytest.raises(AuditTampered, match="partial bundle"):
        check.feed_lines([line.encode() for line in lines])


def test_a_verifier_given_every_entry_cannot_finish_as_partial() -> None:
    """The verifier's own guard, for callers that drive it without a bundle."""
    verifier = LogVerifier(gen.LOG_NODE, KEYS)
    for entry in OUTPUTS["entries"]:
        verifier.entry(entry["idx"], entry["jcs"].encode())
    with pytest.raises(AuditTampered, match="without inclusion proofs"):
        verifier.finish(complete=False)
