"""What may leave the node, by TAXII or a webhook: the author's handling marks and the channel
owner's export rule (docs/stix.md, "What leaves the node"). TLP:RED never leaves; AMBER+STRICT
only where the owner allows its export (a `set-export` change); a bulletin its author marked
no-onward-sharing never leaves, whatever its TLP."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from exchange.protocol.channel import ChannelState

SERVED_TLP = ("CLEAR", "GREEN", "AMBER")
OPT_IN_TLP = "AMBER+STRICT"
NO_ONWARD = b'"no_onward_sharing":true'  # in the canonical (JCS) envelope: only the header has it


def served_tlp(state: ChannelState) -> tuple[str, ...]:
    """The TLP levels that may leave the node from the channel in `state`, by the owner's rule."""
    return (*SERVED_TLP, OPT_IN_TLP) if state.export_amber_strict else SERVED_TLP


def onward_forbidden(envelope: bytes) -> bool:
    """Whether the author marked this stored envelope no-onward-sharing."""
    return NO_ONWARD in envelope


def onward_forbidden_sql(envelope: Any, dialect: str) -> sa.ColumnElement[bool]:
    """`onward_forbidden` of a stored envelope column (bytes), searched in the database: a read of
    many rows is then not sent their envelopes, megabytes each with attachments."""
    needle = sa.literal(NO_ONWARD, sa.LargeBinary())
    if dialect == "postgresql":  # position(bytea, bytea): where the second begins in the first, or 0
        return sa.func.pg_catalog.position(envelope, needle) > 0
    return sa.func.instr(envelope, needle) > 0


__all__ = ["NO_ONWARD", "OPT_IN_TLP", "SERVED_TLP", "onward_forbidden", "onward_forbidden_sql", "served_tlp"]
