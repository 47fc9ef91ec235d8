"""Validation of custom attributes: a JSON object with named keys and small, shallow values, so one
bad integration cannot store megabytes of arbitrary JSON on every member."""

from __future__ import annotations

import json
import re
from typing import Any

_KEY = re.compile(r"^[A-Za-z_\u4e00-\u9fff][\w\u4e00-\u9fff\-]{0,63}$")
MAX_BYTES = 16 * 1024
MAX_DEPTH = 3


def validate_attributes(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    _check(value, depth=1, path="attributes")
    if len(json.dumps(value, ensure_ascii=False).encode()) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES} bytes")
    return value


def _check(value: Any, *, depth: int, path: str) -> None:
    if isinstance(value, dict):
        if depth > MAX_DEPTH:
            raise ValueError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        for key, item in value.items():
            if not isinstance(key, str) or not _KEY.match(key):
                raise ValueError(f"{path}: key {key!r} must be a name of 1–64 letters, digits, _ or -")
            _check(item, depth=depth + 1, path=f"{path}.{key}")
    elif isinstance(value, list):
        if depth > MAX_DEPTH:
            raise ValueError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        for i, item in enumerate(value):
            _check(item, depth=depth + 1, path=f"{path}[{i}]")
    elif isinstance(value, float) and value != value:  # NaN
        raise ValueError(f"{path}: NaN is not allowed")
    elif not isinstance(value, str | int | float | bool | None):
        raise ValueError(f"{path}: unsupported value type")
