"""Build tests/vectors/channel-handover-v1.json: a channel handover (docs/protocol.md 7.5).

envelope-v1.json's roster becomes version 1 of a roster v2 (as roster-v2.json's version 1: the
same holders and times); version 2 of this file's own revokes the channel's owner, nl-customs. The
channel's log is envelope-v1.json's five events, then the owner gives ke-customs and gb-avsec the
admin right; under version 2, gb-avsec (the first admin member by id) signs the handover, then
orders one change as the new owner. Negatives: the handovers and events a receiver refuses, with
the roster version it holds and the error it raises. Deterministic: TEST-ONLY seeds, fixed times,
Ed25519 signs deterministically.

Run: python -m tests.vectors.make_handover_vectors [--check]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exchange import errors
from exchange.crypto import canonical_json
from exchange.model import ChannelEvent, SignedRoster
from exchange.protocol.channel import ChannelState, apply_event, event_hash, sign_event
from exchange.protocol.roster import Federation
from exchange.protocol.roster2_model import SignedRosterV2
from exchange.protocol.rosterchain import TrustedRoster, roster_hash
from exchange.protocol.rostermigration import admit, from_v1
from exchange.protocol.rosterview import federation_view
from exchange.protocol.signing import signing_input
from tests.vectors.make_roster_vectors import SIGNERS, TIMES, V1_AUTHORITY, holders, signed
from tests.vectors.make_vectors import CHANNEL, ENVELOPE_FILE, WARNING, load, render, signing_key

HERE = Path(__file__).resolve().parent
HANDOVER_FILE = HERE / "channel-handover-v1.json"
OWNER, HEIR, OTHER = "nl-customs", "gb-avsec", "ke-customs"
ADMINS: list[dict[str, Any]] = [  # after envelope-v1.json's log, signed by the owner
    {
        "at": "2025-03-02T08:00:00.000Z",
        "change": {"type": "set-rights", "node": OTHER, "rights": ["read", "post", "admin"]},
    },
    {
        "at": "2025-03-02T08:01:00.000Z",
        "change": {"type": "set-rights", "node": HEIR, "rights": ["read", "post", "admin"]},
    },
]
HANDOVER_AT = "2025-04-02T10:00:00.000Z"
HANDOVER = {"type": "handover", "node": OWNER, "roster": 2}
AFTER: dict[str, Any] = {
    "at": "2025-04-02T10:05:00.000Z",
    "change": {"type": "set-rights", "node": OTHER, "rights": ["read", "post"]},
}


@dataclass(frozen=True)
class Rosters:
    """Versions 1 and 2 as a receiver holds them: trusted, and as the v1 view its wiring runs on."""

    signed: list[SignedRosterV2]
    trusted: list[TrustedRoster]
    views: list[Federation]

    def at(self, version: int) -> tuple[Federation, TrustedRoster]:
        return self.views[version - 1], self.trusted[version - 1]


def rosters(recorded: dict[str, Any]) -> Rosters:
    v1_signed = SignedRoster.model_validate(recorded["outputs"]["roster"]["signed"])
    doc1 = from_v1(
        v1_signed, signing_key(V1_AUTHORITY).verify_key, holders(["wco-secretariat", "icao", "rilo-ap"]), *TIMES[1]
    )
    doc2 = admit(doc1, *TIMES[2], statuses={OWNER: "revoked"})
    versions = [signed(doc1, SIGNERS[1]), signed(doc2, ["icao", "rilo-ap"])]
    first = TrustedRoster.restore(versions[0])
    trusted = [first, first.accept(versions[1])]
    return Rosters(versions, trusted, [federation_view(t) for t in trusted])


def event(state: ChannelState, change: dict[str, Any], at: str, signer: str, **fields: Any) -> ChannelEvent:
    """`signer`'s event right after `state`, naming `signer` as owner; `fields` override any member."""
    base: dict[str, Any] = {
        "channel": CHANNEL["channel"],
        "owner": signer,
        "pos": state.pos + 1,
        "prev": state.hash,
        "at": at,
        "change": change,
    }
    return sign_event(**{**base, **fields}, key=signing_key(signer))


def view(s: ChannelState) -> dict[str, Any]:
    return {
        "owner": s.owner,
        "pos": s.pos,
        "hash_hex": s.hash,
        "members": {n: sorted(r) for n, r in sorted(s.members.items())},
        "invited": {n: sorted(r) for n, (r, _) in sorted(s.invited.items())},
        "history_grants": sorted(s.history_grants),
        "readers": list(s.readers),
    }


def _logged(e: ChannelEvent, after: ChannelState, roster: int) -> dict[str, Any]:
    body = e.model_dump(mode="json", exclude={"signature"})
    return {
        "roster_version": roster,
        "signing_input": signing_input("channel-event", body).decode("utf-8"),
        "signed": e.model_dump(mode="json"),
        "hash_hex": event_hash(e),
        "state_after": view(after),
    }


