"""Part 1 of bench_router.py: concurrent real streams on raw sockets, and what each token's timing says."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import CpuMeter, Deadline, OutOfTime, children
from router_setup import BATCH_TIMEOUT_S, SMALL_TIMEOUT_S


class _Body:
    """An HTTP/1.1 response body (chunked, Content-Length or until EOF) cut into NDJSON lines, each
    stamped with the wall-clock time (ns) at which its last byte was read."""

    def __init__(self, chunked: bool, length: int | None) -> None:
        self.chunked = chunked
        self.left = length
        self.raw = b""  # chunked framing not parsed yet
        self.need = 0  # payload bytes left in the current chunk
        self.crlf = 0  # framing bytes to skip after it
        self.text = b""  # payload of a line not finished yet
        self.done = False
        self.lines: list[bytes] = []
        self.arrivals: list[int] = []

    def feed(self, data: bytes, now: int) -> None:
        if not self.chunked:
            self._payload(data, now)
            if self.left is not None:
                self.left -= len(data)
                self.done = self.left <= 0
            return
        self.raw += data
        while self.raw and not self.done:
            if self.crlf:
                skip = min(self.crlf, len(self.raw))
                self.raw, self.crlf = self.raw[skip:], self.crlf - skip
            elif self.need:
                part = self.raw[: self.need]
                self.raw, self.need = self.raw[len(part) :], self.need - len(part)
                self._payload(part, now)
                if not self.need:
                    self.crlf = 2
            else:
                end = self.raw.find(b"\r\n")
                if end < 0:
                    return
                size = int(self.raw[:end].split(b";")[0], 16)
                self.raw = self.raw[end + 2 :]
                if size == 0:
                    self.done = True
                self.need = size

    def _payload(self, data: bytes, now: int) -> None:
        self.text += data
        while True:
            end = self.text.find(b"\n")
            if end < 0:
                return
            line, self.text = self.text[:end], self.text[end + 1 :]
            if line.strip():
                self.lines.append(line)
                self.arrivals.append(now)


@dataclass
class RawStream:
    send_ns: int  # wall clock when the request was written
    status: int
    lines: list[bytes]
    arrivals: list[int]  # wall clock (ns) of each line
    error: str = ""


async def _one_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> RawStream:
    send_ns = time.time_ns()
    try:
        writer.write(request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            data = await reader.read(65536)
            if not data:
                return RawStream(send_ns, 0, [], [], "connection closed before the response headers")
            buf += data
        now = time.time_ns()
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(b":")
            headers[key.strip().lower()] = value.strip().lower()
        length = headers.get(b"content-length")
        body = _Body(b"chunked" in headers.get(b"transfer-encoding", b""), int(length) if length else None)
        if rest:
            body.feed(rest, now)
        while not body.done:
            data = await reader.read(65536)
            now = time.time_ns()
            if not data:
                break
            body.feed(data, now)
        error = "" if body.done or not body.chunked else "connection closed mid-stream"
        return RawStream(send_ns, status, body.lines, body.arrivals, error)
    except (OSError, ValueError, IndexError) as exc:
        return RawStream(send_ns, 0, [], [], f"{type(exc).__name__}: {exc}")
    finally:
        writer.close()


async def _batch(port: int, path: str, body: bytes, n: int, timeout: float) -> list[RawStream]:
    """``n`` concurrent POSTs, each on its own connection (all opened before the first is sent)."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    conns = await asyncio.wait_for(
        asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(n))), SMALL_TIMEOUT_S
    )
    try:
        return await asyncio.wait_for(asyncio.gather(*(_one_stream(r, w, request) for r, w in conns)), timeout)
    except asyncio.TimeoutError:
        for _, w in conns:
            w.close()
        raise OutOfTime(f"a batch of {n} streams ran past {timeout:.0f} s") from None


def run_batch(port: int, body: bytes, n: int, deadline: Deadline) -> list[RawStream]:
    try:
        import uvloop  # the client must cost as little as possible: it shares 2 cores with the rest

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_batch(port, "/api/generate", body, n, deadline.left(BATCH_TIMEOUT_S)))
    finally:
        loop.close()


_SECONDS: dict[str, int] = {}


