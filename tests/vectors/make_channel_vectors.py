"""Build tests/vectors/channel-v1.json: the channel changes envelope-v1.json does not show
(`set-rights`, `grant-history`, `set-export`, `remove`, `close`), each with the state after it,
negatives for channel events with the error a receiver must raise, and the canonical payloads of
bulletins with attachments, references, `expires: null` and a request's `due` (docs/protocol.md
7, 8.1, 8.2). Everything is deterministic: the keys are make_vectors' TEST-ONLY seeds, the roster
and the first five events are those recorded in envelope-v1.json, and Ed25519 signs
deterministically.

Run: python -m tests.vectors.make_channel_vectors [--check]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from exchange import errors
from exchange.crypto import b64e, canonical_json, sha256
from exchange.model import Bulletin, ChannelEvent
from exchange.protocol.channel import ChannelState, apply_event, event_hash, sign_acceptance, sign_event
from exchange.protocol.roster import Federation
from exchange.protocol.signing import signing_input
from tests.vectors.make_vectors import (
    CHANNEL,
    ENVELOPE_FILE,
    WARNING,
    load,
    recorded_federation,
    render,
    signing_key,
)

HERE = Path(__file__).resolve().parent
CHANNEL_FILE = HERE / "channel-v1.json"

# After the five recorded events (create; invite and accept ke-customs, then gb-avsec):
STEPS: list[dict[str, Any]] = [
    {
        "at": "2025-03-02T08:00:00.000Z",
        "change": {"type": "set-rights", "node": "gb-avsec", "rights": ["read", "post"]},
    },
    {"at": "2025-03-02T08:01:00.000Z", "change": {"type": "grant-history", "node": "gb-avsec"}},
    {"at": "2025-03-02T08:02:00.000Z", "change": {"type": "set-export", "amber_strict": True}},
    {"at": "2025-03-02T08:03:00.000Z", "change": {"type": "remove", "node": "gb-avsec"}},
    {"at": "2025-03-02T08:04:00.000Z", "change": {"type": "close"}},
]
PAYLOADS: list[dict[str, Any]] = [
    {
        "kind": "seizure-report",
        "handling": {"tlp": "GREEN", "no_onward_sharing": False},
        "title": "Seizure: counterfeit phones in toner boxes",
        "body": "X-ray image attached.",
        "indicators": {"air_waybills": ["074-12345675"], "hs_codes": ["8517.13"]},
        "references": ["1" * 64, "2" * 64],
        "expires": None,
        "attachments": [{"name": "x-ray 1.png", "media_type": "image/png", "data": b64e(bytes(range(64)))}],
    },
    {
        "kind": "request-for-information",
        "handling": {"tlp": "AMBER", "no_onward_sharing": False},
        "title": "Consignee of AWB 074-12345675?",
        "due": "2025-03-20",
    },
]


def state_view(s: ChannelState) -> dict[str, Any]:
    """What a receiver holds after an event (docs/protocol.md 7.2, 'The state after an event')."""
    return {
        "pos": s.pos,
        "hash_hex": s.hash,
        "members": {n: sorted(r) for n, r in sorted(s.members.items())},
        "invited": {n: sorted(r) for n, (r, _) in sorted(s.invited.items())},
        "history_grants": sorted(s.history_grants),
        "export_amber_strict": s.export_amber_strict,
        "closed": s.closed,
        "readers": list(s.readers),
    }


def _event(
    state: ChannelState, change: dict[str, Any], at: str, *, signer: str | None = None, **fields: Any
) -> ChannelEvent:
    base: dict[str, Any] = {**CHANNEL, "pos": state.pos + 1, "prev": state.hash, "at": at, "change": change}
    return sign_event(**{**base, **fields}, key=signing_key(signer or CHANNEL["owner"]))


def _logged(event: ChannelEvent, after: ChannelState) -> dict[str, Any]:
    body = event.model_dump(mode="json", exclude={"signature"})
    return {
        "signing_input": signing_input("channel-event", body).decode("utf-8"),
        "signed": event.model_dump(mode="json"),
        "hash_hex": event_hash(event),
        "state_after": state_view(after),
    }


def _refusal(fed: Federation, state: ChannelState, event: dict[str, Any]) -> tuple[str, str]:
    """The error class and message a receiver raises for `event` applied to `state`."""
    try:
        apply_event(state, ChannelEvent.model_validate(event), fed)
    except errors.ExchangeError as exc:
        return type(exc).__name__, exc.detail
    except ValidationError as exc:
        return "InvalidInput", f"channel event does not match the schema: {exc.errors()[0]['msg']}"
    raise AssertionError("a negative vector was accepted")


def _negatives(fed: Federation, states: list[ChannelState]) -> list[dict[str, Any]]:
    at = "2025-03-02T09:00:00.000Z"
    open_, closed = states[-2], states[-1]  # before and after `close`
    member = states[5]  # after the recorded log: ke-customs and gb-avsec are members
    cases: list[tuple[str, str, ChannelState, dict[str, Any]]] = []

    def add(name: str, what: str, state: ChannelState, event: ChannelEvent | dict[str, Any]) -> None:
        doc = event.model_dump(mode="json") if isinstance(event, ChannelEvent) else event
        cases.append((name, what, state, doc))

    change = {"type": "set-rights", "node": "ke-customs", "rights": ["read"]}
    add(
        "signed_by_a_member",
        "a member, not the owner, signs a change",
        member,
        _event(member, change, at, signer="ke-customs"),
    )
    altered = _event(member, change, at).model_dump(mode="json")
    altered["change"]["rights"] = ["read", "post", "admin"]
    add("altered_after_signing", "the rights changed after the owner signed", member, altered)
    add("wrong_prev", "prev is not the hash of the event before", member, _event(member, change, at, prev="0" * 64))
    add("position_skipped", "pos is two past the state's", member, _event(member, change, at, pos=member.pos + 2))
    add(
        "remove_the_owner",
        "the owner removes itself",
        member,
        _event(member, {"type": "remove", "node": "nl-customs"}, at),
    )
    invite = {"type": "invite", "node": "ke-customs", "rights": ["read"]}
    add("invite_a_member", "an existing member is invited again", member, _event(member, invite, at))
    grant = {"type": "grant-history", "node": "gb-avsec"}
    add("after_close", "any event after close", closed, _event(closed, grant, at))
    add(
        "set_export_not_boolean",
        "amber_strict is a string",
        open_,
        {
            **_event(open_, {"type": "set-export", "amber_strict": True}, at).model_dump(mode="json"),
            "change": {"type": "set-export", "amber_strict": "yes"},
        },
    )
    unknown = {"type": "invite", "node": "xx-unknown", "rights": ["read"]}
    add("invite_outside_the_roster", "the invited node is in no roster", member, _event(member, unknown, at))
    stray = sign_acceptance(CHANNEL["channel"], "gb-avsec", "3" * 64, signing_key("gb-avsec"))
    accept = {"type": "accept", "acceptance": stray.model_dump(mode="json")}
    add(
        "accept_without_invitation",
        "a member's acceptance of no pending invitation",
        member,
        _event(member, accept, at),
    )
    out = []
    for name, what, state, event in cases:
        error, message = _refusal(fed, state, event)
        out.append(
            {"name": name, "what": what, "state_pos": state.pos, "event": event, "error": error, "message": message}
        )
    return out


def build() -> dict[str, Any]:
    recorded = load(ENVELOPE_FILE)
    if recorded is None:
        raise SystemExit("envelope-v1.json is missing: run python -m tests.vectors.make_vectors first")
    fed = recorded_federation(recorded["outputs"])
    states: list[ChannelState] = []
    state: ChannelState | None = None
    for logged in recorded["outputs"]["channel_log"]:
        state = apply_event(state, ChannelEvent.model_validate(logged["signed"]), fed)
        states.append(state)
    assert state is not None
    log = []
    for step in STEPS:
        event = _event(state, step["change"], step["at"])
        state = apply_event(state, event, fed)
        states.append(state)
        log.append(_logged(event, state))
    payloads = []
    for given in PAYLOADS:
        bulletin = Bulletin.model_validate(given)
        payloads.append(
            {
                "bulletin": given,
                "payload": bulletin.payload_bytes.decode("utf-8"),
                "sha256_hex": sha256(bulletin.payload_bytes).hex(),
            }
        )
    return {
        "description": (
            "Channel changes after envelope-v1.json's log, with the state after each; refused channel "
            "events with the error a receiver raises; canonical payloads of bulletins with attachments, "
            "references, expires null and a due date (docs/protocol.md 7, 8.1, 8.2)."
        ),
        "warning": WARNING,
        "inputs": {"roster_and_first_events": "envelope-v1.json outputs.roster, outputs.channel_log", "steps": STEPS},
        "outputs": {
            "state_before": state_view(states[4]),
            "channel_log": log,
            "negatives": _negatives(fed, states),
            "payloads": payloads,
            "jcs_of_state_after": canonical_json(log[-1]["state_after"]).decode("utf-8"),
        },
    }


def main(argv: list[str]) -> int:
    text = render(build())
    if "--check" in argv:
        if not CHANNEL_FILE.exists() or CHANNEL_FILE.read_text("utf-8") != text:
            print(f"{CHANNEL_FILE} is out of date; run python -m tests.vectors.make_channel_vectors", file=sys.stderr)
            return 1
        print("the vectors are up to date")
        return 0
    CHANNEL_FILE.write_text(text, "utf-8")
    print(f"wrote {CHANNEL_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
