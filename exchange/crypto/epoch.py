"""Channel epoch keys (docs/protocol.md, 15): per-bulletin keys by HKDF, and HPKE wraps of epoch keys.

Two wrap suites: DHKEM(X25519) as in v1, and the post-quantum hybrid ML-KEM-768 + X25519
(X-Wing). Both use HKDF-SHA256 and AES-256-GCM. Whether this node's `cryptography` can do the
hybrid one is found out at run time (`hybrid_supported`); using it without support raises
SuiteUnsupported.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
from functools import cache
from typing import Final

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from exchange.crypto.content import Random, os_random
from exchange.crypto.encoding import sha256
from exchange.crypto.keys import DecryptionKey, EncryptionKey, key_id
from exchange.errors import ConfigError, DecryptionFailed, SuiteUnsupported

EPOCH_KEY_SIZE: Final = 32
SALT_SIZE: Final = 32
BULLETIN_AAD: Final = b"exchange-v2/body"
SUITE_X25519: Final = "x25519-hkdfsha256-aes256gcm"
SUITE_XWING: Final = "xwing-hkdfsha256-aes256gcm"
WRAP_SUITES: Final = (SUITE_X25519, SUITE_XWING)
XWING_PUBLIC_SIZE: Final = 1184 + 32  # ML-KEM-768 encapsulation key || X25519 public key
XWING_SEED_SIZE: Final = 32
WRAP_SIZES: Final = {SUITE_X25519: 32 + EPOCH_KEY_SIZE + 16, SUITE_XWING: 1120 + EPOCH_KEY_SIZE + 16}

_COMMIT_LABEL = b"exchange-v2/epoch-commit\x00"
_BULLETIN_LABEL = b"exchange-v2/bulletin-key\x00"
_X25519_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def _version() -> str:
    try:
        return importlib.metadata.version("cryptography")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - it is imported above
        return "unknown"


@cache
def hybrid_supported() -> bool:
    """Whether this `cryptography` and its backend do HPKE with ML-KEM-768 + X25519 (checked once)."""
    try:
        key = hpke.MLKEM768X25519PrivateKey(
            mlkem.MLKEM768PrivateKey.from_seed_bytes(bytes(64)), x25519.X25519PrivateKey.from_private_bytes(bytes(32))
        )
        suite = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
        return suite.decrypt(suite.encrypt(b"probe", key.public_key(), info=b""), key, info=b"") == b"probe"
    except (AttributeError, UnsupportedAlgorithm, ValueError, TypeError):
        return False


def require_hybrid() -> None:
    """Return None if the hybrid suite is available here, else raise SuiteUnsupported."""
    if not hybrid_supported():
        raise SuiteUnsupported(
            f"the installed cryptography {_version()} cannot do HPKE with ML-KEM-768 + X25519 "
            f"(suite {SUITE_XWING}): install a release with hazmat.primitives.hpke.MLKEM768X25519PrivateKey "
            "on a backend with ML-KEM, or list no hybrid key for this node"
        )


def _hybrid_suite() -> hpke.Suite:
    require_hybrid()
    return hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def check_hybrid_order(raw: bytes) -> None:
    """SmallOrderKey if the X25519 half of an X-Wing public key is of small order: every wrap for
    it fails (RFC 7748, 6.1). Accepted before, one reader's announcement of such a key made its
    channel's owner fail each epoch it made, and answer 500 (found by a read-only review)."""
    try:
        half = EncryptionKey(raw[1184:])
    except ConfigError:
        return  # not an X25519 key at all: the caller's own check says so
    half.check_order("the X25519 half of an ML-KEM-768 + X25519 key")


class HybridEncryptionKey:
    """An X-Wing public key: the ML-KEM-768 encapsulation key followed by the X25519 public key."""

    alg = "xwing-hpke"
    suite = SUITE_XWING

    def __init__(self, raw: bytes) -> None:
        if len(raw) != XWING_PUBLIC_SIZE:
            raise ConfigError(f"an ML-KEM-768 + X25519 public key has {XWING_PUBLIC_SIZE} bytes, not {len(raw)}")
        require_hybrid()
        check_hybrid_order(raw)
        try:
            self._key = hpke.MLKEM768X25519PublicKey(
                mlkem.MLKEM768PublicKey.from_public_bytes(raw[:1184]),
                x25519.X25519PublicKey.from_public_bytes(raw[1184:]),
            )
        except ValueError as exc:
            raise ConfigError("not an ML-KEM-768 + X25519 public key") from exc
        self.raw = raw
        self.kid = key_id(self.alg, raw)


