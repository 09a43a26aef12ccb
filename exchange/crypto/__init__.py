"""Crypto recipes over `cryptography`: the only package that imports `cryptography.hazmat`."""

from exchange.crypto.content import SealedContent, open_content
from exchange.crypto.encoding import b64d, b64e, canonical_json, sha256, strict_loads
from exchange.crypto.epoch import (
    EpochKey,
    HybridDecryptionKey,
    HybridEncryptionKey,
    hybrid_supported,
    unwrap_epoch_key,
)
from exchange.crypto.keys import DecryptionKey, EncryptionKey, NodeKeys, SigningKey, VerifyKey
from exchange.crypto.secrets import hash_token, new_token, token_matches
from exchange.crypto.tls import cert_pem, cert_subject, generate_tls_identity, spki_pin

__all__ = [
    "DecryptionKey",
    "EncryptionKey",
    "EpochKey",
    "HybridDecryptionKey",
    "HybridEncryptionKey",
    "NodeKeys",
    "SealedContent",
    "SigningKey",
    "VerifyKey",
    "b64d",
    "b64e",
    "canonical_json",
    "cert_pem",
    "cert_subject",
    "generate_tls_identity",
    "hash_token",
    "hybrid_supported",
    "new_token",
    "open_content",
    "sha256",
    "spki_pin",
    "strict_loads",
    "token_matches",
    "unwrap_epoch_key",
]
