"""What may leave the node, by TAXII or a webhook: the author's handling marks and the channel
owner's export rule (docs/stix.md, "What leaves the node"). TLP:RED never leaves; AMBER+STRICT
only where the owner allows its export (a `set-export` change); a bulletin its author marked
no-onward-sharing never leaves, whatever its TLP."""

from __future__ import annotations

from typing import Any, get_args

import sqlalchemy as sa

from exchange.model import Tlp
from exchange.protocol.channel import ChannelState
from exchange.store import no_onward

TLP_ORDER: tuple[str, ...] = get_args(Tlp)  # least to most restricted
SERVED_TLP = ("CLEAR", "GREEN", "AMBER")
OPT_IN_TLP = "AMBER+STRICT"
NO_ONWARD = b'"no_onward_sharing":true'  # in the canonical (JCS) envelope: only the header has it (and v0016)


def served_tlp(state: ChannelState) -> tuple[str, ...]:
    """The TLP levels that may leave the node from the channel in `state`, by the owner's rule."""
    return (*SERVED_TLP, OPT_IN_TLP) if state.export_amber_strict else SERVED_TLP


def onward_forbidden(envelope: bytes) -> bool:
    """Whether the author marked this stored envelope no-onward-sharing."""
    return NO_ONWARD in envelope


def onward_forbidden_sql(bulletin_id: Any) -> sa.ColumnElement[bool]:
    """`onward_forbidden` of a stored bulletin, by its id: a seek on the `no_onward` table, which
    the database keeps from each stored envelope (revision 0016). A read of many rows then reads
    none of their envelopes, megabytes each with attachments."""
    return sa.exists().where(no_onward.c.bulletin_id == bulletin_id)


__all__ = [
    "NO_ONWARD",
    "OPT_IN_TLP",
    "SERVED_TLP",
    "TLP_ORDER",
    "onward_forbidden",
    "onward_forbidden_sql",
    "served_tlp",
]
