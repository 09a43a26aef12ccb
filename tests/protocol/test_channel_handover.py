"""Channel handover (docs/protocol.md 7.5): tests/vectors/channel-handover-v1.json reproduced byte
for byte and replayed, its negatives refused with the recorded error and nothing changed, and the
rules the vectors do not show (the successor skips a revoked admin, no admin left, a v1 roster,
another key, a closed channel). Pure: no network, no database, no clock."""

from __future__ import annotations

import json
from typing import Any

import pytest

from exchange import errors
from exchange.model import ChannelEvent, NodeId
from exchange.protocol.channel import ALL_RIGHTS, apply_event, sign_event
from exchange.protocol.rosterchain import TrustedRoster
from exchange.protocol.rostermigration import admit
from exchange.protocol.rosterview import federation_view
from tests.vectors.make_handover_vectors import (
    HANDOVER,
    HANDOVER_FILE,
    HEIR,
    OTHER,
    OWNER,
    Rosters,
    build,
    event,
    replay,
    rosters,
    view,
)
from tests.vectors.make_roster_vectors import TIMES, signed
from tests.vectors.make_vectors import ENVELOPE_FILE, render, signing_key

VECTORS: dict[str, Any] = json.loads(HANDOVER_FILE.read_text("utf-8"))
RECORDED: dict[str, Any] = json.loads(ENVELOPE_FILE.read_text("utf-8"))
ROSTERS: Rosters = rosters(RECORDED)
STATES, _ = replay(RECORDED, ROSTERS)
BEFORE = STATES[6]  # the last state the revoked owner signed
AT = "2025-04-03T09:00:00.000Z"


def test_the_file_is_what_the_generator_writes() -> None:
    assert render(build()) == HANDOVER_FILE.read_text("utf-8")


def test_each_event_gives_the_recorded_state_and_the_heir_owns_the_same_log() -> None:
    assert view(STATES[4]) == VECTORS["outputs"]["state_before"]
    for logged, state in zip(VECTORS["outputs"]["channel_log"], STATES[5:], strict=True):
        assert view(state) == logged["state_after"] and logged["hash_hex"] == state.hash
    handed = STATES[7]
    assert (handed.owner, handed.pos, handed.channel) == (HEIR, BEFORE.pos + 1, BEFORE.channel)
    assert NodeId(OWNER) not in handed.members and handed.members[NodeId(HEIR)] == ALL_RIGHTS
    assert handed.policy == BEFORE.policy and handed.members[NodeId(OTHER)] == BEFORE.members[NodeId(OTHER)]
    assert handed.title == BEFORE.title and handed.default_handling == BEFORE.default_handling


def test_a_node_that_holds_only_the_revoking_version_replays_the_whole_log() -> None:
    """What the revoked owner signed before stays valid: a node that first took version 2 (a
    newcomer, a restart) checks its events with the key version 2 still lists for it."""
    fed2, held2 = ROSTERS.at(2)
    assert OWNER not in fed2.node_ids
    state = None
    for logged in [*RECORDED["outputs"]["channel_log"], *VECTORS["outputs"]["channel_log"]]:
        state = apply_event(state, ChannelEvent.model_validate(logged["signed"]), fed2, held2)
    assert state is not None and view(state) == VECTORS["outputs"]["channel_log"][-1]["state_after"]
    with pytest.raises(errors.UnknownPeer):  # without the roster v2 version, as before 7.5
        apply_event(None, ChannelEvent.model_validate(RECORDED["outputs"]["channel_log"][0]["signed"]), fed2)


@pytest.mark.parametrize("case", VECTORS["outputs"]["negatives"], ids=lambda c: c["name"])
def test_negatives_are_refused_with_the_recorded_error(case: dict[str, Any]) -> None:
    state = next(s for s in STATES if s.pos == case["state_pos"])
    before = view(state)
    fed, held = ROSTERS.at(case["roster_version"])
    error = getattr(errors, case["error"])
    with pytest.raises(error) as raised:
        apply_event(state, ChannelEvent.model_validate(case["event"]), fed, held)
    assert type(raised.value) is error and raised.value.detail == case["message"]
    assert view(state) == before


def _revoking(*nodes: str) -> tuple[Any, TrustedRoster]:
    """A version 2 that revokes `nodes` (instead of the vectors' version 2)."""
    doc2 = admit(ROSTERS.signed[0].roster, *TIMES[2], statuses=dict.fromkeys(nodes, "revoked"))
    held = ROSTERS.trusted[0].accept(signed(doc2, ["icao", "rilo-ap"]))
    return federation_view(held), held


def test_the_successor_skips_an_admin_member_revoked_too() -> None:
    fed, held = _revoking(OWNER, HEIR)
    with pytest.raises(errors.HandoverRefused, match=f"{OTHER!r} is \\(the first admin member by id\\)"):
        apply_event(BEFORE, event(BEFORE, HANDOVER, AT, HEIR), fed, held)
    after = apply_event(BEFORE, event(BEFORE, HANDOVER, AT, OTHER), fed, held)
    assert after.owner == OTHER and set(after.members) == {OTHER, HEIR}  # the new owner removes HEIR next


def test_no_admin_member_left_means_no_successor() -> None:
    fed, held = ROSTERS.at(2)
    no_admin = STATES[4]  # envelope-v1.json's log: ke-customs posts and reads, gb-avsec reads
    with pytest.raises(errors.HandoverRefused, match="no admin member left"):
        apply_event(no_admin, event(no_admin, HANDOVER, AT, HEIR), fed, held)


def test_a_v1_roster_revokes_no_one() -> None:
    fed, _ = ROSTERS.at(1)
    with pytest.raises(errors.HandoverRefused, match="needs a roster v2"):
        apply_event(BEFORE, event(BEFORE, HANDOVER, AT, HEIR), fed)


def test_a_handover_signed_with_another_key_is_refused() -> None:
    fed, held = ROSTERS.at(2)
    forged = sign_event(
        channel=BEFORE.channel,
        owner=HEIR,
        pos=BEFORE.pos + 1,
        prev=BEFORE.hash,
        at=AT,
        change=HANDOVER,
        key=signing_key(OTHER),
    )
    with pytest.raises(errors.InvalidInput, match="not signed with the owner's roster key"):
        apply_event(BEFORE, forged, fed, held)
    tampered = event(BEFORE, HANDOVER, AT, HEIR).model_dump(mode="json") | {"at": "2025-04-03T09:00:01.000Z"}
    with pytest.raises(errors.BadSignature):
        apply_event(BEFORE, ChannelEvent.model_validate(tampered), fed, held)


def test_a_closed_channel_is_not_handed_over() -> None:
    fed1, held1 = ROSTERS.at(1)
    closed = apply_event(BEFORE, event(BEFORE, {"type": "close"}, AT, OWNER), fed1, held1)
    fed, held = ROSTERS.at(2)
    with pytest.raises(errors.InvalidInput, match="closed"):
        apply_event(closed, event(closed, HANDOVER, AT, HEIR), fed, held)


def test_an_outsider_cannot_claim_the_channel() -> None:
    fed, held = ROSTERS.at(2)
    body: dict[str, Any] = {"channel": BEFORE.channel, "owner": "xx-unknown", "pos": BEFORE.pos + 1}
    body |= {"prev": BEFORE.hash, "at": AT, "change": HANDOVER, "key": signing_key("xx-unknown")}
    with pytest.raises(errors.UnknownPeer):
        apply_event(BEFORE, sign_event(**body), fed, held)
