"""What the load tests in this folder share: time limits, statistics, machine facts, child processes.

``bench_worker.py``, ``bench_pull.py`` and ``bench_router.py`` import it as ``harness``; run as
``.venv/bin/python loadtest/bench_*.py`` from the repository root, Python puts this folder on
``sys.path`` first, and each script also inserts it, so that importing them from elsewhere works.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from corral.supervise import Child, Probe, free_port  # noqa: F401 (free_port: the scripts import it from here)

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0  # a registry or worker starting up


# -- time limits --------------------------------------------------------------------------


class OutOfTime(Exception):
    """A phase ran past its own time limit or past --max-seconds."""


class Deadline:
    """The whole run's time limit (--max-seconds); each phase asks it for its own."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self, cap: float) -> float:
        """``cap`` seconds, or fewer if the run has fewer left; OutOfTime when it has none."""
        left = self.end - time.monotonic()
        if left <= 1:
            raise OutOfTime("ran past --max-seconds")
        return min(cap, left)


def _raise_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that try/finally stops the child processes on it too."""
    signal.signal(signal.SIGTERM, _raise_on_sigterm)


# -- statistics and formatting --------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def best(values) -> float:
    """The largest value (the least disturbed run: interference only slows runs down), or nan."""
    values = list(values)
    return max(values) if values else float("nan")


def fmt(x: float, digits: int = 1) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def samples(values: list[float], digits: int = 1) -> str:
    return ", ".join(fmt(v, digits) for v in values) or "n/a"


# -- the machine ----------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError):
        pass
    return "RAM unknown"


def gpu_name() -> str | None:
    """The NVIDIA GPUs nvidia-smi lists (name, memory, driver), or None without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return "; ".join(line.strip() for line in out.splitlines() if line.strip()) or None


def loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def cpu_pressure() -> float | None:
    """PSI 'some' avg10 for the CPU: % of the last 10 s in which a runnable task waited."""
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some"):
                return float(line.split("avg10=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        pass
    return None


def machine() -> dict:
    """The first fields of a report's ``meta``: date, nproc, cpu, mem, gpu (None without one), os, python."""
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "mem": mem_total(),
        "gpu": gpu_name(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


# -- CPU time from /proc ---------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_stat(pid: int) -> tuple[int, int, float] | None:
    """(ppid, session id, user + system CPU seconds of all its threads) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    # after "pid (comm) ": state ppid pgrp session ... utime(14th) stime(15th)
    return int(fields[1]), int(fields[3]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM / ... of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if key.startswith("Vm") and len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid``."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat and stat[0] == pid:
                out.append(int(entry.name))
    return sorted(out)


def comm(pid: int) -> str:
    """A process's command line (first words, at most 80 characters)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        words = [w.decode(errors="replace") for w in cmd if w][:4]
        return " ".join(words)[:80] or Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


class CpuMeter:
    """CPU seconds over an interval, by role: each role is a process session (a Service started with
    its own session counts with everything it forks), this process is ``self``, and every other
    process on the machine (not kernel threads, not our direct children) is an *other*.

        meter = CpuMeter(); meter.add("router", router.pid)
        before = meter.snapshot(); ...; used = meter.since(before)   # {"router": 1.2, "self": 0.4, ...}
        used.others  # {pid: seconds} of everybody else
    """

    def __init__(self) -> None:
        self.roles: dict[int, str] = {}  # session id -> role

    def add(self, role: str, session: int) -> None:
        self.roles[session] = role

    def snapshot(self) -> dict:
        me = os.getpid()
        roles = dict.fromkeys(self.roles.values(), 0.0)
        roles["self"] = 0.0
        others: dict[int, float] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            stat = proc_stat(pid)
            if stat is None:
                continue
            ppid, sid, cpu = stat
            if pid == me:
                roles["self"] += cpu
            elif sid in self.roles:
                roles[self.roles[sid]] += cpu
            elif pid != 2 and ppid not in (me, 2):
                others[pid] = cpu
        return {"roles": roles, "others": others, "t": time.monotonic()}

    def since(self, before: dict) -> "CpuUse":
        after = self.snapshot()
        roles = {role: after["roles"][role] - before["roles"].get(role, 0.0) for role in after["roles"]}
        others = {pid: cpu - before["others"].get(pid, 0.0) for pid, cpu in after["others"].items()
                  if cpu - before["others"].get(pid, 0.0) > 0}
        return CpuUse(roles, others, after["t"] - before["t"])


class CpuUse(dict):
    """CPU seconds by role over ``seconds`` of wall time; ``others`` holds everybody else's, by pid."""

    def __init__(self, roles: dict[str, float], others: dict[int, float], seconds: float) -> None:
        super().__init__(roles)
        self.others = others
        self.seconds = seconds

    @property
    def other_cores(self) -> float:
        return sum(self.others.values()) / self.seconds if self.seconds > 0 else float("nan")

    def top_others(self, limit: int = 3) -> str:
        busiest = sorted(self.others.items(), key=lambda kv: -kv[1])[:limit]
        return ", ".join(f"`{comm(pid)}` {100 * cpu / self.seconds:.0f}%" for pid, cpu in busiest
                         if self.seconds > 0 and cpu / self.seconds >= 0.02)


def busy_reason(window_s: float = 1.0, *, after_own_load: bool = False) -> tuple[str | None, float | None]:
    """Why the machine looks too busy for clean numbers (None if it doesn't), and CPU pressure.

    Looks at what *other* processes use over ``window_s``, not the load average: right after a
    benchmark's own busy phase that still reads ~2 on an otherwise idle machine. CPU pressure is
    a 10 s average, so ``after_own_load`` (a check at the end) reports it but does not count it."""
    meter = CpuMeter()
    before = meter.snapshot()
    time.sleep(window_s)
    used = meter.since(before)
    psi = cpu_pressure()
    if used.other_cores > 0.10 or (not after_own_load and (psi or 0) > 10):
        return (f"other processes used {used.other_cores:.2f} cores ({used.top_others()}), "
                f"CPU pressure {psi}%"), psi
    return None, psi


# -- child processes ------------------------------------------------------------------------


class Service:
    """An HTTP server in a child process on loopback ``port`` (``corral.supervise.Child``: its
    own process group, output in ``log_path``), started at once."""

    name = "service"  # for error messages
    ready_path = "/"  # answers 200 once the server is up

    def __init__(self, cmd: list[str], port: int, log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.child = Child(self.name, cmd, env=env, log=log_path, ready=Probe("127.0.0.1", port, self.ready_path),
                           cwd=cwd).start(append=False)
        assert self.child.process is not None
        self.process = self.child.process

    @property
    def pid(self) -> int:
        return self.child.pid

    def log_tail(self, n: int = 4000) -> str:
        return self.child.tail(n)

    def wait_ready(self, deadline: Deadline) -> None:
        """Until ``GET ready_path`` answers 200; ChildError if the process exits or it takes too long."""
        self.child.wait_ready(deadline.left(START_TIMEOUT_S))

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL after 20 s; safe to call when it has already exited."""
        self.child.stop(20)


class Worker(Service):
    """A real ``corral worker`` on a free loopback port with a fresh store in ``tmp/models``.

    ``env`` adds to this process's environment (OLLAMA_HOST, OLLAMA_MODELS and PYTHONPATH are set
    here); a value of None removes that variable.
    """

    name = "worker"

    def __init__(self, tmp: Path, env: dict[str, str | None]) -> None:
        port = free_port()
        self.models = tmp / "models"
        full = {
            **os.environ,
            "OLLAMA_HOST": f"127.0.0.1:{port}",
            "OLLAMA_MODELS": str(self.models),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "services"), os.environ.get("PYTHONPATH")])),
        }
        for key, value in env.items():
            if value is None:
                full.pop(key, None)
            else:
                full[key] = value
        entry = Path(sys.executable).parent / "corral"
        cmd = [str(entry), "worker"] if entry.exists() else [sys.executable, "-m", "corral.cli", "worker"]
        self.command = " ".join(Path(cmd[0]).name if i == 0 else c for i, c in enumerate(cmd))
        super().__init__(cmd, port, tmp / "worker.log", env=full, cwd=ROOT)


# -- the report -----------------------------------------------------------------------------


def banners(meta: dict, problems: list[str], problems_head: str, busy_head: str) -> list[str]:
    """The quoted notes a report opens with: incomplete run, ``problems``, ``meta['busy']``."""
    out = []
    if meta.get("incomplete"):
        out.append(f"> **INCOMPLETE RUN**: {meta['incomplete']}; what was measured before that is below, "
                   "anything missing reads n/a.\n")
    for head, items in ((problems_head, problems[:20]), (busy_head, meta["busy"][:12])):
        if items:
            out.append(f"> {head}:\n>")
            out.extend(f"> - {item}" for item in items)
            out.append("")
    return out


def save(report: str, out: Path, json_path: Path | None, raw: dict) -> None:
    """Write the Markdown report (and ``raw`` as JSON when asked for), then print the report."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(raw, indent=2))
    print()
    print(report)


def exit_status(meta: dict, problems: list[str]) -> int:
    """3 when the run gave up (partial report), 1 when something went wrong, else 0."""
    if "incomplete" in meta:
        return 3
    return 1 if problems else 0
