"""Every receiver rule of the protocol core, one test each: the good case passes, the bad case is refused.

Fixtures are built in-process from fixed test seeds (tests/vectors/make_vectors.py): no network,
no database, no clock.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import pytest
from pydantic import ValidationError

from exchange.crypto import SealedContent, b64d, b64e, canonical_json, sha256, strict_loads
from exchange.crypto.content import key_commitment, open_content
from exchange.crypto.keys import DecryptionKey, EncryptionKey, VerifyKey, key_id
from exchange.errors import (
    BadSignature,
    ConfigError,
    DecryptionFailed,
    InvalidEnvelope,
    InvalidInput,
    UnknownPeer,
)
from exchange.model import (
    Bulletin,
    ChannelEvent,
    ChannelPolicy,
    Envelope,
    EnvelopeHeader,
    NodeId,
    Receipt,
    Roster,
    SignedRoster,
)
from exchange.protocol.channel import ChannelState, apply_event, event_hash, sign_acceptance, sign_event
from exchange.protocol.envelope import (
    MAX_ENVELOPE_BYTES,
    build_envelope,
    bulletin_id,
    envelope_bytes,
    open_envelope,
    parse_envelope,
    sign_envelope,
    verify_envelope,
    wrap_info,
)
from exchange.protocol.receipt import make_receipt, verify_receipt
from exchange.protocol.roster import Federation, sign_roster
from exchange.protocol.signing import sign, signing_input, verify
from tests.vectors.make_vectors import (
    CounterRandom,
    ReplayRandom,
    channel_log,
    decryption_key,
    replay,
    roster_entry,
    signing_key,
    tls_cert,
)

NODES = {
    "gb-avsec": ("GB", "aviation-security"),
    "ke-customs": ("KE", "customs"),
    "nl-customs": ("NL", "customs"),
    "wco-rilo": ("BE", "international"),
}
AUTHORITY = signing_key("authority")
AT = "2025-03-01T12:00:00.000Z"
CREATE: dict[str, Any] = {
    "type": "create",
    "title": "Air cargo fraud",
    "purpose": "",
    "policy": {"agencies": ["customs", "aviation-security"]},
    "default_handling": {"tlp": "AMBER", "no_onward_sharing": False},
    "ends": None,
}
BULLETIN = Bulletin.model_validate(
    {"kind": "alert", "handling": {"tlp": "AMBER"}, "title": "Undeclared cells", "body": "Hold AWB 074-12345675."}
)
FAILED = str(DecryptionFailed())


# -- factories ------------------------------------------------------------------------------


@functools.cache
def cert(node_id: str) -> str:
    return tls_cert(node_id)


def entry(node_id: str, **changes: Any) -> dict[str, Any]:
    country, agency = NODES[node_id]
    base = {"id": node_id, "name": f"{node_id} (test)", "country": country, "agency": agency}
    return {**roster_entry(base, cert(node_id)), **changes}


def signed_roster(entries: list[dict[str, Any]] | None = None) -> SignedRoster:
    roster = Roster.model_validate(
        {
            "v": 1,
            "federation": "rules",
            "version": 1,
            "issued": "2025-03-01T12:00:00.000Z",
            "authority_kid": AUTHORITY.kid,
            "nodes": entries if entries is not None else [entry(n) for n in NODES],
        }
    )
    return sign_roster(roster, AUTHORITY)


def first(signer: str = "nl-customs", **fields: Any) -> ChannelEvent:
    """A signed create event at position 0; `fields` override any event field."""
    base: dict[str, Any] = {
        "channel": "cargo-fraud",
        "owner": "nl-customs",
        "pos": 0,
        "prev": None,
        "at": AT,
        "change": CREATE,
    }
    return sign_event(**{**base, **fields}, key=signing_key(signer))


def following(state: ChannelState, change: dict[str, Any], signer: str | None = None, **fields: Any) -> ChannelEvent:
    """The owner's signed event right after `state`; `fields` override any event field."""
    base: dict[str, Any] = {
        "channel": state.channel,
        "owner": state.owner,
        "pos": state.pos + 1,
        "prev": state.hash,
        "at": AT,
        "change": change,
    }
    return sign_event(**{**base, **fields}, key=signing_key(signer or state.owner))


def acceptance(state: ChannelState, invitee: str, signer: str | None = None, **fields: Any) -> dict[str, Any]:
    """An `accept` change carrying `invitee`'s signed acceptance of its invitation in `state`."""
    args: dict[str, Any] = {"channel": state.channel, "node": invitee, "invite_hash": state.invited[NodeId(invitee)][1]}
    args.update(fields)
    acc = sign_acceptance(args["channel"], args["node"], args["invite_hash"], signing_key(signer or invitee))
    return {"type": "accept", "acceptance": acc.model_dump(mode="json")}


def step(state: ChannelState, change: dict[str, Any], fed: Federation) -> ChannelState:
    return apply_event(state, following(state, change), fed)


@pytest.fixture(scope="module")
def fed() -> Federation:
    return Federation.verify(signed_roster(), AUTHORITY.verify_key)


@pytest.fixture(scope="module")
def created(fed: Federation) -> ChannelState:
    return apply_event(None, first(), fed)


@pytest.fixture(scope="module")
def state(fed: Federation) -> ChannelState:
    """nl-customs owns the channel; ke-customs may post and read; gb-avsec may read."""
    return replay(channel_log(fed), fed)


