"""Reading Tune results: nested dicts of hundreds of entries, some of them not numbers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

MISSING = "-"


def flatten(result: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``, the way Tune names nested metrics."""
    flat: dict[str, Any] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def first_present(flat_result: Mapping[str, Any], keys: Sequence[str]) -> Any:
    """The value of the first key that holds a number, else None."""
    for key in keys:
        value = flat_result.get(key)
        if _is_number(value):
            return value
    return None


def format_number(value: Any) -> str:
    """Short, width-stable rendering: integers as such, floats with 4 significant digits."""
    if not _is_number(value):
        return MISSING
    if isinstance(value, int) or float(value).is_integer() and abs(float(value)) < 1e9:
        return str(int(value))
    value = float(value)
    if math.isnan(value):
        return "nan"
    if 1000 <= abs(value) < 1e7:
        return f"{value:.1f}"
    return f"{value:.4g}"


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, str)
