"""Node keys: Ed25519 for signatures, X25519 for HPKE, with stable key ids."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from exchange.errors import BadSignature, ConfigError


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


@dataclass(frozen=True)
class NodeKeys:
    """The application keys of one node: a signing key and an HPKE decryption key."""

    signing: SigningKey
    decryption: DecryptionKey

    @classmethod
    def generate(cls) -> NodeKeys:
        return cls(SigningKey.generate(), DecryptionKey.generate())
