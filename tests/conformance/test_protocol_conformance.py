"""envelope-v1.json and receipt-v2.json checked from docs/protocol.md alone (no `exchange` import):
key ids and pins (3), signing inputs (5), the roster (6), the channel log (7), the envelope with
its payload, encryption, commitment and HPKE wraps (8, 9), receipts v1 and v2 (10), and every
negative refused by the small receiver written here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.conformance.kit import (
    Refused,
    b64url,
    b64url_decode,
    jcs,
    leaf,
    load,
    mth,
    path,
    raw_public,
    roster_keys,
    seed_key,
    verify_ed25519,
    verify_inclusion,
)

E: dict[str, Any] = load("envelope-v1.json")
R: dict[str, Any] = load("receipt-v2.json")
SIGNED_ROSTER = E["outputs"]["roster"]["signed"]
ROSTER = {n["id"]: n for n in SIGNED_ROSTER["roster"]["nodes"]}
KEYS = roster_keys(SIGNED_ROSTER)
BODY_AAD = b"exchange-v1/body"
HEADER = {"author", "channel", "ciphertext_sha256", "created", "handling", "key_commitment", "nonce", "recipients"}
HEADER |= {"seq", "signer", "state", "suite", "v"}
RECEIPT_V1 = {"at", "bulletin", "node", "signature", "signer", "status", "v"}
RECEIPT_V2 = RECEIPT_V1 | {"index", "proof", "root", "size"}


def signing_input(domain: str, body: Any) -> bytes:
    """protocol.md 5."""
    return b"exchange-v1/" + domain.encode() + b"\n" + jcs(body)


def kid(alg: str, raw: bytes) -> str:
    """protocol.md 3."""
    return hashlib.sha256(b"exchange-v1/kid\x00" + alg.encode() + b"\x00" + raw).digest()[:8].hex()


def strict_loads(text: str) -> Any:
    """protocol.md 2.3: no duplicate names, no fractions or exponents, no NaN or Infinity."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in items}) != len(items):
            raise Refused("duplicate member")
        return dict(items)

    def refuse(value: str) -> Any:
        raise Refused(f"not an integer: {value}")

    return json.loads(text, object_pairs_hook=pairs, parse_float=refuse, parse_constant=refuse)


def hpke_open(wrap: bytes, secret: bytes, info: bytes) -> bytes:
    """RFC 9180 single-shot Open, base mode, KEM 0x0020, KDF 0x0001, AEAD 0x0002, empty aad."""

    def extract(salt: bytes, suite: bytes, label: bytes, ikm: bytes) -> bytes:
        return hmac.new(salt or bytes(32), b"HPKE-v1" + suite + label + ikm, hashlib.sha256).digest()

    def expand(prk: bytes, suite: bytes, label: bytes, info_: bytes, length: int) -> bytes:
        labeled, out, block, i = length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info_, b"", b"", 1
        while len(out) < length:
            block = hmac.new(prk, block + labeled + bytes([i]), hashlib.sha256).digest()
            out, i = out + block, i + 1
        return out[:length]

    enc, ct = wrap[:32], wrap[32:]
    sk = X25519PrivateKey.from_private_bytes(secret)
    kem = b"KEM\x00\x20"
    dh = sk.exchange(X25519PublicKey.from_public_bytes(enc))
    pk = sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    shared = expand(extract(b"", kem, b"eae_prk", dh), kem, b"shared_secret", enc + pk, 32)
    suite = b"HPKE\x00\x20\x00\x01\x00\x02"
    context = b"\x00" + extract(b"", suite, b"psk_id_hash", b"") + extract(b"", suite, b"info_hash", info)
    secret_ = extract(shared, suite, b"secret", b"")
    key, nonce = expand(secret_, suite, b"key", context, 32), expand(secret_, suite, b"base_nonce", context, 12)
    return AESGCM(key).decrypt(nonce, ct, b"")


def test_roster_keys_kids_and_pins() -> None:
    assert b64url(raw_public(seed_key("authority/ed25519"))) == E["outputs"]["authority"]["public_key"]
    for node_id, node in ROSTER.items():
        sk = seed_key(f"{node_id}/ed25519")
        assert b64url(raw_public(sk)) == node["signing_key"]
        assert kid("ed25519", raw_public(sk)) == node["signing_kid"]
        x = X25519PrivateKey.from_private_bytes(
            hashlib.sha256(f"exchange test vector {node_id}/x25519".encode()).digest()
        )
        x_raw = x.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        assert (b64url(x_raw), kid("x25519-hpke", x_raw)) == (node["encryption_key"], node["encryption_kid"])
        spki = x509.load_pem_x509_certificate(node["tls_cert"].encode()).public_key()
        assert (
            b64url(hashlib.sha256(spki.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).digest())
            == (node["tls_pin"])
        )
    assert E["outputs"]["roster"]["signing_input"] == signing_input("roster", SIGNED_ROSTER["roster"]).decode()