class HybridDecryptionKey:
    """An X-Wing private key, kept as its 32-byte seed and expanded as X-Wing does (SHAKE256)."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != XWING_SEED_SIZE:
            raise ConfigError(f"an ML-KEM-768 + X25519 private key is a {XWING_SEED_SIZE}-byte seed")
        require_hybrid()
        expanded = hashlib.shake_256(seed).digest(96)
        kem = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
        dh = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
        self._key = hpke.MLKEM768X25519PrivateKey(kem, dh)
        self._seed = seed
        self.public = HybridEncryptionKey(kem.public_key().public_bytes_raw() + dh.public_key().public_bytes_raw())
        self.kid = self.public.kid

    @classmethod
    def generate(cls, rng: Random = os_random) -> HybridDecryptionKey:
        return cls(rng(XWING_SEED_SIZE))

    def private_bytes(self) -> bytes:
        return self._seed


WrapKey = EncryptionKey | HybridEncryptionKey
UnwrapKey = DecryptionKey | HybridDecryptionKey


def suite_of(key: WrapKey | UnwrapKey) -> str:
    """The wrap suite a key is used with."""
    return SUITE_XWING if isinstance(key, HybridEncryptionKey | HybridDecryptionKey) else SUITE_X25519


def epoch_commitment(raw: bytes) -> bytes:
    return sha256(_COMMIT_LABEL + raw)


class BulletinKey:
    """The AES-256-GCM key and nonce of one bulletin, derived from its epoch key; never stored."""

    def __init__(self, okm: bytes) -> None:
        self._aead = AESGCM(okm[:32])
        self._nonce = okm[32:]

    def seal(self, payload: bytes) -> bytes:
        return self._aead.encrypt(self._nonce, payload, BULLETIN_AAD)

    def open(self, ciphertext: bytes) -> bytes:
        """Decrypt one bulletin; any failure is DecryptionFailed."""
        try:
            return self._aead.decrypt(self._nonce, ciphertext, BULLETIN_AAD)
        except InvalidTag as exc:
            raise DecryptionFailed() from exc


def bulletin_info(epoch_hash: bytes, author: str, seq: int) -> bytes:
    """HKDF `info` of a bulletin key: bound to the epoch, the author and the sequence number."""
    return _BULLETIN_LABEL + epoch_hash + author.encode("ascii") + b"\x00" + seq.to_bytes(8, "big")


class EpochKey:
    """A channel's epoch key: bulletin keys are derived from it, and it is wrapped once per reader."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) != EPOCH_KEY_SIZE:
            raise ConfigError(f"an epoch key has {EPOCH_KEY_SIZE} bytes")
        self._key = raw
        self.commitment = epoch_commitment(raw)

    @classmethod
    def generate(cls, rng: Random = os_random) -> EpochKey:
        return cls(rng(EPOCH_KEY_SIZE))

    def secret_bytes(self) -> bytes:
        """The raw key, for the node's own encrypted storage and the test vectors."""
        return self._key

    def bulletin_okm(self, salt: bytes, info: bytes) -> bytes:
        """HKDF-SHA256(IKM = epoch key, salt, info), 44 bytes: the bulletin key then its nonce."""
        return HKDF(algorithm=hashes.SHA256(), length=44, salt=salt, info=info).derive(self._key)

    def bulletin_key(self, salt: bytes, info: bytes) -> BulletinKey:
        return BulletinKey(self.bulletin_okm(salt, info))

    def wrap(self, recipient: WrapKey, info: bytes) -> bytes:
        """HPKE-seal the epoch key for one reader, in the suite its key is for; `info` binds it."""
        if isinstance(recipient, HybridEncryptionKey):
            return _hybrid_suite().encrypt(self._key, recipient._key, info=info)
        return _X25519_SUITE.encrypt(self._key, recipient.key, info=info)


def unwrap_epoch_key(wrap: bytes, info: bytes, key: UnwrapKey, commitment: bytes) -> EpochKey:
    """Open one wrap and check it against the epoch's commitment; any failure is DecryptionFailed."""
    try:
        if isinstance(key, HybridDecryptionKey):
            raw = _hybrid_suite().decrypt(wrap, key._key, info=info)
        else:
            raw = _X25519_SUITE.decrypt(wrap, key.key, info=info)
    except (InvalidTag, ValueError) as exc:
        raise DecryptionFailed() from exc
    if len(raw) != EPOCH_KEY_SIZE or not hmac.compare_digest(epoch_commitment(raw), commitment):
        raise DecryptionFailed()
    return EpochKey(raw)
