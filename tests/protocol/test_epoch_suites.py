"""The two wrap suites of envelope v2 (docs/protocol.md, 15.4), checked without `cryptography`'s HPKE.

The hybrid wraps of the golden vectors are opened here with X-Wing's combiner and RFC 9180's key
schedule written out (only ML-KEM-768 decapsulation and X25519 come from `cryptography`), which
shows that they are plain single-shot base-mode HPKE with KEM 0x647A (ML-KEM-768 + X25519),
HKDF-SHA256 and AES-256-GCM, and that the private key is X-Wing's 32-byte seed.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from exchange import errors
from exchange.crypto import (
    EpochKey,
    HybridDecryptionKey,
    HybridEncryptionKey,
    b64d,
    b64e,
    epoch as crypto_epoch,
    strict_loads,
    unwrap_epoch_key,
)
from exchange.crypto.epoch import SUITE_XWING, XWING_PUBLIC_SIZE
from exchange.http.problem import STATUS
from exchange.protocol.epoch_support import SUPPORT_DOMAIN, EpochSupport, verify_support
from exchange.protocol.signing import sign
from tests.vectors import make_envelope_v2_vectors as gen
from tests.vectors.make_handover_vectors import rosters
from tests.vectors.make_vectors import ENVELOPE_FILE, signing_key

V: dict[str, Any] = strict_loads(gen.FILE.read_text("utf-8"))
RECORDED: dict[str, Any] = strict_loads(ENVELOPE_FILE.read_text("utf-8"))
XWING_LABEL = b"\\.//^\\"  # X-Wing's combiner label, the six ASCII characters \.//^\


def _labeled(suite: bytes) -> tuple[Any, Any]:
    def extract(salt: bytes, label: bytes, ikm: bytes) -> bytes:
        return hmac.new(salt, b"HPKE-v1" + suite + label + ikm, hashlib.sha256).digest()

    def expand(prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
        data = length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info
        out, block, i = b"", b"", 1
        while len(out) < length:
            block = hmac.new(prk, block + data + bytes([i]), hashlib.sha256).digest()
            out, i = out + block, i + 1
        return out[:length]

    return extract, expand


def xwing_hpke_open(wrap: bytes, seed: bytes, info: bytes) -> bytes:
    """Single-shot HPKE Open, base mode, KEM 0x647A (X-Wing), HKDF-SHA256, AES-256-GCM, empty aad."""
    expanded = hashlib.shake_256(seed).digest(96)
    sk_m = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
    sk_x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
    pk_x = sk_x.public_key().public_bytes_raw()
    ct_m, ct_x, sealed = wrap[:1088], wrap[1088:1120], wrap[1120:]
    ss_m = sk_m.decapsulate(ct_m)
    ss_x = sk_x.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
    shared = hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + XWING_LABEL).digest()
    suite = b"HPKE" + (0x647A).to_bytes(2, "big") + (0x0001).to_bytes(2, "big") + (0x0002).to_bytes(2, "big")
    extract, expand = _labeled(suite)
    context = b"\x00" + extract(b"", b"psk_id_hash", b"") + extract(b"", b"info_hash", info)
    secret = extract(shared, b"secret", b"")
    key, nonce = expand(secret, b"key", context, 32), expand(secret, b"base_nonce", context, 12)
    return AESGCM(key).decrypt(nonce, sealed, b"")


def test_the_hybrid_wraps_of_the_vectors_are_x_wing_hpke() -> None:
    opened = 0
    for epoch in V["outputs"]["epochs"]:
        for wrap, info_hex in zip(epoch["record"]["wraps"], epoch["wrap_info_hex"], strict=True):
            if wrap["suite"] != SUITE_XWING:
                continue
            seed = b64d(V["inputs"]["hybrid_keys"][wrap["node"]]["seed"])
            assert xwing_hpke_open(b64d(wrap["wrap"]), seed, bytes.fromhex(info_hex)) == b64d(epoch["epoch_key"])
            opened += 1
    assert opened == 2


def test_the_hybrid_public_key_is_the_ml_kem_key_then_the_x25519_key() -> None:
    spec = V["inputs"]["hybrid_keys"]["ke-customs"]
    expanded = hashlib.shake_256(b64d(spec["seed"])).digest(96)
    ek = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]).public_key().public_bytes_raw()
    pk_x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:]).public_key().public_bytes_raw()
    assert b64d(spec["public_key"]) == ek + pk_x and len(ek + pk_x) == XWING_PUBLIC_SIZE


def test_a_fresh_hybrid_wrap_opens_with_the_key_and_no_other() -> None:
    key, other = HybridDecryptionKey.generate(), HybridDecryptionKey.generate()
    epoch_key = EpochKey.generate()
    wrap = epoch_key.wrap(key.public, b"info")
    assert len(wrap) == 1168
    assert xwing_hpke_open(wrap, key.private_bytes(), b"info") == epoch_key.secret_bytes()
    assert unwrap_epoch_key(wrap, b"info", key, epoch_key.commitment).secret_bytes() == epoch_key.secret_bytes()
    for wrong_key, info in ((other, b"info"), (key, b"other info")):
        with pytest.raises(errors.DecryptionFailed):
            unwrap_epoch_key(wrap, info, wrong_key, epoch_key.commitment)


def test_malformed_hybrid_keys_are_refused() -> None:
    with pytest.raises(errors.ConfigError):
        HybridEncryptionKey(bytes(XWING_PUBLIC_SIZE - 1))
    with pytest.raises(errors.ConfigError):
        HybridDecryptionKey(bytes(31))


@pytest.mark.parametrize("raw", [bytes(10), b"\xff" * XWING_PUBLIC_SIZE], ids=["short", "not-a-key"])
def test_a_partners_malformed_hybrid_key_is_an_invalid_announcement_not_a_config_error(raw: bytes) -> None:
    """A reader signs a v2 support announcement whose hybrid key is not an X-Wing key. It is the
    partner's error (EpochInvalid, 422), not this node's configuration (ConfigError, 500): before,
    the owner's epoch route answered 500 to every member while it held such an announcement
    (found by a read-only review)."""
    fed, _ = rosters(RECORDED).at(1)
    node, key = "ke-customs", signing_key("ke-customs")
    body = {"v": 2, "node": node, "hybrid_key": b64e(raw), "hybrid_kid": "0" * 16, "signer": key.kid}
    support = EpochSupport.model_validate({**body, "signature": sign(SUPPORT_DOMAIN, body, key)})
    with pytest.raises(errors.EpochInvalid, match="malformed hybrid key"):
        verify_support(support, fed, node)
    assert STATUS[errors.EpochInvalid] == 422


def test_a_node_without_the_hybrid_suite_checks_a_partners_hybrid_announcement_all_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a `cryptography` or backend without ML-KEM, checking a partner's announced hybrid key
    raised SuiteUnsupported (it built the key to read its kid): such a node, announcing X25519
    alone, then took no v2 bulletin of a channel with a hybrid reader, and after an hour could not
    post there (found by a read-only review; 15.4). The size and the kid are checked without it."""
    fed, _ = rosters(RECORDED).at(1)
    node, key = "ke-customs", signing_key("ke-customs")
    hybrid = HybridDecryptionKey(bytes(32)).public

    def announced(raw: bytes, kid: str) -> EpochSupport:
        body = {"v": 2, "node": node, "hybrid_key": b64e(raw), "hybrid_kid": kid, "signer": key.kid}
        return EpochSupport.model_validate({**body, "signature": sign(SUPPORT_DOMAIN, body, key)})

    good = announced(hybrid.raw, hybrid.kid)
    assert verify_support(good, fed, node) is not None  # with the suite: the key, to wrap for
    monkeypatch.setattr(crypto_epoch, "hybrid_supported", lambda: False)
    assert verify_support(good, fed, node) is None  # before: SuiteUnsupported
    with pytest.raises(errors.EpochInvalid, match="kid is not the one announced"):
        verify_support(announced(hybrid.raw, "0" * 16), fed, node)
    with pytest.raises(errors.EpochInvalid, match="malformed hybrid key"):
        verify_support(announced(hybrid.raw[:-1], hybrid.kid), fed, node)
    with pytest.raises(errors.SuiteUnsupported):  # wrapping for it still needs the suite
        HybridEncryptionKey(hybrid.raw)
