"""`receipt_json`, the stored form of a receipt written directly, against the path it stands for:
canonical JSON of the receipt's dump."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings, strategies as st

from exchange.crypto import SigningKey, canonical_json
from exchange.model import NodeId
from exchange.protocol.receipt import make_receipt, make_receipts, receipt_json

KEY = SigningKey.generate()


def ids(n: int, label: str) -> list[str]:
    return [hashlib.sha256(f"{label}/{i}".encode()).hexdigest() for i in range(n)]


@settings(max_examples=100, deadline=None)
@given(
    size=st.integers(1, 70),
    node=st.from_regex(r"[a-z0-9][a-z0-9-]{1,62}", fullmatch=True),
    at=st.sampled_from(["2026-12-01T19:30:00Z", "2026-12-01T19:30:00.1Z", "2026-12-01T19:30:00.123456Z"]),
    status=st.sampled_from(["received", "opened"]),
)
def test_receipt_json_writes_the_canonical_json_of_the_receipt(size: int, node: str, at: str, status: str) -> None:
    v2 = make_receipts(ids(size, node), NodeId(node), status, at, KEY)  # type: ignore[arg-type]
    v1 = make_receipt(ids(1, node)[0], NodeId(node), status, at, KEY)  # type: ignore[arg-type]
    for receipt in [*v2, v1]:
        assert receipt_json(receipt) == canonical_json(receipt.model_dump(mode="json")).decode()
