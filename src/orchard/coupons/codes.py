"""Coupon codes: random, unguessable and typable at a counter.

Alphabet: Crockford base32 (0-9 and A-Z without I, L, O, U), 12 characters = 60 random bits. With a
million live coupons a guessed code hits one with probability ~1e-12. Input is forgiving the way
Crockford intends: case, spaces and dashes are ignored, O reads as 0 and I/L as 1, so a code printed
as `7K3M-9QWX-2D8F` can be typed any way a clerk hears it.

Codes are made by the database for bulk issue (`sql_code`): PostgreSQL takes 5 bits from each of 12
random bytes of `gen_random_uuid()` (a strong random source, core since PostgreSQL 13), SQLite uses
`random()` per character. The unique index on `coupons.code` catches the rare collision; the issuer
retries the members that lost one (coupons.issuing).
"""

from __future__ import annotations

import re
import secrets

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
LENGTH = 12
_READ_AS = str.maketrans({"O": "0", "I": "1", "L": "1"})
_VALID = re.compile(f"^[{ALPHABET}]+$")
#: Bytes of uuid_send(gen_random_uuid()) whose low 5 bits are random (byte 6 holds the version nibble).
_UUID_BYTES = (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12)


def new_code(length: int | None = None) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length or LENGTH))


def normalize(raw: str) -> str | None:
    """The stored form of a code as typed, or None when it cannot be a code."""
    code = re.sub(r"[\s-]", "", raw).upper().translate(_READ_AS)
    return code if 4 <= len(code) <= 16 and _VALID.match(code) else None


def display(code: str) -> str:
    """Groups of four for printing: 7K3M-9QWX-2D8F."""
    return "-".join(code[i:i + 4] for i in range(0, len(code), 4))


def sql_code(dialect: str, length: int | None = None, random_bytes: str = "x.rb") -> str:
    """A SQL expression making one code per row. On PostgreSQL it reads the bytea column
    `random_bytes` (select `uuid_send(gen_random_uuid())` in a subquery: one draw per row)."""
    n = length or LENGTH
    if dialect == "postgresql":
        picks = [f"(get_byte({random_bytes}, {i}) & 31)" for i in _UUID_BYTES[:n]]
    else:
        picks = ["(random() & 31)"] * n
    return " || ".join(f"substr('{ALPHABET}', {p} + 1, 1)" for p in picks)
