"""API tokens: random bearer secrets stored only as their SHA-256 hash."""

from __future__ import annotations

import hmac
import secrets

from exchange.crypto.encoding import sha256

TOKEN_PREFIX = "exch_"  # noqa: S105 - a marker that makes leaked tokens greppable, not a secret


def new_token() -> str:
    """A new 256-bit bearer token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # Tokens carry 256 bits of entropy, so a fast hash is enough; passwords use argon2.
    return sha256(token.encode("utf-8")).hex()


def token_matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), stored_hash)
