"""Sizes, times and durations as ``ollama``'s commands print them."""

from __future__ import annotations

import math
from datetime import datetime

from corral.api.streams import parse_time as api_time

_UNITS = ((10**12, "TB"), (10**9, "GB"), (10**6, "MB"), (10**3, "KB"))


def human_bytes(n: int) -> str:
    """Decimal units; whole numbers from 10 up, else one decimal unless it is whole: ``1.9 GB``,
    ``45 MB``, ``512 B``."""
    for size, unit in _UNITS:
        if n >= size:
            value = n / size
            if value >= 10 or value == math.trunc(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{n} B"


def go_round(x: float) -> int:
    """Go's math.Round: halves away from zero (Python's round() goes to even)."""
    return math.floor(abs(x) + 0.5) * (1 if x >= 0 else -1)


def human_time(when: datetime | None, zero: str, *, now: datetime | None = None) -> str:
    """``About a minute ago``, ``3 days ago``, ``4 minutes from now``, ``Forever`` (twenty-odd
    years ahead: a keep-alive that never ends); ``zero`` for no time."""
    if when is None:
        return zero
    now = now or datetime.now(when.tzinfo)
    delta = (now - when).total_seconds()
    if int(int(delta / 3600) / 24 / 365) < -20:  # Go's integer divisions truncate toward zero
        return "Forever"
    if delta < 0:
        return f"{_relative(-delta)} from now"
    return f"{_relative(delta)} ago"


def _relative(seconds: float) -> str:
    if int(seconds) < 1:
        return "Less than a second"
    if int(seconds) == 1:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = go_round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 336:
        return f"{hours // 24} days"
    if hours < 1440:
        return f"{hours // 24 // 7} weeks"
    if hours < 17520:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def table(rows: list[list[str]], *, header: bool = True, indent: bool = False) -> str:
    """ollama's tables: every cell padded to its column's width and followed by four spaces,
    the header's last cell by one; ``indent``: an empty first column (``show``'s sections)."""
    if indent:
        rows = [["", *row] for row in rows]
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(map(len, rows)))]
    lines = []
    for n, row in enumerate(rows):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("    ".join(cells) + " " if header and n == 0 else "".join(c + "    " for c in cells))
    return "\n".join(lines) + "\n"


def parse_time(text: str | None) -> datetime | None:
    """An API timestamp (RFC 3339, maybe with nanoseconds); None for none, Go's zero time, or
    anything else that is not one."""
    if not text or text.startswith("0001-01-01"):
        return None
    try:
        return api_time(text)
    except ValueError:
        return None


def go_duration(ns: int) -> str:
    """A duration in nanoseconds as Go prints one (``time.Duration.String``): ``1.234567891s``,
    ``12.5ms``, ``1m2.000000001s``, ``0s``."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_fraction(ns, 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_fraction(ns, 1_000_000)}ms"
    seconds, rest = divmod(ns, 1_000_000_000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    text = _fraction(seconds * 1_000_000_000 + rest, 1_000_000_000) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _fraction(value: int, unit: int) -> str:
    whole, rest = divmod(value, unit)
    if not rest:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{str(rest).rjust(digits, '0').rstrip('0')}"