def test_channel_log() -> None:
    prev = None
    for logged in E["outputs"]["channel_log"]:
        event = logged["signed"]
        body = {k: v for k, v in event.items() if k != "signature"}
        assert logged["signing_input"] == signing_input("channel-event", body).decode()
        verify_ed25519(KEYS[event["owner"]], b64url_decode(event["signature"]), signing_input("channel-event", body))
        assert event["prev"] == prev and event["signer"] == ROSTER[event["owner"]]["signing_kid"]
        prev = hashlib.sha256(jcs(event)).hexdigest()
        assert logged["hash_hex"] == prev
        if event["change"]["type"] == "accept":
            acc = event["change"]["acceptance"]
            acc_body = {k: v for k, v in acc.items() if k != "signature"}
            assert logged["acceptance_signing_input"] == signing_input("channel-accept", acc_body).decode()
            verify_ed25519(
                KEYS[acc["node"]], b64url_decode(acc["signature"]), signing_input("channel-accept", acc_body)
            )


def test_envelope_content_wraps_and_signature() -> None:
    out, content = E["outputs"], E["outputs"]["content"]
    key, nonce = b64url_decode(content["content_key"]), b64url_decode(content["nonce"])
    assert [content["content_key"], content["nonce"]] == E["inputs"]["rng"]["draws"]
    assert key == hashlib.sha256(b"exchange test vector rng/0").digest()
    assert nonce == hashlib.sha256(b"exchange test vector rng/1").digest()[:12]
    payload = content["payload_jcs"].encode()
    bulletin = {k: v for k, v in E["inputs"]["bulletin"].items() if k != "handling"}
    assert jcs({"attachments": [], **bulletin}) == payload  # every member, defaults included (8.2)
    ciphertext = AESGCM(key).encrypt(nonce, payload, BODY_AAD)
    assert b64url(ciphertext) == content["ciphertext"] == out["envelope"]["ciphertext"]
    assert b64url(hashlib.sha256(b"exchange-v1/key-commit\x00" + key).digest()) == content["key_commitment"]
    header = out["envelope"]["header"]
    assert jcs(header).decode() == out["header_jcs"] and set(header) == HEADER
    assert hashlib.sha256(out["header_jcs"].encode()).hexdigest() == out["bulletin_id"]
    assert header["ciphertext_sha256"] == b64url(hashlib.sha256(ciphertext).digest())
    for recipient, wrap, logged in zip(header["recipients"], out["envelope"]["wraps"], out["wraps"], strict=True):
        info = b"exchange-v1/wrap\x00" + bytes.fromhex(out["bulletin_id"]) + b"\x00" + recipient["kid"].encode()
        assert info.hex() == logged["info_hex"] and wrap == b64url(
            b64url_decode(logged["enc"]) + b64url_decode(logged["sealed_key"])
        )
        secret = hashlib.sha256(f"exchange test vector {recipient['node']}/x25519".encode()).digest()
        assert hpke_open(b64url_decode(wrap), secret, info) == key
    receive(out["envelope_jcs"])
    assert jcs(out["envelope"]).decode() == out["envelope_jcs"]
    body = {"header": header, "wraps": out["envelope"]["wraps"]}
    assert signing_input("envelope", body).decode() == out["envelope_signing_input"]
    assert out["transaction"]["request"]["envelopes"] == [out["envelope"]]
    assert out["transaction"]["response"]["receipts"] == [out["receipt"]["signed"]]


def receive(text: str) -> None:
    """The checks of protocol.md 9.8 that need no channel state and no decryption (steps 1, 4, 11-14)."""
    env = strict_loads(text)
    if set(env) != {"ciphertext", "header", "signature", "wraps"} or set(env["header"]) != HEADER:
        raise Refused("members are exact")
    h = env["header"]
    if h["signer"] != ROSTER[h["author"]]["signing_kid"]:
        raise Refused("not the author's roster key")
    body = signing_input("envelope", {"header": h, "wraps": env["wraps"]})
    verify_ed25519(KEYS[h["author"]], b64url_decode(env["signature"]), body)
    if len(env["wraps"]) != len(h["recipients"]) or any(len(b64url_decode(w)) != 80 for w in env["wraps"]):
        raise Refused("one 80-byte wrap per recipient")
    if b64url(hashlib.sha256(b64url_decode(env["ciphertext"])).digest()) != h["ciphertext_sha256"]:
        raise Refused("the ciphertext does not match its hash")


@pytest.mark.parametrize("negative", E["outputs"]["negatives"], ids=[n["name"] for n in E["outputs"]["negatives"]])
def test_envelope_negatives_are_refused(negative: dict[str, Any]) -> None:
    with pytest.raises(Refused):
        receive(negative["envelope_jcs"])