def envelope(
    fed: Federation,
    state: ChannelState,
    author: str = "nl-customs",
    readers: list[tuple[NodeId, EncryptionKey]] | None = None,
) -> Envelope:
    if readers is None:
        readers = [(n, fed.encryption_key(n)) for n in state.readers]
    return build_envelope(
        BULLETIN,
        state=state,
        author=NodeId(author),
        key=signing_key(author),
        seq=1,
        readers=readers,
        created="2025-03-14T09:26:53.589Z",
        rng=CounterRandom(),
    )


@pytest.fixture(scope="module")
def good(fed: Federation, state: ChannelState) -> Envelope:
    return envelope(fed, state)


def resign(env: Envelope, by: str | None = None, wraps: list[str] | None = None, **header: Any) -> Envelope:
    """`env` with header fields or wraps changed and a fresh, valid signature by node `by` (default: the author)."""
    new = EnvelopeHeader.model_validate({**env.header.model_dump(mode="json"), **header})
    wraps = env.wraps if wraps is None else wraps
    return sign_envelope(new, wraps, b64d(env.ciphertext), signing_key(by or new.author))


def altered(env: Envelope, **fields: Any) -> Envelope:
    """`env` with wire fields changed and the old signature kept."""
    data = env.model_dump(mode="json")
    for path, value in fields.items():
        target = data
        *parents, leaf = path.split("__")
        for p in parents:
            target = target[p]
        target[leaf] = value
    return Envelope.model_validate(data)


def seal_payload(env: Envelope, fed: Federation, plaintext: bytes) -> tuple[Envelope, str]:
    """A correctly signed envelope like `env` whose encrypted payload is `plaintext`, verbatim."""
    sealed = SealedContent(plaintext)
    header = EnvelopeHeader.model_validate(
        {
            **env.header.model_dump(mode="json"),
            "nonce": b64e(sealed.nonce),
            "key_commitment": b64e(sealed.key_commitment),
            "ciphertext_sha256": b64e(sha256(sealed.ciphertext)),
        }
    )
    bid = bulletin_id(header)
    wraps = [b64e(sealed.wrap(fed.encryption_key(r.node), wrap_info(bid, r.kid))) for r in header.recipients]
    return sign_envelope(header, wraps, sealed.ciphertext, signing_key(header.author)), bid


def index_of(env: Envelope, node: str) -> int:
    return [r.node for r in env.header.recipients].index(node)


# -- roster: Federation.verify ------------------------------------------------------------------


def test_roster_good(fed: Federation) -> None:
    assert fed.node_ids == sorted(NODES)
    assert fed.node("ke-customs").agency == "customs"
    assert fed.node_by_pin(entry("gb-avsec")["tls_pin"]).id == "gb-avsec"


def test_roster_signed_by_another_authority_key_is_refused() -> None:
    with pytest.raises(ConfigError):
        Federation.verify(signed_roster(), signing_key("another authority").verify_key)


def test_roster_altered_after_signing_is_refused() -> None:
    signed = signed_roster().model_dump(mode="json")
    signed["roster"]["nodes"][0]["endpoint"] = "https://attacker.example"
    with pytest.raises(BadSignature):
        Federation.verify(SignedRoster.model_validate(signed), AUTHORITY.verify_key)


def test_roster_signature_over_another_domain_is_refused() -> None:
    signed = signed_roster()
    other = sign("channel-event", signed.roster.model_dump(mode="json"), AUTHORITY)
    with pytest.raises(BadSignature):
        Federation.verify(SignedRoster(roster=signed.roster, signature=other), AUTHORITY.verify_key)


def test_roster_signing_kid_must_match_the_signing_key() -> None:
    bad = [entry(n) for n in NODES]
    bad[1]["signing_kid"] = bad[2]["signing_kid"]
    with pytest.raises(ConfigError, match="signing key id"):
        Federation.verify(signed_roster(bad), AUTHORITY.verify_key)


def test_roster_encryption_kid_must_match_the_encryption_key() -> None:
    bad = [entry(n) for n in NODES]
    bad[1]["encryption_kid"] = bad[2]["encryption_kid"]
    with pytest.raises(ConfigError, match="encryption key id"):
        Federation.verify(signed_roster(bad), AUTHORITY.verify_key)


def test_roster_key_that_is_not_a_key_is_refused() -> None:
    bad = [entry(n) for n in NODES]
    bad[0]["signing_key"] = b64e(b"\x01" * 31)
    with pytest.raises(ConfigError):
        Federation.verify(signed_roster(bad), AUTHORITY.verify_key)


def test_roster_tls_pin_must_match_the_certificate() -> None:
    bad = [entry(n) for n in NODES]
    bad[0]["tls_pin"] = bad[1]["tls_pin"]
    with pytest.raises(ConfigError, match="TLS pin"):
        Federation.verify(signed_roster(bad), AUTHORITY.verify_key)


def test_roster_tls_cert_must_be_a_certificate() -> None:
    bad = [entry(n) for n in NODES]
    bad[0]["tls_cert"] = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(ConfigError):
        Federation.verify(signed_roster(bad), AUTHORITY.verify_key)


def test_roster_tls_cert_with_non_ascii_text_is_a_config_error() -> None:
    bad = [entry(n) for n in NODES]
    bad[0]["tls_cert"] = "-----BEGIN CERTIFICATE-----\né\n-----END CERTIFICATE-----\n"
    with pytest.raises(ConfigError):
        Federation.verify(signed_roster(bad), AUTHORITY.verify_key)


