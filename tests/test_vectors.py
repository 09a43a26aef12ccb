"""The golden vectors in tests/vectors/ reproduce byte for byte from their fixed inputs.

Everything random in an envelope is fixed by the vector (keys, content key, nonce) except the
HPKE encapsulation, which `cryptography` draws internally: those wraps are taken from the file
and checked by opening them, with the library and with an independent RFC 9180 decapsulation.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from exchange import errors
from exchange.crypto import DecryptionKey, SigningKey, b64d, b64e, canonical_json, strict_loads
from exchange.crypto.content import open_content
from exchange.errors import ExchangeError
from exchange.model import Bulletin, EnvelopeHeader, NodeId, Receipt, Roster
from exchange.protocol.channel import ChannelState, event_hash, sign_acceptance, sign_event
from exchange.protocol.envelope import (
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
from exchange.protocol.signing import signing_input
from exchange.service.outbox import transaction_id
from tests.vectors import make_vectors
from tests.vectors.make_vectors import ENVELOPE_FILE, ReplayRandom, recorded_federation, recorded_state

RAW = ENVELOPE_FILE.read_text("utf-8")
V: dict[str, Any] = strict_loads(RAW)
INPUTS, OUTPUTS = V["inputs"], V["outputs"]


def signing_key(label: str) -> SigningKey:
    return SigningKey(b64d(INPUTS["test_keys"][label]["ed25519_private"]))


def decryption_key(label: str) -> DecryptionKey:
    return DecryptionKey(b64d(INPUTS["test_keys"][label]["x25519_private"]))


@pytest.fixture(scope="module")
def fed() -> Federation:
    return recorded_federation(OUTPUTS)


@pytest.fixture(scope="module")
def state(fed: Federation) -> ChannelState:
    return recorded_state(fed, OUTPUTS)


def rfc9180_open(wrap: bytes, secret: bytes, info: bytes) -> bytes:
    """Single-shot HPKE Open, base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, empty aad.

    Written from RFC 9180 sections 4, 5.1 and 7.1 and independent of `cryptography`'s HPKE.
    """

    def extract(salt: bytes, ikm: bytes) -> bytes:
        return hmac.new(salt, ikm, hashlib.sha256).digest()

    def expand(prk: bytes, info_: bytes, length: int) -> bytes:
        out, block, i = b"", b"", 1
        while len(out) < length:
            block = hmac.new(prk, block + info_ + bytes([i]), hashlib.sha256).digest()
            out, i = out + block, i + 1
        return out[:length]

    def labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
        return extract(salt, b"HPKE-v1" + suite + label + ikm)

    def labeled_expand(suite: bytes, prk: bytes, label: bytes, info_: bytes, length: int) -> bytes:
        return expand(prk, length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info_, length)

    enc, sealed = wrap[:32], wrap[32:]
    sk = x25519.X25519PrivateKey.from_private_bytes(secret)
    pk = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    dh = sk.exchange(x25519.X25519PublicKey.from_public_bytes(enc))
    kem = b"KEM" + (0x0020).to_bytes(2, "big")
    shared = labeled_expand(kem, labeled_extract(kem, b"", b"eae_prk", dh), b"shared_secret", enc + pk, 32)
    suite = b"HPKE" + (0x0020).to_bytes(2, "big") + (0x0001).to_bytes(2, "big") + (0x0002).to_bytes(2, "big")
    context = (
        b"\x00" + labeled_extract(suite, b"", b"psk_id_hash", b"") + labeled_extract(suite, b"", b"info_hash", info)
    )
    prk = labeled_extract(suite, shared, b"secret", b"")
    key = labeled_expand(suite, prk, b"key", context, 32)
    base_nonce = labeled_expand(suite, prk, b"base_nonce", context, 12)
    return AESGCM(key).decrypt(base_nonce, sealed, b"")


def test_the_generator_reproduces_the_file() -> None:
    assert make_vectors.render(make_vectors.build(make_vectors.load())) == RAW


def test_test_keys_are_the_labelled_seeds_and_give_the_roster_key_ids() -> None:
    nodes = {n["id"]: n for n in OUTPUTS["roster"]["signed"]["roster"]["nodes"]}
    for label, keys in INPUTS["test_keys"].items():
        seed = hashlib.sha256(b"exchange test vector " + keys["ed25519_seed_label"].encode()).digest()
        assert b64d(keys["ed25519_private"]) == seed
        if label == "authority":
            continue
        assert (
            b64d(keys["x25519_private"])
            == hashlib.sha256(b"exchange test vector " + keys["x25519_seed_label"].encode()).digest()
        )
        sk, dk = signing_key(label), decryption_key(label)
        entry = nodes[label]
        assert entry["signing_key"] == b64e(sk.verify_key.raw)
        assert entry["encryption_key"] == b64e(dk.public.raw)
        for alg, raw, kid in (
            ("ed25519", sk.verify_key.raw, entry["signing_kid"]),
            ("x25519-hpke", dk.public.raw, entry["encryption_kid"]),
        ):
            digest = hashlib.sha256(b"exchange-v1/kid\x00" + alg.encode() + b"\x00" + raw).digest()
            assert kid == digest[:8].hex()


def test_roster_signature_and_pins_reproduce(fed: Federation) -> None:
    authority = signing_key("authority")
    assert OUTPUTS["authority"] == {"public_key": b64e(authority.verify_key.raw), "kid": authority.kid}
    unsigned = OUTPUTS["roster"]["signed"]["roster"]
    roster = Roster.model_validate(unsigned)
    assert signing_input("roster", roster.model_dump(mode="json")).decode() == OUTPUTS["roster"]["signing_input"]
    assert sign_roster(roster, authority).model_dump(mode="json") == OUTPUTS["roster"]["signed"]
    for node, given in zip(roster.nodes, INPUTS["nodes"], strict=True):
        assert node.tls_cert == given["tls_cert"]
        spki = (
            x509.load_pem_x509_certificate(node.tls_cert.encode())
            .public_key()
            .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        )
        assert node.tls_pin == b64e(hashlib.sha256(spki).digest())
        assert fed.node_by_pin(node.tls_pin).id == node.id


def test_channel_log_signatures_and_hashes_reproduce(state: ChannelState) -> None:
    channel = INPUTS["channel"]
    owner = signing_key(channel["owner"])
    prev: str | None = None
    for pos, (step, recorded) in enumerate(zip(channel["steps"], OUTPUTS["channel_log"], strict=True)):
        if "accept" in step:
            node = step["accept"]
            assert prev is not None  # an acceptance answers an invitation: never the log's first event
            acceptance = sign_acceptance(channel["channel"], node, prev, signing_key(node))
            body = acceptance.model_dump(mode="json", exclude={"signature"})
            assert signing_input("channel-accept", body).decode() == recorded["acceptance_signing_input"]
            change = {"type": "accept", "acceptance": acceptance.model_dump(mode="json")}
        else:
            change = step["change"]
        event = sign_event(
            channel=channel["channel"],
            owner=channel["owner"],
            pos=pos,
            prev=prev,
            at=step["at"],
            change=change,
            key=owner,
        )
        assert event.model_dump(mode="json") == recorded["signed"]
        body = event.model_dump(mode="json", exclude={"signature"})
        assert signing_input("channel-event", body).decode() == recorded["signing_input"]
        prev = event_hash(event)
        assert prev == recorded["hash_hex"] == hashlib.sha256(canonical_json(recorded["signed"])).hexdigest()
    assert (state.pos, state.hash, state.readers) == (4, prev, ["gb-avsec", "ke-customs", "nl-customs"])
    assert {n: sorted(r) for n, r in state.members.items()} == {
        "gb-avsec": ["read"],
        "ke-customs": ["post", "read"],
        "nl-customs": ["admin", "post", "read"],
    }


def _rebuild(fed: Federation, state: ChannelState) -> Any:
    post = INPUTS["post"]
    draws = [b64d(d) for d in INPUTS["rng"]["draws"]]
    return build_envelope(
        Bulletin.model_validate(INPUTS["bulletin"]),
        state=state,
        author=NodeId(post["author"]),
        key=signing_key(post["author"]),
        seq=post["seq"],
        readers=[(n, fed.encryption_key(n)) for n in state.readers],
        created=post["created"],
        rng=ReplayRandom(draws),
    )


def test_header_bulletin_id_and_ciphertext_reproduce(fed: Federation, state: ChannelState) -> None:
    env = _rebuild(fed, state)
    content = OUTPUTS["content"]
    header_jcs = canonical_json(env.header.model_dump(mode="json"))
    assert header_jcs.decode() == OUTPUTS["header_jcs"]
    assert bulletin_id(env.header) == OUTPUTS["bulletin_id"] == hashlib.sha256(header_jcs).hexdigest()
    assert env.ciphertext == content["ciphertext"]
    payload = canonical_json(Bulletin.model_validate(INPUTS["bulletin"]).payload())
    assert payload.decode() == content["payload_jcs"]
    key, nonce = b64d(content["content_key"]), b64d(content["nonce"])
    assert [key, nonce] == [b64d(d) for d in INPUTS["rng"]["draws"]]
    assert AESGCM(key).decrypt(nonce, b64d(content["ciphertext"]), b"exchange-v1/body") == payload
    commitment = hashlib.sha256(b"exchange-v1/key-commit\x00" + key).digest()
    assert env.header.key_commitment == content["key_commitment"] == b64e(commitment)
    assert env.header.ciphertext_sha256 == b64e(hashlib.sha256(b64d(env.ciphertext)).digest())


def test_whole_envelope_reproduces_from_fixed_inputs_and_recorded_wraps(fed: Federation, state: ChannelState) -> None:
    header = EnvelopeHeader.model_validate(strict_loads(OUTPUTS["header_jcs"]))
    wraps = OUTPUTS["envelope"]["wraps"]
    env = sign_envelope(header, wraps, b64d(OUTPUTS["content"]["ciphertext"]), signing_key(INPUTS["post"]["author"]))
    assert envelope_bytes(env).decode() == OUTPUTS["envelope_jcs"]
    assert env.model_dump(mode="json") == OUTPUTS["envelope"]
    signed_body = {"header": header.model_dump(mode="json"), "wraps": wraps}
    assert signing_input("envelope", signed_body).decode() == OUTPUTS["envelope_signing_input"]
    assert verify_envelope(parse_envelope(OUTPUTS["envelope_jcs"].encode()), fed, state) == OUTPUTS["bulletin_id"]


def test_every_recorded_wrap_opens_for_its_recipient(fed: Federation, state: ChannelState) -> None:
    env = parse_envelope(OUTPUTS["envelope_jcs"].encode())
    bid = verify_envelope(env, fed, state)
    content_key = b64d(OUTPUTS["content"]["content_key"])
    bulletin = Bulletin.model_validate(INPUTS["bulletin"])
    assert len(env.wraps) == len(env.header.recipients) == len(OUTPUTS["wraps"]) == 3
    for recipient, wrap, detail in zip(env.header.recipients, env.wraps, OUTPUTS["wraps"], strict=True):
        key = decryption_key(recipient.node)
        info = b"exchange-v1/wrap\x00" + bytes.fromhex(bid) + b"\x00" + recipient.kid.encode("ascii")
        assert wrap_info(bid, recipient.kid) == info == bytes.fromhex(detail["info_hex"])
        assert b64d(wrap) == b64d(detail["enc"]) + b64d(detail["sealed_key"])
        assert len(b64d(wrap)) == 80
        assert rfc9180_open(b64d(wrap), key.private_bytes(), info) == content_key
        assert open_content(
            wrapped_key=b64d(wrap),
            info=info,
            reader=key,
            key_commitment_=b64d(env.header.key_commitment),
            nonce=b64d(env.header.nonce),
            ciphertext=b64d(env.ciphertext),
        ) == canonical_json(bulletin.payload())
        assert open_envelope(env, bid, NodeId(recipient.node), key) == bulletin


def test_receipt_reproduces(fed: Federation) -> None:
    given = INPUTS["receipt"]
    receipt = make_receipt(
        OUTPUTS["bulletin_id"], NodeId(given["node"]), given["status"], given["at"], signing_key(given["node"])
    )
    assert receipt.model_dump(mode="json") == OUTPUTS["receipt"]["signed"]
    body = receipt.model_dump(mode="json", exclude={"signature"})
    assert signing_input("receipt", body).decode() == OUTPUTS["receipt"]["signing_input"]
    verify_receipt(Receipt.model_validate(OUTPUTS["receipt"]["signed"]), fed)


def test_transaction_example() -> None:
    txn = OUTPUTS["transaction"]
    last = OUTPUTS["channel_log"][-1]["signed"]
    ids = [f"event:{last['channel']}:{last['pos']}", f"envelope:{OUTPUTS['bulletin_id']}"]
    assert txn["request"] == {"txn": transaction_id(ids), "events": [last], "envelopes": [OUTPUTS["envelope"]]}
    assert txn["response"] == {"txn": txn["request"]["txn"], "receipts": [OUTPUTS["receipt"]["signed"]]}


def receive(wire: bytes, fed: Federation, state: ChannelState, me: str = "ke-customs") -> Bulletin:
    """What a receiving node does with one envelope, in order."""
    env = parse_envelope(wire)
    bid = verify_envelope(env, fed, state)
    return open_envelope(env, bid, NodeId(me), decryption_key(me))


@pytest.mark.parametrize("case", OUTPUTS["negatives"], ids=lambda c: c["name"])
def test_negative_vectors_fail_with_the_recorded_error(
    case: dict[str, Any], fed: Federation, state: ChannelState
) -> None:
    with pytest.raises(ExchangeError) as caught:
        receive(case["envelope_jcs"].encode(), fed, state)
    assert type(caught.value) is getattr(errors, case["error"])


@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_flipping_any_byte_of_the_wire_envelope_is_refused(mask: int, fed: Federation, state: ChannelState) -> None:
    wire = OUTPUTS["envelope_jcs"].encode()
    assert receive(wire, fed, state) == Bulletin.model_validate(INPUTS["bulletin"])
    accepted = []
    for i in range(len(wire)):
        mutated = bytearray(wire)
        mutated[i] ^= mask
        try:
            receive(bytes(mutated), fed, state)
        except ExchangeError:
            continue
        accepted.append(i)
    assert accepted == []
