"""Child processes: how ``corral up``, the tests and the benchmarks start the servers they run
(Redis, the registry, nginx, workers, routers), wait for them, stop them, and read their logs.

Each child leads its own process group, so stopping it stops what it started too (a router's
gunicorn workers, nginx's workers). ``stop`` sends the child its own stop signal (nginx
shuts down gracefully on SIGQUIT, not SIGTERM), waits, then SIGKILLs the group.

``watched=True`` runs the command under a small shell whose stdin is a pipe from this process:
when this process dies, even by SIGKILL, the pipe reads EOF and the command gets its stop
signal, so a test run or a benchmark that is killed leaves nothing behind. The shell exits with
the command's status (``poll()`` sees an early exit); on SIGTERM it forwards the stop signal
and waits for the command (a finished ``wait()`` means the port is free). ``corral up`` does
not watch its children: it stops them itself, and its children lead their groups directly.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple

from corral.api.errors import CorralError

# $0 is the child's name (what ps shows), $1 the stop signal's name, the rest the command.
WATCHDOG = """
sig=$1; shift
"$@" </dev/null & pid=$!
trap 'kill -s $sig $pid 2>/dev/null; wait $pid; exit $?' TERM
exec 3<&0 0</dev/null
(read _ <&3; kill -s $sig $pid 2>/dev/null) &
wait $pid
"""


class ChildError(CorralError):
    """A child exited during start-up or did not become ready; the message carries its log's end."""


class Probe(NamedTuple):
    """Where a child answers ``GET path`` with 200 once it is up."""

    host: str
    port: int
    path: str = "/"


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    log: Path | None = None  # None: output discarded
    ready: Probe | None = None
    stop_signal: int = signal.SIGTERM
    watched: bool = False
    cwd: Path | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    def start(self, *, append: bool = True) -> Child:
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            out = self.log.open("ab" if append else "wb")
        argv = self.argv
        if self.watched:
            argv = ["sh", "-c", WATCHDOG, self.name, signal.Signals(self.stop_signal).name[3:], *self.argv]
        try:
            self.process = subprocess.Popen(
                argv,
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE if self.watched else subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            if not isinstance(out, int):
                out.close()  # the child has its own copy
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def tail(self, chars: int = 3000) -> str:
        return tail(self.log, chars) if self.log is not None else "(no log)"

    def wait_ready(self, timeout: float) -> None:
        """Until ``ready`` answers 200 (at once without a probe); ChildError if the child exits
        first or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise ChildError(
                    f"{self.name} exited during start-up (code {self.exit_code}); its log ({self.log}):\n{self.tail()}"
                )
            if self.ready is None or answers(self.ready):
                return
            if time.monotonic() >= deadline:
                raise ChildError(
                    f"{self.name} did not become ready in {timeout:.0f} s; its log ({self.log}):\n{self.tail()}"
                )
            time.sleep(0.1)

    def _log_end(self) -> str:
        return f"; its log ({self.log}):\n{self.tail()}" if self.log is not None else ""

    def stop(self, timeout: float = 20.0) -> None:
        """The stop signal, then SIGKILL to the group after ``timeout`` s; safe when already gone."""
        if self.process is not None:
            stop_group(self.process, timeout, self.stop_signal)


def stop_group(process: subprocess.Popen, timeout: float = 20.0, stop_signal: int = signal.SIGTERM) -> None:
    """Stop the child ``process`` leads and its process group. A watched child's shell gets
    SIGTERM (it forwards its stop signal); any other leader gets ``stop_signal`` directly."""
    watched = process.stdin is not None
    if process.stdin is not None:
        process.stdin.close()  # the watchdog's own way in, too
    if process.poll() is None:
        try:
            if watched:
                process.terminate()
            else:
                os.killpg(process.pid, stop_signal)
            process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
    # Gone or hung: whatever is left in its group (a leader killed alone leaves its children).
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass


def answers(probe: Probe) -> bool:
    conn = http.client.HTTPConnection(probe.host, probe.port, timeout=1)
    try:
        conn.request("GET", probe.path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def free_port() -> int:
    """A loopback port free now (the caller's child binds it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, chars: int = 3000) -> str:
    """The end of a log, for error messages."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class ProcInfo:
    """A process as /proc shows it. Redis and nginx rewrite their argv over their environment:
    for them ``argv`` is the process title and ``env`` is empty."""

    pid: int
    ppid: int
    pgid: int
    started: int  # clock ticks after boot: with the pid, it names the process
    argv: list[str]
    env: dict[str, str]
    state: str  # R, S, D, Z (zombie)...

    @property
    def alive(self) -> bool:
        now = read_proc(self.pid)
        return now is not None and now.started == self.started and now.state not in ("Z", "X")


def read_proc(pid: int) -> ProcInfo | None:
    """None once the process is gone; ``env`` is empty where it is not ours to read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                raw_env = f.read().split(b"\0")
        except PermissionError:
            raw_env = []
    except (OSError, IndexError):
        return None
    env = dict(item.decode(errors="replace").split("=", 1) for item in raw_env if b"=" in item)
    while argv and argv[-1] == "":  # the terminating NUL (an empty argument inside stays)
        argv.pop()
    return ProcInfo(pid, int(fields[1]), int(fields[2]), int(fields[19]), argv, env, fields[0])


def all_processes() -> list[ProcInfo]:
    found = (read_proc(int(entry.name)) for entry in os.scandir("/proc") if entry.name.isdigit())
    return [p for p in found if p is not None]