def test_roster_tls_pins_must_be_unique() -> None:
    bad = [entry(n) for n in NODES]
    bad[1]["tls_cert"], bad[1]["tls_pin"] = bad[0]["tls_cert"], bad[0]["tls_pin"]
    with pytest.raises(ConfigError):
        Federation.verify(signed_roster(bad), AUTHORITY.verify_key)


def test_roster_node_ids_must_be_unique() -> None:
    with pytest.raises(ValidationError):
        signed_roster([entry("ke-customs"), entry("ke-customs")])


def test_sign_roster_refuses_a_roster_naming_another_authority() -> None:
    roster = signed_roster().roster
    with pytest.raises(ConfigError):
        sign_roster(roster, signing_key("another authority"))


def test_unknown_node_and_unknown_pin_are_unknown_peers(fed: Federation) -> None:
    with pytest.raises(UnknownPeer):
        fed.node("xx-nobody")
    with pytest.raises(UnknownPeer):
        fed.node_by_pin(b64e(sha256(b"not a roster key")))


# -- channel events: apply_event ----------------------------------------------------------------


def test_channel_create_good(created: ChannelState) -> None:
    assert (created.pos, created.owner, created.closed) == (0, "nl-customs", False)
    assert created.members == {"nl-customs": frozenset({"admin", "post", "read"})}
    assert created.hash == event_hash(first()) == sha256(canonical_json(first().model_dump(mode="json"))).hex()


def test_channel_full_log_good(state: ChannelState) -> None:
    assert state.pos == 4 and state.readers == ["gb-avsec", "ke-customs", "nl-customs"]
    assert state.rights("ke-customs") == {"post", "read"} and state.rights("gb-avsec") == {"read"}
    assert state.invited == {} and state.involved == {"gb-avsec", "ke-customs", "nl-customs"}


def test_channel_event_signer_kid_must_be_the_owners_roster_key(fed: Federation) -> None:
    with pytest.raises(InvalidInput, match="owner's roster key"):
        apply_event(None, first(signer="ke-customs"), fed)


def test_channel_event_altered_after_signing_is_refused(fed: Federation) -> None:
    data = first().model_dump(mode="json")
    data["change"]["policy"]["agencies"].append("international")
    with pytest.raises(BadSignature):
        apply_event(None, ChannelEvent.model_validate(data), fed)


def test_channel_event_signed_over_another_domain_is_refused(fed: Federation) -> None:
    data = first().model_dump(mode="json")
    body = {k: v for k, v in data.items() if k != "signature"}
    data["signature"] = sign("channel-accept", body, signing_key("nl-customs"))
    with pytest.raises(BadSignature):
        apply_event(None, ChannelEvent.model_validate(data), fed)


def test_channel_owner_must_be_in_the_roster(fed: Federation) -> None:
    with pytest.raises(UnknownPeer):
        apply_event(None, first(signer="xx-nobody", owner="xx-nobody"), fed)


@pytest.mark.parametrize(
    "fields",
    [{"pos": 1}, {"prev": "00" * 32}, {"change": {"type": "invite", "node": "ke-customs", "rights": ["read"]}}],
    ids=["pos", "prev", "not-create"],
)
def test_channel_log_starts_with_create_at_position_zero(fields: dict[str, Any], fed: Federation) -> None:
    with pytest.raises(InvalidInput, match="must start"):
        apply_event(None, first(**fields), fed)


def test_channel_owner_must_fit_the_policy(fed: Federation) -> None:
    with pytest.raises(InvalidInput, match="policy excludes"):
        apply_event(None, first(change={**CREATE, "policy": {"agencies": ["aviation-security"]}}), fed)


@pytest.mark.parametrize(
    ("fields", "signer"),
    [({"channel": "other-channel"}, None), ({"owner": "ke-customs"}, "ke-customs")],
    ids=["other-channel", "other-owner"],
)
def test_channel_event_must_belong_to_the_channel_and_owner(
    fields: dict[str, Any], signer: str | None, fed: Federation, state: ChannelState
) -> None:
    with pytest.raises(InvalidInput, match="another channel or owner"):
        apply_event(state, following(state, {"type": "close"}, signer, **fields), fed)


@pytest.mark.parametrize("fields", [{"pos": 6}, {"pos": 4}, {"prev": "00" * 32}], ids=["gap", "repeat", "wrong-prev"])
def test_channel_event_must_extend_the_log(fields: dict[str, Any], fed: Federation, state: ChannelState) -> None:
    with pytest.raises(InvalidInput, match="does not extend"):
        apply_event(state, following(state, {"type": "close"}, **fields), fed)


def test_channel_close_good_and_final(fed: Federation, state: ChannelState) -> None:
    closed = step(state, {"type": "close"}, fed)
    assert closed.closed and closed.members == state.members
    with pytest.raises(InvalidInput, match="closed"):
        step(closed, {"type": "remove", "node": "gb-avsec"}, fed)


def test_channel_is_created_only_once(fed: Federation, state: ChannelState) -> None:
    with pytest.raises(InvalidInput, match="only once"):
        step(state, CREATE, fed)


