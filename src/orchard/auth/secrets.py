"""Password hashing (argon2id, argon2-cffi defaults: RFC 9106 low-memory profile, above OWASP's
minimum) and random credentials. Tokens and API keys carry a readable prefix so a leaked value is
recognisable in logs and secret scanners."""

from __future__ import annotations

import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from orchard.kit.hashing import sha256_hex

_hasher = PasswordHasher()

TOKEN_PREFIX = "ort_"
APIKEY_PREFIX = "ork_"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    return _hasher.check_needs_rehash(stored_hash)


def new_secret(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    return sha256_hex(secret)
