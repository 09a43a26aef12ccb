"""tests/vectors/channel-v1.json reproduced byte for byte, replayed, and its negatives refused with
the recorded error (docs/protocol.md 7, 8.1, 8.2, 13)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from exchange import errors
from exchange.model import Bulletin, ChannelEvent
from exchange.protocol.channel import ChannelState, apply_event
from tests.vectors.make_channel_vectors import CHANNEL_FILE, build, state_view
from tests.vectors.make_vectors import ENVELOPE_FILE, recorded_federation, render

VECTORS: dict[str, Any] = json.loads(CHANNEL_FILE.read_text("utf-8"))
RECORDED: dict[str, Any] = json.loads(ENVELOPE_FILE.read_text("utf-8"))
FED = recorded_federation(RECORDED["outputs"])


def states() -> list[ChannelState]:
    out: list[ChannelState] = []
    state = None
    for logged in [*RECORDED["outputs"]["channel_log"], *VECTORS["outputs"]["channel_log"]]:
        state = apply_event(state, ChannelEvent.model_validate(logged["signed"]), FED)
        out.append(state)
    return out


def test_the_file_is_what_the_generator_writes() -> None:
    assert render(build()) == CHANNEL_FILE.read_text("utf-8")


def test_each_change_gives_the_recorded_state() -> None:
    replayed = states()
    assert state_view(replayed[4]) == VECTORS["outputs"]["state_before"]
    for logged, state in zip(VECTORS["outputs"]["channel_log"], replayed[5:], strict=True):
        assert state_view(state) == logged["state_after"]
        assert logged["hash_hex"] == state.hash
    kinds = [logged["signed"]["change"]["type"] for logged in VECTORS["outputs"]["channel_log"]]
    assert kinds == ["set-rights", "grant-history", "set-export", "remove", "close"]


@pytest.mark.parametrize("case", VECTORS["outputs"]["negatives"], ids=lambda c: c["name"])
def test_negatives_are_refused_with_the_recorded_error(case: dict[str, Any]) -> None:
    state = next(s for s in states() if s.pos == case["state_pos"])
    before = state_view(state)
    error = getattr(errors, case["error"])
    with pytest.raises((error, ValidationError)) as raised:
        apply_event(state, ChannelEvent.model_validate(case["event"]), FED)
    if isinstance(raised.value, errors.ExchangeError):
        assert type(raised.value) is error and raised.value.detail == case["message"]
    else:
        assert case["error"] == "InvalidInput"  # the schema: a receiver refuses it as InvalidInput
    assert state_view(state) == before  # nothing changed


@pytest.mark.parametrize("case", VECTORS["outputs"]["payloads"], ids=lambda c: c["bulletin"]["kind"])
def test_payloads_are_canonical(case: dict[str, Any]) -> None:
    bulletin = Bulletin.model_validate(case["bulletin"])
    assert bulletin.payload_bytes.decode("utf-8") == case["payload"]