def test_channel_invite_good(fed: Federation, created: ChannelState) -> None:
    after = step(created, {"type": "invite", "node": "gb-avsec", "rights": ["read"]}, fed)
    assert after.invited == {"gb-avsec": (frozenset({"read"}), after.hash)}
    assert "gb-avsec" not in after.members and "gb-avsec" in after.involved


def test_channel_invite_refuses_members_and_invitees(
    fed: Federation, created: ChannelState, state: ChannelState
) -> None:
    invite = {"type": "invite", "node": "ke-customs", "rights": ["read"]}
    with pytest.raises(InvalidInput, match="already"):
        step(state, invite, fed)
    with pytest.raises(InvalidInput, match="already"):
        step(step(created, invite, fed), invite, fed)


def test_channel_invitee_must_fit_the_policy(fed: Federation, created: ChannelState) -> None:
    with pytest.raises(InvalidInput, match="policy excludes"):
        step(created, {"type": "invite", "node": "wco-rilo", "rights": ["read"]}, fed)


def test_channel_invitee_must_be_in_the_roster(fed: Federation, created: ChannelState) -> None:
    with pytest.raises(UnknownPeer):
        step(created, {"type": "invite", "node": "xx-nobody", "rights": ["read"]}, fed)


@pytest.fixture(scope="module")
def inviting(fed: Federation, created: ChannelState) -> ChannelState:
    return step(created, {"type": "invite", "node": "ke-customs", "rights": ["post", "read"]}, fed)


def test_channel_accept_good(fed: Federation, inviting: ChannelState) -> None:
    after = step(inviting, acceptance(inviting, "ke-customs"), fed)
    assert after.rights("ke-customs") == {"post", "read"} and after.invited == {}


def test_channel_accept_needs_a_pending_invitation(fed: Federation, inviting: ChannelState) -> None:
    forged = acceptance(inviting, "ke-customs", node="gb-avsec", signer="gb-avsec")
    with pytest.raises(InvalidInput, match="does not hold"):
        step(inviting, forged, fed)


@pytest.mark.parametrize("fields", [{"invite_hash": "00" * 32}, {"channel": "other-channel"}], ids=["hash", "channel"])
def test_channel_accept_must_name_the_invitation(
    fields: dict[str, Any], fed: Federation, inviting: ChannelState
) -> None:
    with pytest.raises(InvalidInput, match="does not hold"):
        step(inviting, acceptance(inviting, "ke-customs", **fields), fed)


def test_channel_acceptance_signer_must_be_the_invitees_roster_key(fed: Federation, inviting: ChannelState) -> None:
    with pytest.raises(InvalidInput, match="invitee's roster key"):
        step(inviting, acceptance(inviting, "ke-customs", signer="nl-customs"), fed)


def test_channel_acceptance_signature_must_verify(fed: Federation, inviting: ChannelState) -> None:
    # The signature of an acceptance of some other invitation, under the real one's fields.
    change = acceptance(inviting, "ke-customs")
    other = sign_acceptance(inviting.channel, "ke-customs", "00" * 32, signing_key("ke-customs"))
    change["acceptance"]["signature"] = other.signature
    with pytest.raises(BadSignature):
        step(inviting, change, fed)


def test_channel_set_rights_good(fed: Federation, state: ChannelState) -> None:
    after = step(state, {"type": "set-rights", "node": "gb-avsec", "rights": ["post", "read"]}, fed)
    assert after.rights("gb-avsec") == {"post", "read"}


@pytest.mark.parametrize("node", ["nl-customs", "wco-rilo"], ids=["owner", "not-a-member"])
def test_channel_set_rights_only_for_other_members(node: str, fed: Federation, state: ChannelState) -> None:
    with pytest.raises(InvalidInput, match="rights can change"):
        step(state, {"type": "set-rights", "node": node, "rights": ["read"]}, fed)


def test_channel_remove_good(fed: Federation, state: ChannelState, inviting: ChannelState) -> None:
    after = step(state, {"type": "remove", "node": "gb-avsec"}, fed)
    assert after.readers == ["ke-customs", "nl-customs"] and "gb-avsec" in after.involved
    withdrawn = step(inviting, {"type": "remove", "node": "ke-customs"}, fed)
    assert withdrawn.invited == {}


def test_channel_owner_cannot_be_removed(fed: Federation, state: ChannelState) -> None:
    with pytest.raises(InvalidInput, match="owner cannot be removed"):
        step(state, {"type": "remove", "node": "nl-customs"}, fed)


def test_channel_remove_needs_a_member_or_invitee(fed: Federation, state: ChannelState) -> None:
    with pytest.raises(InvalidInput, match="neither"):
        step(state, {"type": "remove", "node": "wco-rilo"}, fed)


def test_channel_grant_history_good_and_cleared_by_removal(fed: Federation, state: ChannelState) -> None:
    granted = step(state, {"type": "grant-history", "node": "gb-avsec"}, fed)
    assert granted.history_grants == {"gb-avsec"}
    assert step(granted, {"type": "remove", "node": "gb-avsec"}, fed).history_grants == frozenset()


def test_channel_grant_history_only_to_readers(fed: Federation, state: ChannelState) -> None:
    with pytest.raises(InvalidInput, match="not a reader"):
        step(state, {"type": "grant-history", "node": "wco-rilo"}, fed)


# -- envelopes: parse_envelope ------------------------------------------------------------------


def test_parse_good(good: Envelope) -> None:
    assert parse_envelope(envelope_bytes(good)) == good
    assert parse_envelope(good.model_dump(mode="json")) == good


