"""The progress of a pull, push or create, drawn from the server's status stream.

On a terminal it is ``ollama``'s display, on stderr (stdout stays for what a command prints):
a line per step with a spinner while it runs (``pulling manifest``), a bar per layer with
percent, size, rate and time left (``pulling dde5aa3fc5ff:  45% ▕████      ▏ 900 MB/2.0 GB``),
redrawn in place by ``rich``. Anywhere else (a log, a pipe, a CI job, compose's preload) it is
a plain log: one line per step, never one per progress tick, prefixed with the model's name.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from corral.cli.units import human_bytes

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
FRAME_S = 0.1
RATE_BUCKETS = 10  # the rate is taken over the last ten seconds, one sample a second


def eta(seconds: int) -> str:
    if seconds >= 100 * 3600:
        return "99h+"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60}s"
    return f"{seconds}s"


class Bar:
    def __init__(self, label: str, total: int, initial: int) -> None:
        self.label, self.total, self.initial = label, total, initial
        self.completed = initial
        self.started = time.monotonic()
        self.buckets: list[tuple[float, int]] = []

    def set(self, completed: int) -> None:
        self.completed = min(completed, self.total)
        now = time.monotonic()
        if not self.buckets or now - self.buckets[-1][0] > 1:
            self.buckets = [*self.buckets, (now, self.completed)][-RATE_BUCKETS:]

    def rate(self) -> float:
        if len(self.buckets) == 1:
            elapsed = round(self.buckets[0][0] - self.started)
            return (self.buckets[0][1] - self.initial) / elapsed if elapsed else 0.0
        if len(self.buckets) > 1:
            elapsed = round(self.buckets[-1][0] - self.buckets[0][0])
            return (self.buckets[-1][1] - self.buckets[0][1]) / elapsed if elapsed else 0.0
        return 0.0

    def render(self, width: int) -> str:
        percent = self.completed / self.total * 100 if self.total else 0.0
        pre = f"{self.label.strip()} {percent:3.0f}%"
        done = self.completed >= self.total
        if done:
            suf = f"{human_bytes(self.total):>6}" + " " * 7
        else:
            suf = f"{human_bytes(self.completed):>6}/{human_bytes(self.total):>6}"
        rate = 0.0 if done else self.rate()
        suf += f"  {human_bytes(int(rate)):>6}/s" if rate > 0 else " " * 10
        suf += f"  {eta(int((self.total - self.completed) / rate)):>6}" if rate > 0 else " " * 8
        room = max(0, width - len(pre) - len(suf) - 5)
        filled = int(room * percent / 100)
        return f"{pre} ▕{'█' * filled}{' ' * (room - filled)}▏ {suf}"


class Progress:
    """Feed it each status object of the stream (``update``); ``close`` when it ends.
    ``kind``: ``pull`` labels layer bars ``pulling <id>:`` and skips their 0% lines, as ollama's
    pull does; other kinds label a bar with the server's status."""

    def __init__(self, name: str, *, kind: str = "", out: TextIO | None = None, terminal: bool | None = None) -> None:
        self.name, self.kind = name, kind
        self.out = out or sys.stderr
        self.terminal = self.out.isatty() if terminal is None else terminal
        self.steps: list[str | Bar] = []
        self.bars: dict[str, Bar] = {}
        self.running = False  # the last step is a spinner still turning
        self.last_status = ""
        self.started = time.monotonic()
        self.live: Live | None = None
        if self.terminal:
            console = Console(file=self.out, highlight=False, soft_wrap=True)
            self.live = Live(console=console, refresh_per_second=10, get_renderable=self._render)
            self.live.start()

    def update(self, event: dict[str, Any]) -> None:
        status = str(event.get("status") or "").strip()
        digest = str(event.get("digest") or "")
        total, completed = event.get("total"), event.get("completed")
        if digest and isinstance(total, int) and total > 0:
            completed = completed if isinstance(completed, int) else 0
            bar = self.bars.get(digest)
            if bar is None:
                if self.kind == "pull" and completed == 0:
                    return
                short = digest.removeprefix("sha256:").strip()[:12]
                label = f"pulling {short}:" if self.kind == "pull" else status or f"pulling {short}..."
                bar = self.bars[digest] = Bar(label, total, completed)
                self.steps.append(bar)
                self.running = False
            bar.set(completed)
        elif status and status != self.last_status:
            self.steps.append(status)
            self.running = True
        if status and status != self.last_status:
            if self.live is None:
                print(f"{self.name}: {status}", file=self.out, flush=True)
            self.last_status = status

    def _render(self) -> Group:
        width = shutil.get_terminal_size().columns
        frame = SPINNER[int((time.monotonic() - self.started) / FRAME_S) % len(SPINNER)]
        lines = []
        for i, step in enumerate(self.steps):
            if isinstance(step, Bar):
                lines.append(Text(step.render(width)))
            elif self.running and i == len(self.steps) - 1:
                lines.append(Text(f"{step} {frame} "))
            else:
                lines.append(Text(f"{step} "))
        return Group(*lines)

    def close(self) -> None:
        if self.live is not None:
            self.running = False
            self.live.stop()
            self.live = None
