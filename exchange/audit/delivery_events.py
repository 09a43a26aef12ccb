"""The audit entries of an author's sends and of the receipts it stores, and of what a reader
left out of a catch-up: their kinds, typed models and the one reading of both forms of the
first, kept here so that `exchange.audit.events`, which re-exports them and lists them with every
other kind, stays one readable module. Pure: no I/O.

Logs written before hold one `bulletin.sent` and one `bulletin.delivered` per recipient; a node
now writes `bulletin.sent_to` and `bulletin.delivered_to`, each naming the recipients recorded
together (docs/audit.md, section 1). Readers take both through `sent_to` and `delivered_to`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Literal, TypedDict

BULLETIN_SENT: Final = "bulletin.sent"
BULLETIN_DELIVERED: Final = "bulletin.delivered"
BULLETIN_SENT_TO: Final = "bulletin.sent_to"
BULLETIN_DELIVERED_TO: Final = "bulletin.delivered_to"
CATCHUP_REFUSED: Final = "catchup.refused"


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


class CatchupRefused(TypedDict):
    """Envelopes a member served in a catch-up page that this node refused and left out; the rest
    of the page was kept and the cursor moved past them (docs/protocol.md 11.6), in the same
    transaction as this entry. One entry per page, at most four pages per pull."""

    event: Literal["catchup.refused"]
    at: str
    peer: str  # the member that served the page
    channel: str
    count: int  # envelopes refused
    bulletins: list[str]  # the ids of those that parsed, at most 16
    reasons: dict[str, int]  # error class -> how many
    sample: str  # the first refusal's detail, at most 200 characters


def catchup_refused(at: str, peer: str, channel: str, refused: Sequence[tuple[str | None, str, str]]) -> CatchupRefused:
    """The entry for a page's refused envelopes, each (bulletin id if it parsed, error class,
    detail); one envelope refused twice (in the page and again in a gap fill) counts once."""
    seen = list({(bid or f"#{i}", kind): (bid, kind, detail) for i, (bid, kind, detail) in enumerate(refused)}.values())
    reasons: dict[str, int] = {}
    for _, kind, _ in seen:
        reasons[kind] = reasons.get(kind, 0) + 1
    return {
        "event": "catchup.refused",
        "at": at,
        "peer": peer,
        "channel": channel,
        "count": len(seen),
        "bulletins": sorted({bid for bid, _, _ in seen if bid is not None})[:16],
        "reasons": reasons,
        "sample": seen[0][2][:200] if seen else "",
    }


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