def test_parse_refuses_oversized_input() -> None:
    with pytest.raises(InvalidEnvelope, match="too large"):
        parse_envelope(b" " * (MAX_ENVELOPE_BYTES + 1))


@pytest.mark.parametrize(
    "edit",
    [
        lambda w: w[:-1],
        lambda w: w.replace(b'"v":1}', b'"v":1,"v":1}', 1),
        lambda w: w.replace(b'"seq":1,', b'"seq":1.0,', 1),
        lambda w: w.replace(b'"seq":1,', b'"seq":NaN,', 1),
        lambda w: w.replace(b'"seq":1,', b'"seq":Infinity,', 1),
        lambda w: w.replace(b"cargo-fraud", b"cargo-fra\xffd", 1),
    ],
    ids=["truncated", "duplicate-key", "float", "nan", "infinity", "not-utf8"],
)
def test_parse_refuses_malformed_json(edit: Any, good: Envelope) -> None:
    with pytest.raises(InvalidEnvelope):
        parse_envelope(edit(envelope_bytes(good)))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("relay", "ke-customs"),
        ("header__v", 2),
        ("header__seq", 0),
        ("header__seq", "1"),
        ("header__suite", "x25519-hkdfsha256-chacha20poly1305"),
        ("header__created", "2025-03-14 09:26:53Z"),
        ("header__channel", "Cargo_Fraud"),
        ("header__recipients", []),
        ("header__handling__tlp", "WHITE"),
        ("header__nonce", "not base64!"),
        ("header__signer", "ABCDEF0123456789"),
        ("header__state__hash", "AB" * 32),
    ],
)
def test_parse_refuses_what_the_schema_refuses(path: str, value: Any, good: Envelope) -> None:
    data = good.model_dump(mode="json")
    target = data
    *parents, leaf = path.split("__")
    for p in parents:
        target = target[p]
    target[leaf] = value
    with pytest.raises(InvalidEnvelope, match="schema"):
        parse_envelope(canonical_json(data))


@pytest.mark.parametrize("order", [[1, 0, 2], [0, 0, 1]], ids=["unsorted", "repeated"])
def test_parse_refuses_unsorted_or_repeated_recipients(order: list[int], good: Envelope) -> None:
    data = good.model_dump(mode="json")
    data["header"]["recipients"] = [data["header"]["recipients"][i] for i in order]
    with pytest.raises(InvalidEnvelope, match="sorted"):
        parse_envelope(canonical_json(data))


# -- envelopes: verify_envelope, in the order it checks -------------------------------------------


def test_verify_good(good: Envelope, fed: Federation, state: ChannelState) -> None:
    bid = verify_envelope(good, fed, state)
    assert bid == sha256(canonical_json(good.header.model_dump(mode="json"))).hex()


def test_verify_author_must_be_in_the_roster(good: Envelope, fed: Federation, state: ChannelState) -> None:
    with pytest.raises(UnknownPeer):
        verify_envelope(resign(good, author="xx-nobody"), fed, state)


def test_verify_signer_must_be_the_authors_roster_key(good: Envelope, fed: Federation, state: ChannelState) -> None:
    forged = resign(good, by="ke-customs", signer=signing_key("ke-customs").kid)
    with pytest.raises(InvalidEnvelope, match="author's roster key"):
        verify_envelope(forged, fed, state)


def test_verify_signature_must_verify(good: Envelope, fed: Federation, state: ChannelState) -> None:
    sig = bytearray(b64d(good.signature))
    sig[10] ^= 0x04
    with pytest.raises(BadSignature):
        verify_envelope(altered(good, signature=b64e(bytes(sig))), fed, state)


def test_verify_signature_must_be_canonical_base64url(good: Envelope, fed: Federation, state: ChannelState) -> None:
    with pytest.raises(InvalidEnvelope, match="base64url"):
        verify_envelope(altered(good, signature=good.signature[:-1] + "B"), fed, state)


def test_verify_signature_covers_the_header(good: Envelope, fed: Federation, state: ChannelState) -> None:
    with pytest.raises(BadSignature):
        verify_envelope(altered(good, header__handling__tlp="CLEAR"), fed, state)


def test_verify_signature_covers_the_wraps(good: Envelope, fed: Federation, state: ChannelState) -> None:
    wraps = list(good.wraps)
    wraps[0], wraps[1] = wraps[1], wraps[0]
    with pytest.raises(BadSignature):
        verify_envelope(altered(good, wraps=wraps), fed, state)


def test_verify_checks_the_signature_before_any_other_rule(
    good: Envelope, fed: Federation, state: ChannelState
) -> None:
    # This change breaks the recipients rule too, but the signature is what must refuse it.
    dropped = good.model_dump(mode="json")["header"]["recipients"][1:]
    with pytest.raises(BadSignature):
        verify_envelope(altered(good, header__recipients=dropped, wraps=good.wraps[1:]), fed, state)


@pytest.mark.parametrize(
    "cite",
    [
        lambda s: {"state": {"owner": s.owner, "pos": s.pos, "hash": "00" * 32}},
        lambda s: {"state": {"owner": s.owner, "pos": s.pos - 1, "hash": s.hash}},
        lambda s: {"state": {"owner": "ke-customs", "pos": s.pos, "hash": s.hash}},
        lambda s: {"channel": "other-channel"},
    ],
    ids=["other-hash", "other-pos", "other-owner", "other-channel"],
)
def test_verify_envelope_must_cite_the_checked_state(
    cite: Any, good: Envelope, fed: Federation, state: ChannelState
) -> None:
    with pytest.raises(InvalidEnvelope, match="cites a channel state"):
        verify_envelope(resign(good, **cite(state)), fed, state)