def verify_receipt(r: dict[str, Any]) -> None:
    """protocol.md 10.3."""
    v2 = r.get("v") == 2
    if set(r) != (RECEIPT_V2 if v2 else RECEIPT_V1):
        raise Refused("members are exact")
    if v2 and not (0 <= r["index"] < r["size"] <= 65536 and len(r["proof"]) <= 16):
        raise Refused("index, size or proof out of bounds")
    if r["node"] not in ROSTER or r["signer"] != ROSTER[r["node"]]["signing_kid"]:
        raise Refused("unknown node or not its roster key")
    signature = b64url_decode(r["signature"])
    if not v2:
        body = {k: v for k, v in r.items() if k != "signature"}
        verify_ed25519(KEYS[r["node"]], signature, signing_input("receipt", body))
        return
    proof = [b64url_decode(h) for h in r["proof"]]
    verify_inclusion(leaf(bytes.fromhex(r["bulletin"])), r["index"], r["size"], proof, b64url_decode(r["root"]))
    statement = {k: r[k] for k in ("v", "node", "status", "at", "signer", "size", "root")}
    verify_ed25519(KEYS[r["node"]], signature, signing_input("receipt-batch", statement))


def test_receipts() -> None:
    out = R["outputs"]
    v1_body = {k: v for k, v in out["v1"]["signed"].items() if k != "signature"}
    assert out["v1"]["signing_input"] == signing_input("receipt", v1_body).decode()
    verify_receipt(out["v1"]["signed"])
    for batch in (out["batch"], out["single"]):
        leaves = [leaf(bytes.fromhex(b)) for b in batch["bulletins"]]
        assert [b64url(h) for h in leaves] == batch["leaf_hashes"] and b64url(mth(leaves)) == batch["root"]
        assert batch["statement_signing_input"] == signing_input("receipt-batch", batch["statement"]).decode()
        for i, receipt in enumerate(batch["receipts"]):
            assert receipt["signed"]["proof"] == [b64url(h) for h in path(i, leaves)]
            assert jcs(receipt["signed"]).decode() == receipt["jcs"]
            verify_receipt(receipt["signed"])


@pytest.mark.parametrize("negative", R["outputs"]["negatives"], ids=[n["name"] for n in R["outputs"]["negatives"]])
def test_receipt_negatives_are_refused(negative: dict[str, Any]) -> None:
    with pytest.raises(Refused):
        verify_receipt(negative["receipt"])


def batch_form_receipts(batch: Any, dest: str, sent: set[str]) -> list[dict[str, Any]]:
    """protocol.md 10.4: the receipts a batch in the batch form gives, checked in its order."""
    if not isinstance(batch, dict) or set(batch) != {"statement", "signature", "bulletins"}:
        raise Refused("a batch has exactly statement, signature and bulletins")
    st, bids = batch["statement"], batch["bulletins"]
    if not isinstance(st, dict) or set(st) != {"v", "node", "status", "at", "signer", "size", "root"}:
        raise Refused("the statement's members are exact")
    if not isinstance(bids, list) or not 1 <= len(bids) <= 65536 or len(set(bids)) != len(bids):
        raise Refused("1 to 65536 distinct bulletins")
    if not all(isinstance(b, str) and len(b) == 64 and set(b) <= set("0123456789abcdef") for b in bids):
        raise Refused("bulletin ids are 64 lowercase hex digits")
    if type(st["v"]) is not int or type(st["size"]) is not int or st["v"] != 2:
        raise Refused("v is the integer 2, size an integer")
    if st["node"] != dest or st["status"] != "received" or not set(bids) <= sent:
        raise Refused("not what was sent")
    leaves = [leaf(bytes.fromhex(b)) for b in bids]
    if st["size"] != len(bids) or st["root"] != b64url(mth(leaves)):
        raise Refused("size or root")
    sig = batch["signature"]
    receipts = [
        {**st, "bulletin": b, "index": i, "proof": [b64url(h) for h in path(i, leaves)], "signature": sig}
        for i, b in enumerate(bids)
    ]
    verify_receipt(receipts[0])
    return receipts


def test_the_batch_form_gives_the_batch_receipts() -> None:
    form, batch = R["outputs"]["batch_form"], R["outputs"]["batch"]
    (only,) = form["answer"]["batches"]
    made = batch_form_receipts(only, "ke-customs", set(batch["bulletins"]))
    assert [jcs(r).decode() for r in made] == [r["jcs"] for r in batch["receipts"]]


FORM_NEGATIVES = R["outputs"]["batch_form"]["negatives"]


@pytest.mark.parametrize("negative", FORM_NEGATIVES, ids=[n["name"] for n in FORM_NEGATIVES])
def test_batch_form_negatives_are_refused(negative: dict[str, Any]) -> None:
    with pytest.raises(Refused):
        batch_form_receipts(negative["batch"], "ke-customs", set(R["outputs"]["batch"]["bulletins"]))
