"""Console passwords: argon2id hashes (RFC 9106), verified in constant work whether or not a user exists.

API tokens carry 256 bits of entropy and are stored as a fast SHA-256 hash; passwords are chosen
by people, so they get a slow, memory-hard hash. The parameters are OWASP's argon2id minimum
(19 MiB, 2 passes, 1 lane): about 70 ms per hash on the 2-core machines we plan for, which
bounds an offline guesser and keeps a sign-in cheap for the node.
"""

from __future__ import annotations

import functools
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from exchange.errors import WeakPassword

MIN_LENGTH = 12
MAX_LENGTH = 1024  # argon2 hashes any length; the bound keeps a request from costing more

_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


@functools.cache
def _dummy() -> str:
    """Verified when a user is unknown or has no password, so that answer takes as long as a wrong one."""
    return _HASHER.hash(secrets.token_urlsafe(16))


def check_strength(password: str) -> None:
    """Return None if `password` may be set, else raise WeakPassword."""
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"a password has at most {MAX_LENGTH} characters")


def hash_password(password: str) -> str:
    """The argon2id hash (PHC string, salt included) of a password that passes `check_strength`."""
    check_strength(password)
    return _HASHER.hash(password)


def password_matches(stored: str | None, password: str) -> bool:
    """True if `password` matches the stored hash; the same work is done when there is none."""
    if len(password) > MAX_LENGTH:
        return False
    try:
        return _HASHER.verify(stored or _dummy(), password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """True if the hash was made with other parameters than today's."""
    return _HASHER.check_needs_rehash(stored)


def new_password() -> str:
    """A random password (about 120 bits) for a sample user, or one an administrator resets."""
    return secrets.token_urlsafe(15)


__all__ = [
    "MIN_LENGTH",
    "WeakPassword",
    "check_strength",
    "hash_password",
    "needs_rehash",
    "new_password",
    "password_matches",
]