def test_verify_refuses_a_closed_state(fed: Federation, state: ChannelState) -> None:
    closed = step(state, {"type": "close"}, fed)
    with pytest.raises(InvalidEnvelope, match="closed"):
        verify_envelope(envelope(fed, closed), fed, closed)


def test_verify_author_agency_must_fit_the_policy(good: Envelope, fed: Federation, state: ChannelState) -> None:
    narrowed = dataclasses.replace(state, policy=ChannelPolicy(agencies=["aviation-security"]))
    with pytest.raises(InvalidEnvelope, match="policy excludes"):
        verify_envelope(good, fed, narrowed)


def test_verify_author_must_hold_post(fed: Federation, state: ChannelState) -> None:
    reader_only = envelope(fed, state, author="gb-avsec")
    with pytest.raises(InvalidEnvelope, match="post right"):
        verify_envelope(reader_only, fed, state)


def test_verify_recipients_must_be_the_readers(fed: Federation, state: ChannelState) -> None:
    fewer = envelope(fed, state, readers=[(NodeId(n), fed.encryption_key(n)) for n in ("ke-customs", "nl-customs")])
    with pytest.raises(InvalidEnvelope, match="recipients differ"):
        verify_envelope(fewer, fed, state)


def test_verify_recipient_kids_must_be_roster_keys(fed: Federation, state: ChannelState) -> None:
    readers = [(n, fed.encryption_key(n)) for n in state.readers]
    readers[0] = (readers[0][0], decryption_key("stale gb-avsec key").public)
    with pytest.raises(InvalidEnvelope, match="not its roster key"):
        verify_envelope(envelope(fed, state, readers=readers), fed, state)


def test_verify_one_wrap_per_recipient(good: Envelope, fed: Federation, state: ChannelState) -> None:
    with pytest.raises(InvalidEnvelope, match="one wrapped key per recipient"):
        verify_envelope(resign(good, wraps=good.wraps[:-1]), fed, state)


def test_verify_wraps_are_80_bytes(good: Envelope, fed: Federation, state: ChannelState) -> None:
    short = [*good.wraps[:-1], b64e(b64d(good.wraps[-1])[:79])]
    with pytest.raises(InvalidEnvelope, match="malformed wrapped key"):
        verify_envelope(resign(good, wraps=short), fed, state)


@pytest.mark.parametrize("field", ["nonce", "key_commitment"])
def test_verify_nonce_and_key_commitment_lengths(
    field: str, good: Envelope, fed: Federation, state: ChannelState
) -> None:
    value = getattr(good.header, field)
    changed: dict[str, Any] = {field: b64e(b64d(value) + b"\x00")}
    with pytest.raises(InvalidEnvelope, match="malformed nonce or key commitment"):
        verify_envelope(resign(good, **changed), fed, state)


def test_verify_ciphertext_must_match_its_hash(good: Envelope, fed: Federation, state: ChannelState) -> None:
    ct = bytearray(b64d(good.ciphertext))
    ct[0] ^= 0x01
    with pytest.raises(InvalidEnvelope, match="ciphertext does not match"):
        verify_envelope(altered(good, ciphertext=b64e(bytes(ct))), fed, state)


# -- envelopes: open_envelope, one message for every failure ------------------------------------


@pytest.mark.parametrize("me", ["gb-avsec", "ke-customs", "nl-customs"])
def test_open_good(me: str, good: Envelope, fed: Federation, state: ChannelState) -> None:
    bid = verify_envelope(good, fed, state)
    assert open_envelope(good, bid, NodeId(me), decryption_key(me)) == BULLETIN


def test_open_refuses_a_node_that_is_not_a_recipient(good: Envelope) -> None:
    with pytest.raises(DecryptionFailed) as caught:
        open_envelope(good, bulletin_id(good.header), NodeId("wco-rilo"), decryption_key("wco-rilo"))
    assert str(caught.value) == FAILED


def test_open_refuses_a_key_other_than_the_one_named(good: Envelope) -> None:
    with pytest.raises(DecryptionFailed) as caught:
        open_envelope(good, bulletin_id(good.header), NodeId("ke-customs"), decryption_key("rotated ke key"))
    assert str(caught.value) == FAILED


def test_open_wrap_is_bound_to_the_bulletin_id(good: Envelope) -> None:
    with pytest.raises(DecryptionFailed) as caught:
        open_envelope(good, "00" * 32, NodeId("ke-customs"), decryption_key("ke-customs"))
    assert str(caught.value) == FAILED


def test_open_wrap_is_bound_to_its_reader(good: Envelope) -> None:
    wraps = list(good.wraps)
    i, j = index_of(good, "ke-customs"), index_of(good, "nl-customs")
    wraps[i] = wraps[j]
    with pytest.raises(DecryptionFailed) as caught:
        open_envelope(
            altered(good, wraps=wraps), bulletin_id(good.header), NodeId("ke-customs"), decryption_key("ke-customs")
        )
    assert str(caught.value) == FAILED


