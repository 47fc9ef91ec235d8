"""Canonical fingerprints: a JSON body's hash does not depend on key order or whitespace, so a
client that re-serialises the same item is recognised as a replay, not a conflict."""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: One encoder for every call: `json.dumps` with options builds a new one each time.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def fingerprint(value: Any) -> str:
    return hashlib.sha256(_CANONICAL.encode(value).encode()).hexdigest()


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
