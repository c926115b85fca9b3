import json
import re
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from corral.api.streams import (
    SSE_DONE,
    format_time,
    iso_now,
    ndjson_line,
    parse_time,
    sse_event,
)


def test_ndjson_line_is_compact_utf8_and_newline_terminated():
    line = ndjson_line({"model": "llama3.2", "response": "héllo ✓", "done": False})
    assert line == '{"model":"llama3.2","response":"héllo ✓","done":false}\n'.encode()
    assert line.count(b"\n") == 1


def test_ndjson_line_escapes_newlines_inside_strings():
    # A newline in the text must not split the NDJSON record.
    line = ndjson_line({"response": "a\nb"})
    assert line == b'{"response":"a\\nb"}\n'
    assert json.loads(line) == {"response": "a\nb"}


@pytest.mark.parametrize(
    "payload, expected",
    [
        ({"a": 1, "b": [1, 2]}, b'data: {"a":1,"b":[1,2]}\n\n'),
        ({"text": "ü"}, 'data: {"text":"ü"}\n\n'.encode()),
        ("[DONE]", b"data: [DONE]\n\n"),
    ],
)
def test_sse_event(payload, expected):
    assert sse_event(payload) == expected


def test_sse_done():
    assert SSE_DONE == b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    "when, expected",
    [
        (datetime(2025, 10, 26, 17, 21, 21, 196249, UTC), "2025-10-26T17:21:21.196249Z"),
        (datetime(2025, 10, 26, 17, 21, 21, 196000, UTC), "2025-10-26T17:21:21.196Z"),
        (datetime(2025, 10, 26, 17, 21, 21, 0, UTC), "2025-10-26T17:21:21Z"),
        (
            datetime(2024, 5, 1, 10, 0, 0, 123456, timezone(timedelta(hours=-7))),
            "2024-05-01T10:00:00.123456-07:00",
        ),
        (
            datetime(2024, 5, 1, 10, 0, 0, 500000, timezone(timedelta(hours=5, minutes=30))),
            "2024-05-01T10:00:00.5+05:30",
        ),
        # Unix nanoseconds keep all nine digits, trimmed like Go.
        (1761499281196249123, "2025-10-26T17:21:21.196249123Z"),
        (1761499281000000000, "2025-10-26T17:21:21Z"),
        (1761499281100000000, "2025-10-26T17:21:21.1Z"),
    ],
)
def test_format_time_like_go_rfc3339nano(when, expected):
    utc = isinstance(when, int)
    assert format_time(when, utc=utc) == expected


@pytest.fixture
def los_angeles(monkeypatch):
    if not hasattr(time, "tzset"):
        pytest.skip("needs time.tzset")
    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_format_time_uses_local_offset_for_tags(los_angeles):
    # 2024-05-01T17:00:00.123456789Z is 10:00 in Los Angeles (PDT, -07:00)
    mtime_ns = 1714582800123456789
    assert format_time(mtime_ns) == "2024-05-01T10:00:00.123456789-07:00"
    naive_local = datetime(2024, 5, 1, 10, 0, 0, 123456)
    assert format_time(naive_local) == "2024-05-01T10:00:00.123456-07:00"
    assert format_time(naive_local, utc=True) == "2024-05-01T17:00:00.123456Z"


def test_iso_now_is_utc_and_trimmed():
    before = time.time()
    stamp = iso_now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,8}[1-9])?Z", stamp), stamp
    assert abs(parse_time(stamp).timestamp() - before) < 5


def test_parse_time_reads_nanoseconds_and_offsets():
    parsed = parse_time("2024-05-01T10:00:00.123456789-07:00")
    assert parsed == datetime(2024, 5, 1, 17, 0, 0, 123456, UTC)
    assert parse_time("2025-10-26T17:21:21Z").tzinfo is not None
