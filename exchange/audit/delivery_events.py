"""The audit entries of an author's sends and of the receipts it stores: their kinds, typed
models and the one reading of both forms, kept here so that `exchange.audit.events`, which
re-exports them and lists them with every other kind, stays one readable module. Pure: no I/O.

Logs written before hold one `bulletin.sent` and one `bulletin.delivered` per recipient; a node
now writes `bulletin.sent_to` and `bulletin.delivered_to`, each naming the recipients recorded
together (docs/audit.md, section 1). Readers take both through `sent_to` and `delivered_to`.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypedDict

BULLETIN_SENT: Final = "bulletin.sent"
BULLETIN_DELIVERED: Final = "bulletin.delivered"
BULLETIN_SENT_TO: Final = "bulletin.sent_to"
BULLETIN_DELIVERED_TO: Final = "bulletin.delivered_to"


class BulletinSent(TypedDict):
    """The author's first attempt to send a bulletin to one recipient (retries are not logged)."""

    event: Literal["bulletin.sent"]
    at: str
    bulletin: str
    to: str
    txn: str


class BulletinDelivered(TypedDict):
    """The author stored a recipient's signed "received" receipt."""

    event: Literal["bulletin.delivered"]
    at: str
    bulletin: str
    to: str
    receipt_at: str


class BulletinSentTo(TypedDict):
    """The author's first attempt to send a bulletin to each of several recipients, recorded in
    one entry: `to` maps each recipient to the transaction id of its request. Written in place of
    one `bulletin.sent` per recipient (which stays valid in stored logs)."""

    event: Literal["bulletin.sent_to"]
    at: str
    bulletin: str
    to: dict[str, str]


class BulletinDeliveredTo(TypedDict):
    """The author stored several recipients' signed "received" receipts of a bulletin, recorded in
    one entry: `to` maps each recipient to its receipt's `at`. Written in place of one
    `bulletin.delivered` per recipient (which stays valid in stored logs)."""

    event: Literal["bulletin.delivered_to"]
    at: str
    bulletin: str
    to: dict[str, str]


def sent_to(entry: dict[str, Any]) -> dict[str, str]:
    """`{recipient: txn}` of a `bulletin.sent` or `bulletin.sent_to` entry; empty for any other."""
    return _recipients(entry, BULLETIN_SENT, BULLETIN_SENT_TO, "txn")


def delivered_to(entry: dict[str, Any]) -> dict[str, str]:
    """`{recipient: receipt_at}` of a `bulletin.delivered` or `bulletin.delivered_to` entry; empty for any other."""
    return _recipients(entry, BULLETIN_DELIVERED, BULLETIN_DELIVERED_TO, "receipt_at")


def _recipients(entry: dict[str, Any], one: str, many: str, field: str) -> dict[str, str]:
    kind, to = entry.get("event"), entry.get("to")
    if kind == one and isinstance(to, str):
        return {to: str(entry.get(field))}
    if kind == many and isinstance(to, dict):
        return {str(node): str(value) for node, value in to.items()}
    return {}
