"""Bulletin content encryption: AES-256-GCM under a fresh content key, wrapped per reader with HPKE.

HPKE is RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM. The content
key is committed to by a hash in the signed header, so a reader who re-wraps a different key for
another reader is caught even though AES-GCM itself is not key-committing.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from exchange.crypto.encoding import sha256
from exchange.crypto.keys import DecryptionKey, EncryptionKey
from exchange.errors import DecryptionFailed

Random = Callable[[int], bytes]
os_random: Random = os.urandom

KEY_SIZE = 32
NONCE_SIZE = 12
WRAP_SIZE = 32 + KEY_SIZE + 16  # HPKE enc || sealed key || tag
BODY_AAD = b"exchange-v1/body"
_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def key_commitment(content_key: bytes) -> bytes:
    return sha256(b"exchange-v1/key-commit\x00" + content_key)


class SealedContent:
    """Ciphertext of one bulletin body; it holds the content key only to wrap it for readers."""

    def __init__(self, plaintext: bytes, rng: Random = os_random) -> None:
        self._key = rng(KEY_SIZE)
        self.nonce = rng(NONCE_SIZE)
        self.ciphertext = AESGCM(self._key).encrypt(self.nonce, plaintext, BODY_AAD)
        self.key_commitment = key_commitment(self._key)

    def wrap(self, recipient: EncryptionKey, info: bytes) -> bytes:
        """Wrap the content key for one reader, bound to `info` (bulletin id and reader kid)."""
        return _SUITE.encrypt(self._key, recipient.key, info=info)


def open_content(
    *,
    wrapped_key: bytes,
    info: bytes,
    reader: DecryptionKey,
    key_commitment_: bytes,
    nonce: bytes,
    ciphertext: bytes,
) -> bytes:
    """Unwrap this reader's content key and decrypt the body; any failure is DecryptionFailed."""
    try:
        content_key = _SUITE.decrypt(wrapped_key, reader.key, info=info)
        if len(content_key) != KEY_SIZE or not hmac.compare_digest(key_commitment(content_key), key_commitment_):
            raise DecryptionFailed()
        return AESGCM(content_key).decrypt(nonce, ciphertext, BODY_AAD)
    except (InvalidTag, ValueError) as exc:
        raise DecryptionFailed() from exc