def replay(recorded: dict[str, Any], ros: Rosters) -> tuple[list[ChannelState], list[dict[str, Any]]]:
    """Every state of the log (envelope-v1.json's, then this file's), and this file's logged events."""
    fed1, held1 = ros.at(1)
    states: list[ChannelState] = []
    state: ChannelState | None = None
    for logged in recorded["outputs"]["channel_log"]:
        state = apply_event(state, ChannelEvent.model_validate(logged["signed"]), fed1, held1)
        states.append(state)
    assert state is not None
    log = []
    for step in ADMINS:
        e = event(state, step["change"], step["at"], OWNER)
        state = apply_event(state, e, fed1, held1)
        states.append(state)
        log.append(_logged(e, state, 1))
    fed2, held2 = ros.at(2)
    steps: list[tuple[dict[str, Any], str]] = [(HANDOVER, HANDOVER_AT), (AFTER["change"], AFTER["at"])]
    for change, at in steps:
        e = event(state, change, at, HEIR)
        state = apply_event(state, e, fed2, held2)
        states.append(state)
        log.append(_logged(e, state, 2))
    return states, log


def refusal(ros: Rosters, version: int, state: ChannelState, doc: dict[str, Any]) -> tuple[str, str]:
    fed, held = ros.at(version)
    try:
        apply_event(state, ChannelEvent.model_validate(doc), fed, held)
    except errors.ExchangeError as exc:
        return type(exc).__name__, exc.detail
    raise AssertionError("a negative vector was accepted")


def negatives(ros: Rosters, states: list[ChannelState]) -> list[dict[str, Any]]:
    at = "2025-04-02T11:00:00.000Z"
    before, after = states[6], states[7]  # before and after the handover
    cases: list[tuple[str, str, int, ChannelState, ChannelEvent]] = [
        ("owner_not_revoked", "a handover while the held roster (1) does not revoke the owner", 1, before,
         event(before, {**HANDOVER, "roster": 1}, at, HEIR)),
        ("cites_a_roster_before_the_revocation", "the handover cites version 1, in which the owner is active", 2,
         before, event(before, {**HANDOVER, "roster": 1}, at, HEIR)),
        ("cites_a_roster_not_held", "the handover cites version 3; the receiver holds 2", 2, before,
         event(before, {**HANDOVER, "roster": 3}, at, HEIR)),
        ("not_the_successor", "an admin member other than the first by id claims the channel", 2, before,
         event(before, HANDOVER, at, OTHER)),
        ("from_another_node", "the handover names a member, not the owner, as the one it replaces", 2, before,
         event(before, {**HANDOVER, "node": OTHER}, at, HEIR)),
        ("by_the_revoked_owner", "the revoked owner signs a handover to itself", 2, before,
         event(before, HANDOVER, at, OWNER)),
        ("replayed", "the handover from nl-customs again, after it", 2, after, event(after, HANDOVER, at, HEIR)),
        ("revoked_owner_keeps_going", "the revoked owner signs a change after the handover", 2, after,
         event(after, {"type": "remove", "node": OTHER}, at, OWNER)),
        ("wrong_prev", "the handover does not chain to the log", 2, before,
         event(before, HANDOVER, at, HEIR, prev="0" * 64)),
    ]  # fmt: skip
    out = []
    for name, what, version, state, e in cases:
        error, message = refusal(ros, version, state, e.model_dump(mode="json"))
        doc = e.model_dump(mode="json")
        out.append({"name": name, "what": what, "roster_version": version, "state_pos": state.pos, "event": doc}
                   | {"error": error, "message": message})  # fmt: skip
    return out


def build() -> dict[str, Any]:
    recorded = load(ENVELOPE_FILE)
    if recorded is None:
        raise SystemExit("envelope-v1.json is missing: run python -m tests.vectors.make_vectors first")
    ros = rosters(recorded)
    states, log = replay(recorded, ros)
    return {
        "description": (
            "A channel handover (docs/protocol.md 7.5): roster version 2 revokes the owner nl-customs; "
            "gb-avsec, the first admin member by id, continues the log; refused handovers and events "
            "with the roster version the receiver holds and the error it raises."
        ),
        "warning": WARNING,
        "inputs": {
            "first_events": "envelope-v1.json outputs.channel_log",
            "roster_v1": "envelope-v1.json outputs.roster, migrated as roster-v2.json's version 1",
            "steps": [*ADMINS, {"at": HANDOVER_AT, "change": HANDOVER}, AFTER],
        },
        "outputs": {
            "rosters": [
                {"version": v.roster.version, "hash_hex": roster_hash(v.roster), "signed": v.model_dump(mode="json")}
                for v in ros.signed
            ],
            "state_before": view(states[4]),
            "channel_log": log,
            "negatives": negatives(ros, states),
            "jcs_of_state_after": canonical_json(log[-1]["state_after"]).decode("utf-8"),
        },
    }


def main(argv: list[str]) -> int:
    text = render(build())
    if "--check" in argv:
        if not HANDOVER_FILE.exists() or HANDOVER_FILE.read_text("utf-8") != text:
            print(f"{HANDOVER_FILE} is out of date; run python -m tests.vectors.make_handover_vectors", file=sys.stderr)
            return 1
        print("the vectors are up to date")
        return 0
    HANDOVER_FILE.write_text(text, "utf-8")
    print(f"wrote {HANDOVER_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
