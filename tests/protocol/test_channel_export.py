"""The owner's set-export change (docs/protocol.md 7.1): may TLP:AMBER+STRICT leave members' nodes
as STIX? Off by default, set and withdrawn only by the owner's signed event, kept through later
changes, and refused from anyone else or in any other shape."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from exchange.errors import BadSignature, InvalidInput
from exchange.protocol.channel import ChannelState, apply_event
from exchange.protocol.roster import Federation
from tests.protocol.test_envelope_rules import fed, following, state, step  # noqa: F401  (fixtures)


def test_export_is_off_until_the_owner_allows_it(fed: Federation, state: ChannelState) -> None:  # noqa: F811
    assert state.export_amber_strict is False
    allowed = step(state, {"type": "set-export", "amber_strict": True}, fed)
    assert allowed.export_amber_strict is True and allowed.pos == state.pos + 1
    # later changes keep it; a second set-export withdraws it
    kept = step(allowed, {"type": "grant-history", "node": "gb-avsec"}, fed)
    assert kept.export_amber_strict is True
    assert step(kept, {"type": "set-export", "amber_strict": False}, fed).export_amber_strict is False


def test_export_signed_by_a_member_is_refused(fed: Federation, state: ChannelState) -> None:  # noqa: F811
    forged = following(state, {"type": "set-export", "amber_strict": True}, signer="ke-customs")
    with pytest.raises((InvalidInput, BadSignature)):
        apply_event(state, forged, fed)


@pytest.mark.parametrize(
    "change",
    [
        {"type": "set-export"},
        {"type": "set-export", "amber_strict": "yes"},
        {"type": "set-export", "amber_strict": 1},
        {"type": "set-export", "amber_strict": True, "red": True},
    ],
)
def test_export_in_another_shape_is_refused(state: ChannelState, change: dict[str, object]) -> None:  # noqa: F811
    with pytest.raises((InvalidInput, ValidationError)):
        following(state, change)
