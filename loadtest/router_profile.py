"""Part 2 of bench_router.py: where a router process spends its CPU, sampled with py-spy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from harness import CLK_TCK, CpuMeter, Deadline
from router_services import Router
from router_setup import WRK_GRACE_S
from router_wrk import WrkRun, run_wrk

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
_RUN_ASGI = [
    "uvicorn/protocols/http/httptools_impl.py:RequestResponseCycle.run_asgi",
    "uvicorn/protocols/http/h11_impl.py:RequestResponseCycle.run_asgi",
]
_ENDPOINT = ["corral/router/forward.py:ForwardEndpoint.__call__"]
KEY_FRAMES = [
    ("everything a request does (uvicorn's ASGI cycle)", _RUN_ASGI, [], ""),
    (
        "— middleware around the inference routes (FastAPI/Starlette's outer layers, Corral's access and metrics "
        "middlewares, the shortcut past FastAPI's routing)",
        _RUN_ASGI,
        _ENDPOINT,
        "serve the inference routes from an ASGI app in front of FastAPI altogether (its outer layers — telemetry, "
        "body limit, server errors — run for every request)",
    ),
    ("— the inference endpoint (`ForwardEndpoint`: read, place, forward, relay)", _ENDPOINT, [], ""),
    (
        "—— reading and parsing the body (`_read_body`, `decode_json`)",
        ["corral/router/forward.py:_read_body", "corral/api/http.py:decode_json"],
        [],
        "the worker validates the body again: the router only needs `model` and `keep_alive`",
    ),
    (
        "—— model lookup (`Dispatcher.model_size`: a per-name cache, then the registry store)",
        ["corral/router/dispatch.py:Dispatcher.model_size"],
        [],
        "",
    ),
    (
        "—— taking a slot (`Dispatcher.lease`: the acquire script, worker list refresh)",
        ["corral/router/dispatch.py:Dispatcher.lease"],
        [],
        "",
    ),
    (
        "—— sending to the worker and waiting for its answer's head (`Upstream.post`)",
        ["corral/router/upstream.py:Upstream.post"],
        [],
        "",
    ),
    ("—— relaying the answer (`_relay`: body pieces to uvicorn's `send`)", ["corral/router/forward.py:_relay"], [], ""),
    (
        "——— giving the slot back (`Dispatcher.finish`: the release script)",
        ["corral/router/dispatch.py:Dispatcher.finish"],
        [],
        "",
    ),
    ("—— watching for the client leaving (a task per request)", ["corral/router/forward.py:_watch"], [], ""),
    (
        "HTTP parsing of incoming requests (uvicorn + httptools)",
        ["uvicorn/protocols/http/httptools_impl.py:HttpToolsProtocol.data_received"],
        [],
        "",
    ),
    (
        "the worker connection's callbacks (`router/upstream.py`: parsing replies)",
        ["corral/router/upstream.py:_Connection.data_received"],
        [],
        "",
    ),
    (
        "the per-request Redis connection (`router/redis_lane.py`)",
        ["corral/router/redis_lane.py:RedisLane.evalsha", "corral/router/redis_lane.py:_Protocol.data_received"],
        [],
        "",
    ),
    ("any redis-py call (worker list, reaper, generation checks off the hot path)", ["redis/"], [], ""),
    (
        "— reading the worker list (`live_workers`, every 0.5 s, one read shared by all requests)",
        ["corral/cluster/workers.py:live_workers"],
        [],
        "",
    ),
    ("any httpx / httpcore / h11 frame (unloads, /api/ps: off the hot path)", ["httpx/", "httpcore/", "h11/"], [], ""),
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
            frames = frames[loop_at + 1 :]
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
        "threads": [
            {
                "tid": tid,
                "name": names.get(tid, "?"),
                "samples": count,
                "top_leaf": leafs.get(tid, Counter()).most_common(1)[0][0] if leafs.get(tid) else "?",
            }
            for tid, count in threads.most_common()
        ],
        "self": self_fn.most_common(),
        "total": incl_fn.most_common(),
        "self_pkg": self_pkg.most_common(),
        "total_pkg": incl_pkg.most_common(),
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
    fields = text[text.rindex(")") + 2 :].split()
    return name, (int(fields[11]) + int(fields[12])) / CLK_TCK


def profile_router(
    tmp: Path,
    label: str,
    router: Router,
    url: str,
    script: Path,
    *,
    stream: bool,
    tokens: int,
    connections: int,
    seconds: float,
    meter: CpuMeter,
    deadline: Deadline,
    raw_out: Path | None,
    upstream_port: int | None = None,
) -> tuple[dict, WrkRun]:
    """A wrk run against the router with ``py-spy record`` attached to its gunicorn worker process."""
    pid = router.worker_pid()
    out = tmp / f"router-profile-{'stream' if stream else 'nostream'}.txt"
    pyspy = Path(sys.executable).parent / "py-spy"
    limit = deadline.left(seconds + WRK_GRACE_S)
    cmd = [
        str(pyspy),
        "record",
        "--threads",
        "--format",
        "raw",
        "--rate",
        "100",
        "--duration",
        str(int(seconds) + 2),
        "--pid",
        str(pid),
        "--output",
        str(out),
    ]
    spy = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    try:
        time.sleep(1.0)  # py-spy attaches
        before = thread_cpu(pid)
        run = run_wrk(
            label,
            "router",
            url,
            script,
            stream=stream,
            tokens=tokens,
            connections=connections,
            seconds=seconds,
            meter=meter,
            router_pid=pid,
            deadline=deadline,
            upstream_port=upstream_port,
        )
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
        (
            {"tid": tid, "name": name, "cpu_s": cpu - before.get(tid, (name, 0.0))[1]}
            for tid, (name, cpu) in after.items()
        ),
        key=lambda t: -t["cpu_s"],
    )
    profile["seconds"] = run.seconds
    profile["label"] = label
    profile["connections"] = connections
    profile["stream"] = stream
    profile["tokens"] = tokens
    return profile, run