def test_open_content_key_must_match_the_commitment(good: Envelope, fed: Federation, state: ChannelState) -> None:
    # A reader who knows nothing else wraps a key of its own for ke-customs, correctly bound.
    bid = bulletin_id(good.header)
    other = SealedContent(b"{}")
    wraps = list(good.wraps)
    wraps[index_of(good, "ke-customs")] = b64e(
        other.wrap(fed.encryption_key("ke-customs"), wrap_info(bid, fed.node("ke-customs").encryption_kid))
    )
    with pytest.raises(DecryptionFailed) as caught:
        open_envelope(altered(good, wraps=wraps), bid, NodeId("ke-customs"), decryption_key("ke-customs"))
    assert str(caught.value) == FAILED


def test_open_refuses_altered_ciphertext(good: Envelope) -> None:
    ct = bytearray(b64d(good.ciphertext))
    ct[-1] ^= 0x01
    with pytest.raises(DecryptionFailed) as caught:
        open_envelope(
            altered(good, ciphertext=b64e(bytes(ct))),
            bulletin_id(good.header),
            NodeId("ke-customs"),
            decryption_key("ke-customs"),
        )
    assert str(caught.value) == FAILED


@pytest.mark.parametrize(
    "plaintext",
    [
        b"not json",
        b"[]",
        b'{"kind":"alert","title":"x","title":"y"}',
        b'{"kind":"alert","title":"x","handling":{"tlp":"RED"}}',
        b'{"kind":"alert","title":"x","unknown":1}',
        b'{"kind":"rumour","title":"x"}',
        b'{"kind":"alert","title":"x","risk":0.5}',
    ],
    ids=["not-json", "not-object", "duplicate-key", "handling-inside", "unknown-field", "bad-kind", "float"],
)
def test_open_refuses_a_payload_that_is_not_a_bulletin(
    plaintext: bytes, good: Envelope, fed: Federation, state: ChannelState
) -> None:
    env, bid = seal_payload(good, fed, plaintext)
    assert verify_envelope(env, fed, state) == bid  # the author signed it: only the payload is wrong
    with pytest.raises(DecryptionFailed) as caught:
        open_envelope(env, bid, NodeId("ke-customs"), decryption_key("ke-customs"))
    assert str(caught.value) == FAILED


@pytest.mark.parametrize(
    "payload",
    [
        b'{"kind":"alert","title":"Short form"}',  # members left to defaults
        b'{"body":"","expires":null,"indicators":{"air_waybills":[],"airports":[],"companies":[],"flights":[],'
        b'"hs_codes":[],"risk_indicators":[]},"kind":"alert","language":"en","references":[],"title":" padded "}',
        b'{"title":"x","kind":"alert","body":"","expires":null,"indicators":{"air_waybills":[],"airports":[],'
        b'"companies":[],"flights":[],"hs_codes":[],"risk_indicators":[]},"language":"en","references":[]}',
    ],
    ids=["defaults", "trimmed", "key-order"],
)
def test_open_refuses_a_payload_that_is_not_canonical(good: Envelope, fed: Federation, payload: bytes) -> None:
    """What is stored must be exactly what was encrypted: no defaults filled in, nothing trimmed."""
    env, bid = seal_payload(good, fed, payload)
    with pytest.raises(InvalidEnvelope, match="canonical"):
        open_envelope(env, bid, NodeId("ke-customs"), decryption_key("ke-customs"))


# -- receipts: verify_receipt -----------------------------------------------------------------


def test_receipt_good(fed: Federation) -> None:
    receipt = make_receipt(
        "ab" * 32, NodeId("ke-customs"), "received", "2025-03-14T09:26:54.120Z", signing_key("ke-customs")
    )
    verify_receipt(receipt, fed)
    body = receipt.model_dump(mode="json", exclude={"signature"})
    signing_key("ke-customs").verify_key.verify(b64d(receipt.signature), signing_input("receipt", body))


def _receipt(**changes: Any) -> Receipt:
    good = make_receipt(
        "ab" * 32, NodeId("ke-customs"), "received", "2025-03-14T09:26:54.120Z", signing_key("ke-customs")
    )
    return Receipt.model_validate({**good.model_dump(mode="json"), **changes})


def test_receipt_node_must_be_in_the_roster(fed: Federation) -> None:
    with pytest.raises(UnknownPeer):
        verify_receipt(_receipt(node="xx-nobody"), fed)


def test_receipt_signer_must_be_the_nodes_roster_key(fed: Federation) -> None:
    forged = make_receipt(
        "ab" * 32, NodeId("ke-customs"), "received", "2025-03-14T09:26:54.120Z", signing_key("nl-customs")
    )
    with pytest.raises(InvalidEnvelope, match="roster key"):
        verify_receipt(forged, fed)


def test_receipt_altered_after_signing_is_refused(fed: Federation) -> None:
    with pytest.raises(BadSignature):
        verify_receipt(_receipt(status="opened"), fed)


def test_receipt_signature_that_is_not_base64url_is_a_bad_signature(fed: Federation) -> None:
    with pytest.raises(BadSignature):
        verify_receipt(_receipt(signature="AB"), fed)


# -- encoding.py -------------------------------------------------------------------------------


def test_canonical_json_known_answer() -> None:
    value = {"b": 1, "a": [True, None, "é\n\u001f"], "€": -0, "Z": 2**53 - 1}
    expected = '{"Z":9007199254740991,"a":[true,null,"é\\n\\u001f"],"b":1,"€":0}'.encode()
    assert canonical_json(value) == expected


