"""Signed receipts: a receiving node's proof that it received, or a user opened, a bulletin."""

from __future__ import annotations

from typing import Literal

from pydantic import ValidationError

from exchange.crypto import SigningKey
from exchange.errors import InvalidEnvelope, InvalidInput
from exchange.model import NodeId, Receipt, first_error
from exchange.protocol.roster import Federation
from exchange.protocol.signing import sign, verify

DOMAIN = "receipt"


def make_receipt(bid: str, node: NodeId, status: Literal["received", "opened"], at: str, key: SigningKey) -> Receipt:
    body = {"v": 1, "bulletin": bid, "node": node, "status": status, "at": at, "signer": key.kid}
    try:
        return Receipt.model_validate({**body, "signature": sign(DOMAIN, body, key)})
    except ValidationError as exc:
        raise InvalidInput(f"receipt does not match the schema: {first_error(exc)}") from exc


def verify_receipt(receipt: Receipt, fed: Federation) -> None:
    """Return None if the receipt is signed by the current key of the node it names."""
    if fed.node(receipt.node).signing_kid != receipt.signer:
        raise InvalidEnvelope("receipt is not signed with the node's roster key")
    body = receipt.model_dump(mode="json", exclude={"signature"})
    verify(DOMAIN, body, receipt.signature, fed.verify_key(receipt.node))
