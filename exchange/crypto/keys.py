"""Node keys: Ed25519 for signatures, X25519 for HPKE, with stable key ids."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from exchange.errors import BadSignature, ConfigError, SmallOrderKey

# A fixed X25519 scalar: clamped, it is a multiple of 8, so its product with any point of small
# order is the identity, whose shared secret `cryptography` refuses as all zeros (RFC 7748, 6.1).
_ORDER_PROBE = x25519.X25519PrivateKey.from_private_bytes(hashlib.sha256(b"exchange-v1/small-order probe").digest())


def key_id(alg: str, public: bytes) -> str:
    """A short, stable id for a public key: hex of the first 8 bytes of its hash."""
    return hashlib.sha256(b"exchange-v1/kid\x00" + alg.encode() + b"\x00" + public).hexdigest()[:16]


def _raw_public(key: ed25519.Ed25519PublicKey | x25519.X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


class VerifyKey:
    """An Ed25519 public key."""

    alg = "ed25519"

    def __init__(self, raw: bytes) -> None:
        try:
            self._key = ed25519.Ed25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise ConfigError("not an Ed25519 public key") from exc
        self.raw = raw
        self.kid = key_id(self.alg, raw)

    def verify(self, signature: bytes, data: bytes) -> None:
        """Return None if `signature` is valid for `data`, else raise BadSignature."""
        try:
            self._key.verify(signature, data)
        except InvalidSignature as exc:
            raise BadSignature("signature does not verify") from exc


class SigningKey:
    """An Ed25519 private key."""

    def __init__(self, seed: bytes) -> None:
        try:
            self._key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        except ValueError as exc:
            raise ConfigError("not an Ed25519 private key") from exc
        self.verify_key = VerifyKey(_raw_public(self._key.public_key()))
        self.kid = self.verify_key.kid

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(_private_raw(ed25519.Ed25519PrivateKey.generate()))

    def private_bytes(self) -> bytes:
        return _private_raw(self._key)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


class EncryptionKey:
    """An X25519 public key that content keys are wrapped for (HPKE)."""

    alg = "x25519-hpke"

    def __init__(self, raw: bytes) -> None:
        try:
            self.key = x25519.X25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise ConfigError("not an X25519 public key") from exc
        self.raw = raw
        self.kid = key_id(self.alg, raw)

    def check_order(self, whose: str = "an X25519 key") -> None:
        """None, or SmallOrderKey if this key is of small order (every shared secret with it is
        zero, RFC 7748 section 6.1: nothing can be sealed for it). `whose` names it in the error."""
        try:
            _ORDER_PROBE.exchange(self.key)
        except ValueError as exc:
            raise SmallOrderKey(f"{whose} is an X25519 key of small order (RFC 7748, 6.1)") from exc


class DecryptionKey:
    """An X25519 private key that opens HPKE-wrapped content keys."""

    def __init__(self, raw: bytes) -> None:
        try:
            self.key = x25519.X25519PrivateKey.from_private_bytes(raw)
        except ValueError as exc:
            raise ConfigError("not an X25519 private key") from exc
        self.public = EncryptionKey(_raw_public(self.key.public_key()))
        self.kid = self.public.kid

    @classmethod
    def generate(cls) -> DecryptionKey:
        return cls(_private_raw(x25519.X25519PrivateKey.generate()))

    def private_bytes(self) -> bytes:
        return _private_raw(self.key)


def _private_raw(key: ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


class NodeKeys:
    """The application keys of one node: a signing key and an HPKE decryption key, and the
    decryption keys it had before (after a rotation, what was wrapped for them still opens).

    A running node holds one NodeKeys that its parts read through; when it takes a roster version
    that lists new keys of its own, `install` swaps what it holds in one assignment, as the
    roster's `Federation` does, so a reader sees the old keys or the new ones, never a mix.
    """

    __slots__ = ("_held",)

    def __init__(self, signing: SigningKey, decryption: DecryptionKey, former: Sequence[DecryptionKey] = ()) -> None:
        self._held = (signing, decryption, {k.kid: k for k in (*former, decryption)})

    @property
    def signing(self) -> SigningKey:
        return self._held[0]

    @property
    def decryption(self) -> DecryptionKey:
        return self._held[1]

    @property
    def former(self) -> tuple[DecryptionKey, ...]:
        """The decryption keys held besides the current one."""
        return tuple(k for kid, k in self._held[2].items() if kid != self.decryption.kid)

    def decryption_for(self, kid: str) -> DecryptionKey | None:
        """The decryption key `kid` if this node holds it (current or former), else None."""
        return self._held[2].get(kid)

    def install(self, other: NodeKeys) -> None:
        """Hold what `other` holds from now on (this node's keys after a rotation)."""
        self._held = other._held

    def __repr__(self) -> str:
        return f"NodeKeys(signing={self.signing.kid}, decryption={self.decryption.kid}, former={len(self.former)})"

    @classmethod
    def generate(cls) -> NodeKeys:
        return cls(SigningKey.generate(), DecryptionKey.generate())
