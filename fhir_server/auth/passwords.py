"""Password hashing (argon2id through argon2-cffi) and the password policy."""

from __future__ import annotations

import string

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_HASHER = PasswordHasher()
# Verified against when a username is unknown, so both paths cost one argon2 verification (no timing leak).
_DUMMY = _HASHER.hash("not-a-real-password-Aa1!")
MIN_LENGTH = 12


def hash_secret(secret: str) -> str:
    return _HASHER.hash(secret)


def verify_secret(stored_hash: str | None, secret: str) -> bool:
    try:
        return _HASHER.verify(stored_hash or _DUMMY, secret) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def policy_problems(password: str) -> list[str]:
    """Why a password is too weak (empty when acceptable): >= 12 characters from at least 3 classes."""
    problems = []
    if len(password) < MIN_LENGTH:
        problems.append(f"at least {MIN_LENGTH} characters")
    classes = sum(any(c in chars for c in password)
                  for chars in (string.ascii_lowercase, string.ascii_uppercase, string.digits))
    classes += any(not c.isalnum() for c in password)
    if classes < 3:
        problems.append("at least three of: lower case, upper case, digits, symbols")
    return problems