@pytest.mark.parametrize("value", [1.0, {"a": [0.5]}, 2**53, -(2**53)])
def test_canonical_json_refuses_floats_and_unsafe_integers(value: Any) -> None:
    with pytest.raises(InvalidInput):
        canonical_json(value)


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1,"a":2}',
        '{"x":{"a":1,"a":1}}',
        "1.0",
        '{"a":1e3}',
        '{"a":-0.0}',
        "[1E+2]",
        "NaN",
        '{"a":Infinity}',
        "[-Infinity]",
        '{"a":',
        b'"\xff"',
    ],
)
def test_strict_loads_refuses(text: str | bytes) -> None:
    with pytest.raises(InvalidInput):
        strict_loads(text)


def test_strict_loads_accepts_plain_json() -> None:
    assert strict_loads(b'{"a":[1,-2,"\\u00e9",true,null]}') == {"a": [1, -2, "é", True, None]}


@pytest.mark.parametrize("n", range(7))
def test_base64url_round_trip_is_unpadded(n: int) -> None:
    raw = bytes(range(250, 250 - n, -1))
    text = b64e(raw)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64d(text) == raw


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("AA==", "non-canonical"),
        ("AB", "non-canonical"),
        ("AAF", "non-canonical"),
        ("+/8", "non-canonical"),
        ("AA AA", "non-canonical"),
        ("AAAA\n", "non-canonical"),
        ("A", "malformed"),
        ("AAAAA", "malformed"),
    ],
)
def test_base64url_refuses_non_canonical_text(text: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        b64d(text)


def test_key_id_known_answer() -> None:
    raw = bytes(range(32))
    expected = sha256(b"exchange-v1/kid\x00ed25519\x00" + raw)[:8].hex()
    assert key_id("ed25519", raw) == VerifyKey(raw).kid == expected
    expected = sha256(b"exchange-v1/kid\x00x25519-hpke\x00" + raw)[:8].hex()
    assert key_id("x25519-hpke", raw) == EncryptionKey(raw).kid == expected


def test_signatures_are_domain_separated() -> None:
    key = signing_key("nl-customs")
    body = {"v": 1}
    assert signing_input("receipt", body) == b'exchange-v1/receipt\n{"v":1}'
    verify("receipt", body, sign("receipt", body, key), key.verify_key)
    with pytest.raises(BadSignature):
        verify("envelope", body, sign("receipt", body, key), key.verify_key)


# -- content.py --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sealed() -> tuple[SealedContent, bytes]:
    content = SealedContent(b"plaintext body", ReplayRandom([b"\x11" * 32, b"\x22" * 12]))
    return content, content.wrap(decryption_key("ke-customs").public, b"info")


def _open(content: SealedContent, wrap: bytes, **changes: Any) -> bytes:
    args: dict[str, Any] = {
        "wrapped_key": wrap,
        "info": b"info",
        "reader": decryption_key("ke-customs"),
        "key_commitment_": content.key_commitment,
        "nonce": content.nonce,
        "ciphertext": content.ciphertext,
    }
    return open_content(**{**args, **changes})


def test_content_good(sealed: tuple[SealedContent, bytes]) -> None:
    content, wrap = sealed
    assert content.nonce == b"\x22" * 12
    expected = sha256(b"exchange-v1/key-commit\x00" + b"\x11" * 32)
    assert content.key_commitment == key_commitment(b"\x11" * 32) == expected
    assert len(wrap) == 80
    assert _open(content, wrap) == b"plaintext body"


def _flip(data: bytes, i: int) -> bytes:
    out = bytearray(data)
    out[i] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize(
    "change",
    [
        lambda c, w: {"reader": decryption_key("nl-customs")},
        lambda c, w: {"reader": DecryptionKey(b"\x00" * 32)},
        lambda c, w: {"info": b"inf0"},
        lambda c, w: {"info": b""},
        lambda c, w: {"wrapped_key": _flip(w, 0)},
        lambda c, w: {"wrapped_key": _flip(w, 40)},
        lambda c, w: {"wrapped_key": _flip(w, 79)},
        lambda c, w: {"wrapped_key": w[:79]},
        lambda c, w: {"wrapped_key": b""},
        lambda c, w: {"ciphertext": _flip(c.ciphertext, 0)},
        lambda c, w: {"ciphertext": c.ciphertext[:-1]},
        lambda c, w: {"nonce": _flip(c.nonce, 0)},
        lambda c, w: {"nonce": c.nonce[:8]},
        lambda c, w: {"key_commitment_": _flip(c.key_commitment, 31)},
    ],
    ids=[
        "wrong-key",
        "zero-key",
        "wrong-info",
        "empty-info",
        "flip-enc",
        "flip-sealed",
        "flip-tag",
        "short-wrap",
        "empty-wrap",
        "flip-ciphertext",
        "short-ciphertext",
        "flip-nonce",
        "short-nonce",
        "flip-commitment",
    ],
)
def test_content_every_failure_is_the_same_decryption_failed(change: Any, sealed: tuple[SealedContent, bytes]) -> None:
    content, wrap = sealed
    with pytest.raises(DecryptionFailed) as caught:
        _open(content, wrap, **change(content, wrap))
    assert type(caught.value) is DecryptionFailed
    assert str(caught.value) == caught.value.detail == FAILED