def parse_created_at(text: str) -> int:
    """``2025-10-26T17:21:21.196249123Z`` (the worker's RFC 3339 with ns) -> Unix ns."""
    head, _, frac = text.rstrip("Z").partition(".")
    seconds = _SECONDS.get(head)
    if seconds is None:
        seconds = _SECONDS[head] = int(dt.datetime.fromisoformat(head).replace(tzinfo=dt.timezone.utc).timestamp())
    return seconds * 1_000_000_000 + int((frac + "000000000")[:9])


@dataclass
class Stream:
    """One request's timings, in ms."""

    ttft: float  # request written -> first token line read
    inbound: float  # request written -> worker started on it (final created_at - total_duration)
    first_hop: float  # first token: worker created the line -> client read it
    worker_ttft: float  # worker started -> first token line created (prompt, scheduling)
    hops: list[float]  # every token line: worker created it -> client read it
    gaps: list[float]  # between consecutive token lines, as the client read them
    end: float  # request written -> final line read
    eval_count: int
    prompt_eval_count: int


def analyse(raw: RawStream, tokens: int) -> Stream:
    if raw.error or raw.status != 200:
        text = b"\n".join(raw.lines)[:300].decode(errors="replace")
        raise RuntimeError(f"stream failed: status {raw.status} {raw.error} {text}")
    parsed = [json.loads(line) for line in raw.lines]
    if not parsed or not parsed[-1].get("done") or any("error" in p for p in parsed):
        raise RuntimeError(f"stream ended without a final line or with an error: {raw.lines[-2:]}")
    final = parsed[-1]
    token_lines = [(p, t) for p, t in zip(parsed[:-1], raw.arrivals[:-1])]
    if not token_lines:
        raise RuntimeError("stream without token lines")
    if int(final.get("eval_count", 0)) != tokens:
        raise RuntimeError(f"eval_count {final.get('eval_count')} != num_predict {tokens}")
    created = [parse_created_at(p["created_at"]) for p, _ in token_lines]
    arrived = [t for _, t in token_lines]
    started = parse_created_at(final["created_at"]) - int(final["total_duration"])
    ms = 1e-6
    return Stream(
        ttft=(arrived[0] - raw.send_ns) * ms,
        inbound=(started - raw.send_ns) * ms,
        first_hop=(arrived[0] - created[0]) * ms,
        worker_ttft=(created[0] - started) * ms,
        hops=[(a - c) * ms for a, c in zip(arrived, created)],
        gaps=[(b - a) * ms for a, b in zip(arrived, arrived[1:])],
        end=(raw.arrivals[-1] - raw.send_ns) * ms,
        eval_count=int(final["eval_count"]),
        prompt_eval_count=int(final.get("prompt_eval_count", 0)),
    )


@dataclass
class Batch:
    path: str  # "direct" | "cluster" (nginx + router); with --split also "router" or "nginx" alone
    index: int
    wall_s: float  # first request written -> last final line read
    tokens: int  # eval_count summed over the streams
    cpu: dict[str, float]  # CPU seconds by role during the batch
    other_cores: float
    others: str
    streams: list[Stream] = field(default_factory=list)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall_s


def pin(pids: list[int], cpus: set[int]) -> None:
    """CPU affinity for every thread of these processes and of their children (as ``taskset -a``).
    Applied again before each batch: threads started since (a model load's) get it too. This
    process is pinned without its children: they are the services under test, each pinned on its
    own (following them would move a router or a worker onto the client's CPUs)."""
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid != os.getpid():
            todo += children(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                os.sched_setaffinity(int(task.name), cpus)
            except (OSError, ValueError):
                pass  # a thread that ended meanwhile


def measure_batch(
    path: str, index: int, port: int, body: bytes, n: int, tokens: int, meter: CpuMeter, deadline: Deadline
) -> Batch:
    before = meter.snapshot()
    raws = run_batch(port, body, n, deadline)
    used = meter.since(before)
    streams = [analyse(r, tokens) for r in raws]
    first = min(r.send_ns for r in raws)
    last = max(r.arrivals[-1] for r in raws)
    return Batch(
        path,
        index,
        (last - first) / 1e9,
        sum(s.eval_count for s in streams),
        dict(used),
        used.other_cores,
        used.top_others(),
        streams,
    )
