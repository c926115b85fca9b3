"""Part 2 of bench_router.py: one router process's capacity, measured with wrk."""

from __future__ import annotations

import json
import os
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import CpuMeter, Deadline, OutOfTime, proc_stat
from router_setup import FAKE_MODEL, WRK_BINARY, WRK_GRACE_S

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


def wrk_script(tmp: Path, stream: bool, key: str = "") -> Path:
    """wrk's script: the request (with ``key`` as a bearer token, if given) and the JSON summary."""
    body = json.dumps({"model": FAKE_MODEL, "prompt": "hi", "stream": stream}, separators=(",", ":"))
    path = tmp / f"wrk-{'stream' if stream else 'nostream'}{'-key' if key else ''}.lua"
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else ""
    path.write_text(auth + WRK_SCRIPT % body)
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


def run_wrk(
    label: str,
    target: str,
    url: str,
    script: Path,
    *,
    stream: bool,
    tokens: int,
    connections: int,
    seconds: float,
    meter: CpuMeter,
    router_pid: int | None,
    deadline: Deadline,
    upstream_port: int | None = None,
) -> WrkRun:
    limit = deadline.left(seconds + WRK_GRACE_S)
    cmd = [WRK_BINARY, "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "10s", "-s", str(script), url]
    before = meter.snapshot()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    router0 = proc_stat(router_pid)[2] if router_pid else 0.0
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
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
    data = json.loads(found[-1][len("WRKJSON ") :])
    return WrkRun(
        label=label,
        target=target,
        stream=stream,
        tokens=tokens,
        connections=connections,
        seconds=data["duration_us"] / 1e6,
        requests=data["requests"],
        errors={k: data[k] for k in ("connect", "read", "write", "status", "timeout") if data[k]},
        p50_ms=data["p50"] / 1000,
        p90_ms=data["p90"] / 1000,
        p99_ms=data["p99"] / 1000,
        p999_ms=data["p999"] / 1000,
        router_worker_cpu_s=router_cpu,
        cpu=dict(used),
        wrk_cpu_s=(r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime),
        other_cores=used.other_cores,
        others=used.top_others(),
        upstream_conns=tcp_connections_to(upstream_port) if upstream_port else None,
    )
