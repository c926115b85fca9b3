"""Ollama's keep_alive values: JSON seconds, Go duration strings, negative = forever."""

from __future__ import annotations

import math
import re
from typing import Any

from corral.api.errors import BadRequestError
from corral.gocompat import type_name

FOREVER = math.inf

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_NUMBER = re.compile(r"[0-9]*(\.[0-9]*)?")
_UNIT = re.compile(r"[^0-9.]*")
# Go counts durations in int64 nanoseconds: about 292 years at most.
MAX_SECONDS = ((1 << 63) - 1) / 1e9


class DurationError(BadRequestError):
    pass


def _match(pattern: re.Pattern[str], text: str, pos: int) -> str:
    match = pattern.match(text, pos)
    assert match is not None  # both patterns match the empty string
    return match.group()


def parse_go_duration(text: str) -> float:
    """Seconds for a Go ``time.ParseDuration`` string, with Go's error messages."""
    original = text
    invalid = DurationError(f'time: invalid duration "{original}"')
    if text in ("0", "+0", "-0"):
        return 0.0
    sign = 1.0
    if text[:1] in ("+", "-"):
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if not text:
        raise invalid
    total = 0.0
    pos = 0
    while pos < len(text):
        number = _match(_NUMBER, text, pos)
        if number in ("", "."):
            raise invalid
        pos += len(number)
        unit = _match(_UNIT, text, pos)
        pos += len(unit)
        if not unit:
            raise DurationError(f'time: missing unit in duration "{original}"')
        if unit not in _UNITS:
            raise DurationError(f'time: unknown unit "{unit}" in duration "{original}"')
        total += float(number) * _UNITS[unit]
    if total > MAX_SECONDS:
        raise invalid
    return sign * total


def parse_keep_alive(value: Any) -> float | None:
    """Seconds to keep a model loaded; ``FOREVER`` for negative values; None when unset."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise DurationError("Unsupported type: 'bool'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = parse_go_duration(value.strip())
    else:  # Go's %T of what it decoded
        raise DurationError(f"Unsupported type: '{type_name(value)}'")
    # Past what Go's duration holds, as good as forever (Go's own overflow would unload at once).
    return FOREVER if seconds < 0 or seconds > MAX_SECONDS else seconds


def parse_env_keep_alive(text: str) -> float:
    """OLLAMA_KEEP_ALIVE: like keep_alive, but a bare integer also means seconds."""
    text = text.strip().strip("\"'")
    if re.fullmatch(r"[+-]?\d+", text):
        seconds = float(int(text))
        return FOREVER if seconds < 0 else seconds
    parsed = parse_keep_alive(text)
    assert parsed is not None
    return parsed
