"""Domain-separated signatures over RFC 8785 canonical JSON."""

from __future__ import annotations

from typing import Any

from exchange.crypto import SigningKey, VerifyKey, b64d, b64e, canonical_json
from exchange.errors import InvalidInput


def signing_input_prefix(domain: str) -> bytes:
    return f"exchange-v1/{domain}\n".encode("ascii")


def signing_input(domain: str, body: Any) -> bytes:
    """The exact bytes signed: `exchange-v1/<domain>`, a newline, then canonical JSON."""
    return signing_input_prefix(domain) + canonical_json(body)


def sign(domain: str, body: Any, key: SigningKey) -> str:
    return b64e(key.sign(signing_input(domain, body)))


def verify(domain: str, body: Any, signature: str, key: VerifyKey) -> None:
    """Return None if `signature` signs `body` under `domain` with `key`; raise BadSignature."""
    try:
        raw = b64d(signature)
    except InvalidInput:
        raw = b""
    key.verify(raw, signing_input(domain, body))
