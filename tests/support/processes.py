"""Child processes the tests start (Redis, the registry, sentinels, ``corral up``): one way to
start them so that they never outlive the test process, one way to stop them.

``start_watched`` runs a command under a small shell whose stdin is a pipe from this process:
when this process dies, even by SIGKILL, the pipe reads EOF and the command is killed. The shell
exits with the command's status (so ``poll()`` sees an early exit), and on SIGTERM it stops the
command and waits for it (so a finished ``wait()`` means its port is free). Each runs in its own
process group, which ``stop_group`` ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import IO

WATCHDOG = """
"$@" </dev/null & pid=$!
trap 'kill $pid 2>/dev/null; wait $pid; exit $?' TERM
exec 3<&0 0</dev/null
(read _ <&3; kill $pid 2>/dev/null) &
wait $pid
"""


def start_watched(
    name: str,
    argv: list[str],
    *,
    out: IO[bytes] | int = subprocess.DEVNULL,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    """``argv`` under the watchdog (``name`` is the shell's $0, what ``ps`` shows)."""
    return subprocess.Popen(
        ["sh", "-c", WATCHDOG, name, *argv],
        stdin=subprocess.PIPE,
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )


def stop_group(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """Stop the process group (the shell, the command, the watchdog) led by ``process``."""
    if process.stdin:
        process.stdin.close()  # ends the watchdog
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=timeout)


def tail(path: Path, lines: int = 40) -> str:
    """The end of a log, for failure messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
