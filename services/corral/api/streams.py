"""Wire framing for streamed replies, and times printed the way Go prints them.

Native streams are NDJSON (one compact object per line); /v1 streams are SSE
(``data: <json>`` and a blank line, ending with ``data: [DONE]``). JSON is
compact and UTF-8 (``ensure_ascii=False``), as Go's encoder writes it.

Times are Go's RFC3339Nano: trailing zeros of the fraction trimmed (and the dot
with them), ``Z`` for a zero offset, ``±hh:mm`` otherwise. ``created_at`` is
UTC; ``/api/tags`` ``modified_at`` is local time with its offset.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

SSE_DONE = b"data: [DONE]\n\n"

_NS_PER_S = 1_000_000_000


def dumps(obj: Any) -> str:
    """Compact JSON text, non-ASCII kept as is."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def ndjson_line(obj: Any) -> bytes:
    return (dumps(obj) + "\n").encode()


def sse_event(obj: Any, event: str = "") -> bytes:
    """One SSE event, named when ``event`` is given; a str is sent verbatim, anything else as JSON."""
    data = obj if isinstance(obj, str) else dumps(obj)
    if event:
        return f"event: {event}\ndata: {data}\n\n".encode()
    return f"data: {data}\n\n".encode()


def iso_now() -> str:
    """Now, in UTC, with nanoseconds: ``2025-10-26T17:21:21.196249123Z``."""
    return format_time(time.time_ns(), utc=True)


def format_time(when: datetime | int, *, utc: bool = False) -> str:
    """RFC3339Nano as Go prints it.

    ``when`` is a datetime (naive means local time) or Unix nanoseconds (an
    ``os.stat`` ``st_mtime_ns``), which are shown in the local zone unless
    ``utc`` is set. A datetime keeps its own zone unless ``utc`` is set.
    """
    if isinstance(when, datetime):
        dt = when if when.tzinfo is not None else when.astimezone()
        if utc:
            dt = dt.astimezone(UTC)
        nanos = dt.microsecond * 1000
    else:
        seconds, nanos = divmod(int(when), _NS_PER_S)
        dt = datetime.fromtimestamp(seconds, UTC)
        if not utc:
            dt = dt.astimezone()
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + _fraction(nanos) + _offset(dt.utcoffset())


def parse_time(text: str) -> datetime:
    """The inverse of ``format_time`` (sub-microsecond digits are dropped)."""
    return datetime.fromisoformat(text)


def _fraction(nanos: int) -> str:
    if not nanos:
        return ""
    return "." + f"{nanos:09d}".rstrip("0")


def _offset(offset: timedelta | None) -> str:
    minutes = int((offset or timedelta()).total_seconds()) // 60
    if minutes == 0:
        return "Z"
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{mins:02d}"


class SSEStream:
    """Native chunks in, a compatible route's server-sent events out (OpenAI's, the Responses
    API's, Anthropic's), ending once: when the native stream is done (``_events`` sets
    ``_finished``), or with the route's error event when it failed after it began."""

    def __init__(self) -> None:
        self._finished = False

    def feed(self, native_chunk: dict[str, Any]) -> list[bytes]:
        """SSE events for one native chunk; nothing after the stream has ended."""
        if self._finished:
            return []
        if "error" in native_chunk:
            return [self.error(str(native_chunk["error"]))]
        return self._events(native_chunk)

    def error(self, message: str) -> bytes:
        """The last event of a stream that failed after it began."""
        self._finished = True
        return self._error_event(message)

    def _events(self, native_chunk: dict[str, Any]) -> list[bytes]:
        raise NotImplementedError

    def _error_event(self, message: str) -> bytes:
        raise NotImplementedError
