"""`receipt_json`, the stored form of a receipt written directly, against the path it stands for:
canonical JSON of the receipt's dump."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings, strategies as st

from exchange.crypto import SigningKey, canonical_json
from exchange.model import NodeId
from exchange.protocol.receipt import make_receipt, make_receipts, parse_receipt, receipt_json

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


B64 = st.from_regex(r"[A-Za-z0-9_-]{0,60}", fullmatch=True)


@st.composite
def wire_receipts(draw: st.DrawFn) -> dict[str, object]:
    """Any v2 receipt the schema takes from the wire, signature or proof valid or not."""
    size = draw(st.integers(1, 1 << 16))
    return {
        "v": 2,
        "bulletin": draw(st.from_regex(r"[0-9a-f]{64}", fullmatch=True)),
        "node": draw(st.from_regex(r"[a-z0-9][a-z0-9-]{1,62}", fullmatch=True)),
        "status": draw(st.sampled_from(["received", "opened"])),
        "at": "2026-12-01T19:30:00" + draw(st.sampled_from(["", ".5", ".123456"])) + "Z",
        "signer": draw(st.from_regex(r"[0-9a-f]{16}", fullmatch=True)),
        "size": size,
        "root": draw(B64),
        "index": draw(st.integers(0, size - 1)),
        "proof": draw(st.lists(B64, max_size=16)),
        "signature": draw(B64),
    }


@settings(max_examples=300, deadline=None)
@given(raw=wire_receipts())
def test_receipt_json_writes_the_canonical_json_of_any_receipt_the_schema_takes(raw: dict[str, object]) -> None:
    receipt = parse_receipt(raw)
    assert receipt_json(receipt) == canonical_json(receipt.model_dump(mode="json")).decode()
