"""What an outbox row names: a bulletin's envelope, this node's receipt of one, or a channel event,
kept in the table as one `ref` string per kind (exchange.service.outbox)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

OutKind = Literal["envelope", "receipt", "event"]


@dataclass(frozen=True)
class EnvelopeRef:
    """A bulletin's envelope, queued for a reader."""

    bulletin: str

    def encode(self) -> str:
        return self.bulletin


@dataclass(frozen=True)
class ReceiptRef:
    """This node's receipt of a bulletin ('received' or 'opened'), queued for its author."""

    bulletin: str
    status: str

    def encode(self) -> str:
        return f"{self.bulletin}:{self.status}"


@dataclass(frozen=True)
class EventRef:
    """One channel event, queued for a node the channel's log concerns."""

    channel: str
    pos: int

    def encode(self) -> str:
        return f"{self.channel}:{self.pos}"


OutRef = EnvelopeRef | ReceiptRef | EventRef


@dataclass(slots=True)  # not frozen: one is made per reader per bulletin, and frozen took 4 times as long
class OutItem:
    """One queued item for a destination, with its wire bytes."""

    n: int
    kind: OutKind
    ref: OutRef
    data: bytes

    @property
    def key(self) -> str:
        """`kind:ref`, as transaction ids are computed from."""
        return f"{self.kind}:{self.ref.encode()}"


def parse_ref(kind: str, ref: str) -> OutRef:
    """The typed reference of an outbox row (the table keeps it as one string column)."""
    if kind == "envelope":
        return EnvelopeRef(ref)
    if kind == "receipt":
        bid, status = ref.split(":", 1)
        return ReceiptRef(bid, status)
    if kind == "event":
        channel, pos = ref.rsplit(":", 1)
        return EventRef(channel, int(pos))
    raise ValueError(f"unknown outbox kind {kind!r}")


def queued_row(dest: str, kind: OutKind, ref: OutRef) -> dict[str, Any]:
    """A new outbox row."""
    return {"dest": dest, "kind": kind, "ref": ref.encode(), "state": "queued"}


__all__ = ["EnvelopeRef", "EventRef", "OutItem", "OutKind", "OutRef", "ReceiptRef", "parse_ref", "queued_row"]
