"""Envelope v2 with channel epoch keys (docs/protocol.md, 15): the golden vectors byte for byte, then
each property from the attacker's side, at the level of the protocol core (no node, no storage).

HPKE draws its randomness inside `cryptography`, so wraps are taken from the file and checked by
opening them with the fixed keys (the X25519 ones also with the independent RFC 9180 code of
tests/test_vectors.py); everything else is rebuilt and compared byte for byte.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from exchange import errors
from exchange.crypto import (
    EpochKey,
    HybridDecryptionKey,
    b64d,
    b64e,
    canonical_json,
    epoch as crypto_epoch,
    hybrid_supported,
    strict_loads,
)
from exchange.crypto.epoch import BULLETIN_AAD, SUITE_X25519, SUITE_XWING, WRAP_SIZES, bulletin_info, unwrap_epoch_key
from exchange.model import Bulletin, NodeId
from exchange.protocol.channel import ChannelState, apply_event, sign_event
from exchange.protocol.envelope_v2 import (
    build_envelope_v2,
    bulletin_key,
    envelope_v2_bytes,
    open_envelope_v2,
    parse_envelope_v2,
    readers_steady,
    sign_envelope_v2,
    verify_envelope_v2,
)
from exchange.protocol.epoch import (
    WrapKeyId,
    epoch_hash,
    make_epoch,
    make_grant,
    open_epoch,
    open_grant,
    parse_epoch,
    parse_grant,
    sign_epoch,
    sign_grant,
    verify_epoch,
    verify_grant,
)
from exchange.protocol.epoch_model import EnvelopeV2, EpochRecord
from exchange.protocol.roster import Federation
from tests.test_vectors import rfc9180_open
from tests.vectors import make_envelope_v2_vectors as gen
from tests.vectors.make_vectors import (
    BULLETIN,
    ReplayRandom,
    decryption_key,
    load,
    recorded_federation,
    render,
    signing_key,
)

RAW = gen.FILE.read_text("utf-8")
V: dict[str, Any] = strict_loads(RAW)
INPUTS, OUTPUTS = V["inputs"], V["outputs"]
V1 = load()
FED = recorded_federation(V1["outputs"]) if V1 else None
DRAWS = [b64d(d) for d in INPUTS["rng"]["draws"]]  # epoch key 0, salt A, epoch key 1, salt B


@pytest.fixture(scope="module")
def fed() -> Federation:
    assert FED is not None
    return FED


@pytest.fixture(scope="module")
def states(fed: Federation) -> list[ChannelState]:
    assert V1 is not None
    return gen.states(fed, V1)[0]


@pytest.fixture(scope="module")
def ids(fed: Federation) -> dict[str, WrapKeyId]:
    return gen.wrap_key_ids(fed)


def epochs() -> list[EpochRecord]:
    return [EpochRecord.model_validate(e["record"]) for e in OUTPUTS["epochs"]]


def envelope(i: int) -> EnvelopeV2:
    return EnvelopeV2.model_validate(OUTPUTS["bulletins"][i]["envelope"])


def test_hybrid_support_is_detected_here() -> None:
    assert hybrid_supported(), "the pinned cryptography should do ML-KEM-768 + X25519 HPKE"


def test_the_generator_reproduces_the_file() -> None:
    assert V1 is not None
    assert render(gen.build(V, V1)) == RAW


def test_grant_event_and_hybrid_key_reproduce(states: list[ChannelState]) -> None:
    assert OUTPUTS["grant_event"]["hash_hex"] == states[5].hash
    for node, spec in INPUTS["hybrid_keys"].items():
        key = HybridDecryptionKey(hashlib.sha256(b"exchange test vector " + spec["seed_label"].encode()).digest())
        assert (b64e(key.private_bytes()), b64e(key.public.raw), key.kid) == (
            spec["seed"],
            spec["public_key"],
            spec["kid"],
        )
        assert len(key.public.raw) == 1216 and INPUTS["wrap_keys"][node] == {"suite": SUITE_XWING, "kid": key.kid}


@pytest.mark.parametrize("n", [0, 1])
def test_epoch_records_reproduce_from_fixed_inputs_and_recorded_wraps(
    n: int, fed: Federation, states: list[ChannelState]
) -> None:
    out, spec = OUTPUTS["epochs"][n], INPUTS["epochs"][n]
    state = states[spec["state_pos"]]
    key = EpochKey(DRAWS[2 * n])
    assert b64e(key.secret_bytes()) == out["epoch_key"]
    assert (
        b64e(key.commitment)
        == out["commitment"]
        == b64e(hashlib.sha256(b"exchange-v2/epoch-commit\x00" + key.secret_bytes()).digest())
    )
    # make_epoch with the recorded draw gives the record but for the wraps, which HPKE draws itself.
    prev = epochs()[n - 1] if n else None
    fresh, fresh_key = make_epoch(
        state,
        n=n,
        prev=prev,
        keys=gen.wrap_keys(fed),
        owner_key=signing_key("nl-customs"),
        created=spec["created"],
        rng=ReplayRandom([DRAWS[2 * n]]),
    )
    assert fresh_key.secret_bytes() == key.secret_bytes()
    body = fresh.model_dump(mode="json", exclude={"signer", "signature"})
    body["wraps"] = out["record"]["wraps"]
    record = sign_epoch(body, signing_key("nl-customs"))
    assert record.model_dump(mode="json") == out["record"]
    assert envelope_jcs(record) == out["jcs"].encode() and epoch_hash(record) == out["hash_hex"]
    for w, info_hex, fresh_wrap in zip(record.wraps, out["wrap_info_hex"], fresh.wraps, strict=True):
        info = bytes.fromhex(info_hex)
        assert len(b64d(w.wrap)) == WRAP_SIZES[w.suite]
        for wrap in (w.wrap, fresh_wrap.wrap):  # the recorded wrap and the fresh one both open
            assert (
                unwrap_epoch_key(b64d(wrap), info, gen.unwrap_key(w.node), key.commitment).secret_bytes()
                == key.secret_bytes()
            )
        if w.suite == SUITE_X25519:
            secret = decryption_key(w.node).private_bytes()
            assert rfc9180_open(b64d(w.wrap), secret, info) == key.secret_bytes()


def envelope_jcs(record: EpochRecord) -> bytes:
    return canonical_json(record.model_dump(mode="json"))


def _hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869, written out: the bulletin key is plain HKDF-SHA256."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out, i = out + block, i + 1
    return out[:length]


@pytest.mark.parametrize("i", [0, 1])
def test_bulletins_reproduce_byte_for_byte(i: int, states: list[ChannelState]) -> None:
    out, post = OUTPUTS["bulletins"][i], INPUTS["posts"][i]
    epoch_key, salt = EpochKey(DRAWS[2 * i]), DRAWS[2 * i + 1]
    record = epochs()[i]
    info = (
        b"exchange-v2/bulletin-key\x00"
        + bytes.fromhex(epoch_hash(record))
        + post["author"].encode()
        + b"\x00"
        + post["seq"].to_bytes(8, "big")
    )
    assert info.hex() == out["info_hex"]
    okm = _hkdf(epoch_key.secret_bytes(), salt, info, 44)
    assert (b64e(okm), b64e(okm[:32]), b64e(okm[32:])) == (out["okm"], out["bulletin_key"], out["nonce"])
    bulletin = Bulletin.model_validate(post["bulletin"])
    assert bulletin.payload_bytes == out["payload_jcs"].encode()
    assert b64e(AESGCM(okm[:32]).encrypt(okm[32:], bulletin.payload_bytes, BULLETIN_AAD)) == out["ciphertext"]
    env = build_envelope_v2(
        bulletin,
        state=states[post["state_pos"]],
        epoch=record,
        epoch_key=epoch_key,
        author=NodeId(post["author"]),
        key=signing_key(post["author"]),
        seq=post["seq"],
        created=post["created"],
        rng=ReplayRandom([salt]),
    )
    assert env.header.canonical == out["header_jcs"].encode()
    assert hashlib.sha256(env.header.canonical).hexdigest() == out["bulletin_id"]
    assert envelope_v2_bytes(env) == out["envelope_jcs"].encode()
    assert env.model_dump(mode="json") == out["envelope"]
    assert (
        out["envelope_signing_input"].encode()
        == b"exchange-v1/envelope-v2\n" + b'{"header":' + env.header.canonical + b"}"
    )


def test_grant_reproduces_and_opens_for_the_grantee(
    fed: Federation, states: list[ChannelState], ids: dict[str, WrapKeyId]
) -> None:
    out = OUTPUTS["grant"]
    grant = parse_grant(out["jcs"].encode())
    body = grant.model_dump(mode="json", exclude={"signer", "signature"})
    assert sign_grant(body, signing_key("nl-customs")).model_dump(mode="json") == out["signed"]
    held = dict(enumerate(epochs()))
    verify_grant(grant, fed, states[5], ids, held)
    keys = open_grant(grant, held, "gb-avsec", decryption_key("gb-avsec"))
    assert keys[0].secret_bytes() == DRAWS[0]
    info = bytes.fromhex(out["wrap_info_hex"][0])
    assert rfc9180_open(b64d(grant.epochs[0].wrap), decryption_key("gb-avsec").private_bytes(), info) == DRAWS[0]


def test_a_receiver_accepts_the_vectors_and_every_reader_opens(
    fed: Federation, states: list[ChannelState], ids: dict[str, WrapKeyId]
) -> None:
    records = epochs()
    for n, record in enumerate(records):
        parsed = parse_epoch(OUTPUTS["epochs"][n]["jcs"].encode())
        assert verify_epoch(parsed, fed, states[record.state.pos], ids, records[n - 1] if n else None) == epoch_hash(
            record
        )
    for i, post in enumerate(INPUTS["posts"]):
        env = parse_envelope_v2(OUTPUTS["bulletins"][i]["envelope_jcs"].encode())
        nxt = records[i + 1] if i + 1 < len(records) else None
        assert (
            verify_envelope_v2(env, fed, states[post["state_pos"]], records[i], ids, nxt)
            == OUTPUTS["bulletins"][i]["bulletin_id"]
        )
        for w in records[i].wraps:
            assert open_envelope_v2(
                env, open_epoch(records[i], w.node, gen.unwrap_key(w.node))
            ) == Bulletin.model_validate(post["bulletin"])


@pytest.mark.parametrize("neg", OUTPUTS["negatives"], ids=lambda n: f"{n['kind']}-{n['name']}")
def test_negative_vectors_fail_with_the_recorded_error(
    neg: dict[str, Any], fed: Federation, states: list[ChannelState], ids: dict[str, WrapKeyId]
) -> None:
    records, ctx = epochs(), neg["context"]
    with pytest.raises(getattr(errors, neg["error"])) as caught:
        if neg["kind"] == "envelope":
            n = ctx["epoch_n"]
            nxt = records[n + 1] if n + 1 < len(records) else None
            verify_envelope_v2(parse_envelope_v2(neg["object"]), fed, states[ctx["state_pos"]], records[n], ids, nxt)
        elif neg["kind"] == "epoch":
            verify_epoch(parse_epoch(neg["object"]), fed, states[ctx["state_pos"]], ids, records[ctx["prev_n"]])
        else:
            verify_grant(parse_grant(neg["object"]), fed, states[ctx["state_pos"]], ids, dict(enumerate(records)))
    assert type(caught.value).__name__ == neg["error"]


def test_flipping_any_byte_of_the_wire_envelope_is_refused(
    fed: Federation, states: list[ChannelState], ids: dict[str, WrapKeyId]
) -> None:
    wire = OUTPUTS["bulletins"][1]["envelope_jcs"].encode()
    record, key = epochs()[1], EpochKey(DRAWS[2])
    for i in range(len(wire)):
        altered = bytearray(wire)
        altered[i] ^= 0x01
        with pytest.raises(errors.ExchangeError):  # an altered author id is UnknownPeer, the rest InvalidInput
            env = parse_envelope_v2(bytes(altered))
            verify_envelope_v2(env, fed, states[5], record, ids)
            open_envelope_v2(env, key)


# -- the properties, from the attacker's side ---------------------------------------------------


def _event(fed: Federation, state: ChannelState, change: dict[str, Any]) -> ChannelState:
    event = sign_event(
        channel=state.channel,
        owner=state.owner,
        pos=state.pos + 1,
        prev=state.hash,
        at="2025-04-01T00:00:00.000Z",
        change=change,
        key=signing_key(state.owner),
    )
    return apply_event(state, event, fed)


def _post(state: ChannelState, record: EpochRecord, key: EpochKey, seq: int, title: str = "Alert") -> EnvelopeV2:
    bulletin = Bulletin.model_validate({**BULLETIN, "title": title})
    return build_envelope_v2(
        bulletin,
        state=state,
        epoch=record,
        epoch_key=key,
        author=NodeId("nl-customs"),
        key=signing_key("nl-customs"),
        seq=seq,
        created="2025-04-01T00:00:01.000Z",
    )


def _rekey(fed: Federation, state: ChannelState, prev: EpochRecord) -> tuple[EpochRecord, EpochKey]:
    return make_epoch(
        state,
        n=prev.n + 1,
        prev=prev,
        keys=gen.wrap_keys(fed),
        owner_key=signing_key("nl-customs"),
        created="2025-04-01T00:00:00.500Z",
    )


def test_a_removed_reader_cannot_open_anything_under_a_later_state(
    fed: Federation, states: list[ChannelState], ids: dict[str, WrapKeyId]
) -> None:
    records = epochs()
    removed = _event(fed, states[5], {"type": "remove", "node": "gb-avsec"})
    record2, key2 = _rekey(fed, removed, records[1])
    verify_epoch(record2, fed, removed, ids, records[1])
    assert "gb-avsec" not in record2.readers
    env = _post(removed, record2, key2, seq=3)
    verify_envelope_v2(env, fed, removed, record2, ids)
    gb = decryption_key("gb-avsec")
    with pytest.raises(errors.DecryptionFailed):
        open_epoch(record2, "gb-avsec", gb)
    # Every epoch key gb-avsec ever held: epoch 1 as a reader, epoch 0 by its grant.
    held = [
        open_epoch(records[1], "gb-avsec", gb),
        *open_grant(parse_grant(OUTPUTS["grant"]["signed"]), dict(enumerate(records)), "gb-avsec", gb).values(),
    ]
    for key in held:
        with pytest.raises(errors.DecryptionFailed, match=r"^the envelope could not be decrypted$"):
            open_envelope_v2(env, key)
    # An author cannot keep using the epoch that still wraps for gb-avsec, nor forge a citation of it.
    with pytest.raises(errors.StaleEpoch):
        _post(removed, records[1], EpochKey(DRAWS[2]), seq=3)
    stale = EnvelopeV2.model_validate(_post(states[5], records[1], EpochKey(DRAWS[2]), seq=3).model_dump(mode="json"))
    header = stale.header.model_copy(update={"state": env.header.state})
    header.__dict__.pop("canonical", None)
    forged = sign_envelope_v2(header, b64d(stale.ciphertext), signing_key("nl-customs"))
    with pytest.raises(errors.StaleEpoch):
        verify_envelope_v2(forged, fed, removed, records[1], ids, record2)


def test_a_joiner_cannot_open_earlier_epochs_without_a_grant(
    fed: Federation, states: list[ChannelState], ids: dict[str, WrapKeyId]
) -> None:
    records, gb = epochs(), decryption_key("gb-avsec")
    earlier = envelope(0)  # bulletin A, under epoch 0, before gb-avsec joined; gb-avsec obtained it anyway
    verify_envelope_v2(earlier, fed, states[2], records[0], ids, records[1])
    with pytest.raises(errors.DecryptionFailed):
        open_epoch(records[0], "gb-avsec", gb)
    with pytest.raises(errors.DecryptionFailed):
        open_envelope_v2(earlier, open_epoch(records[1], "gb-avsec", gb))
    # A grant is refused before grant-history, and another member's grant does not open for it.
    grant = parse_grant(OUTPUTS["grant"]["signed"])
    with pytest.raises(errors.EpochInvalid):
        verify_grant(grant, fed, states[4], ids, dict(enumerate(records)))
    for_ke = make_grant(
        states[5],
        node="ke-customs",
        key=fed.encryption_key("ke-customs"),
        epochs=[(records[0], EpochKey(DRAWS[0]))],
        owner_key=signing_key("nl-customs"),
        created="2025-04-01T00:00:00.000Z",
    )
    with pytest.raises(errors.DecryptionFailed):
        open_grant(for_ke, dict(enumerate(records)), "gb-avsec", gb)
    keys = open_grant(grant, dict(enumerate(records)), "gb-avsec", gb)
    assert open_envelope_v2(earlier, keys[0]).title == INPUTS["posts"][0]["bulletin"]["title"]


def test_one_bulletin_key_reveals_no_other(states: list[ChannelState]) -> None:
    record, key = epochs()[1], EpochKey(DRAWS[2])
    first, second = (
        _post(states[5], record, key, seq=3, title="First"),
        _post(states[5], record, key, seq=4, title="Second"),
    )
    k1, k2 = bulletin_key(first.header, key), bulletin_key(second.header, key)
    assert k1.open(b64d(first.ciphertext)) and k2.open(b64d(second.ciphertext))
    with pytest.raises(errors.DecryptionFailed):
        k1.open(b64d(second.ciphertext))
    # The same (author, seq) again, under a fresh salt, still gets a key of its own.
    again = _post(states[5], record, key, seq=3, title="First")
    with pytest.raises(errors.DecryptionFailed):
        k1.open(b64d(again.ciphertext))
    # The raw keys: distinct, and none is the epoch key (HKDF is one-way: K_b does not give E back).
    raw = [
        key.bulletin_okm(b64d(env.header.salt), bulletin_info(bytes.fromhex(env.header.epoch.hash), "nl-customs", s))[
            :32
        ]
        for env, s in ((first, 3), (second, 4), (again, 3))
    ]
    assert len({*raw, key.secret_bytes()}) == 4


def test_tampered_epoch_record_or_cited_epoch_is_refused(
    fed: Federation, states: list[ChannelState], ids: dict[str, WrapKeyId]
) -> None:
    records = epochs()
    env = envelope(1)
    # The owner re-keys for the same state (a reader's key changed): the old epoch is stale for it.
    same_state, _ = _rekey(fed, states[5], records[1])
    with pytest.raises(errors.StaleEpoch):
        verify_envelope_v2(env, fed, states[5], records[1], ids, same_state)
    # A different record under the envelope's epoch number (an owner equivocating) is not the one cited.
    other, _ = make_epoch(
        states[4],
        n=1,
        prev=records[0],
        keys=gen.wrap_keys(fed),
        owner_key=signing_key("nl-customs"),
        created="2025-03-01T12:09:30.000Z",
    )
    with pytest.raises(errors.InvalidEnvelope, match="cites an epoch other"):
        verify_envelope_v2(env, fed, states[5], other, ids)
    # A reader whose roster key changed since the epoch: the epoch no longer fits the state.
    rotated = {**ids, "gb-avsec": WrapKeyId(SUITE_X25519, "0" * 16)}
    with pytest.raises(errors.StaleEpoch):
        verify_envelope_v2(env, fed, states[5], records[1], rotated)
    # A wrap altered after signing, or opened with another kid, fails with one message.
    body = copy.deepcopy(records[1].model_dump(mode="json"))
    wrap = bytearray(b64d(body["wraps"][0]["wrap"]))
    wrap[-1] ^= 1
    body["wraps"][0]["wrap"] = b64e(bytes(wrap))
    with pytest.raises(errors.BadSignature):
        verify_epoch(parse_epoch(body), fed, states[4], ids, records[0])
    resigned = sign_epoch(
        {k: v for k, v in body.items() if k not in ("signer", "signature")}, signing_key("nl-customs")
    )
    with pytest.raises(errors.DecryptionFailed, match=r"^the envelope could not be decrypted$"):
        open_epoch(resigned, "gb-avsec", decryption_key("gb-avsec"))


def test_hybrid_and_x25519_wraps_both_open() -> None:
    record = epochs()[1]
    suites = {w.node: w.suite for w in record.wraps}
    assert suites == {"gb-avsec": SUITE_X25519, "ke-customs": SUITE_XWING, "nl-customs": SUITE_X25519}
    assert {len(b64d(w.wrap)) for w in record.wraps} == {80, 1168}
    for w in record.wraps:
        assert open_epoch(record, w.node, gen.unwrap_key(w.node)).secret_bytes() == DRAWS[2]
    # ke-customs' X25519 key is not the key its epoch wrap is for: refused, not downgraded.
    with pytest.raises(errors.DecryptionFailed):
        open_epoch(record, "ke-customs", decryption_key("ke-customs"))


def test_missing_hybrid_support_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    public = gen.hybrid_key("ke-customs").public
    monkeypatch.setattr(crypto_epoch, "hybrid_supported", lambda: False)
    with pytest.raises(errors.SuiteUnsupported, match=r"cryptography \S+ cannot do HPKE with ML-KEM-768 \+ X25519"):
        HybridDecryptionKey(bytes(32))
    with pytest.raises(errors.SuiteUnsupported):
        EpochKey(bytes(32)).wrap(public, b"")


def test_wrong_epoch_key_commitment_is_refused_by_the_author(states: list[ChannelState]) -> None:
    with pytest.raises(errors.StaleEpoch, match="commits to"):
        _post(states[5], epochs()[1], EpochKey(DRAWS[0]), seq=3)


def test_an_epoch_missed_is_caught_up_from_any_member(
    fed: Federation, states: list[ChannelState], ids: dict[str, WrapKeyId]
) -> None:
    records = epochs()
    # Served by ke-customs rather than the owner: the owner's signature is what counts.
    served = parse_epoch(OUTPUTS["epochs"][1]["jcs"].encode())
    assert verify_epoch(served, fed, states[4], ids, records[0]) == epoch_hash(records[1])
    # A node that holds no epoch yet must fetch from epoch 0: a later one alone does not chain.
    with pytest.raises(errors.EpochInvalid, match="first epoch"):
        verify_epoch(served, fed, states[4], ids, None)
    # An epoch record checked against another state than the one it cites is refused.
    with pytest.raises(errors.EpochInvalid):
        verify_epoch(served, fed, states[5], ids, records[0])


def test_an_author_takes_an_epoch_only_if_the_readers_held_steady_since_it_was_made(
    states: list[ChannelState],
) -> None:
    """Rule 10 judges the cited state alone; an author also asks that no state between the epoch's
    and the cited one had other readers (`readers_steady`, 15.8, after the rule)."""
    first, second = epochs()
    assert readers_steady(first, states[3:3]) and readers_steady(first, states[3:4])  # none, or the same
    assert not readers_steady(first, states[3:5])  # gb-avsec joined at state 4
    assert readers_steady(second, states[5:6])
