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
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corral.store.manifest import file_digest  # noqa: E402
from harness import (  # noqa: E402  (loadtest/harness.py: what the load tests share)
    ROOT,
    CpuMeter,
    Deadline,
    OutOfTime,
    Service,
    Worker,
    cpu_pressure,
    exit_on_sigterm,
    exit_status,
    loadavg,
    machine,
    save,
)
from router_profile import profile_router  # noqa: E402
from router_report import SIDE_BY_SIDE, build_report, key_summary, pct  # noqa: E402
from router_services import FakeWorker, Nginx, Redis, Registry, Router  # noqa: E402
from router_setup import (
    DEFAULT_MODEL,
    FAKE_MODEL,
    LOAD_TIMEOUT_S,
    MODEL_NAME,
    NGINX_BINARY,
    NUM_CTX,
    OTHER_CPU_NOISY,
    PROMPT,
    REDIS_BINARY,
    REGISTRY_BINARY,
    SEED,
    SMALL_TIMEOUT_S,
    WRK_BINARY,
    cluster_worker_url,
    generate_once,
    git_state,
    import_model,
    version_of,
)  # noqa: E402
from router_streams import Batch, Stream, measure_batch, pin  # noqa: E402
from router_wrk import WrkRun, run_wrk, wrk_script  # noqa: E402

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
    p.add_argument(
        "--model",
        type=Path,
        default=Path(os.environ.get("CORRAL_TEST_MODEL", DEFAULT_MODEL)),
        help="GGUF for part 1 (and the registry entry of part 2)",
    )
    p.add_argument(
        "--profile-out",
        type=Path,
        default=None,
        help="also write py-spy's raw collapsed stacks here (for flamegraph.pl / speedscope)",
    )
    p.add_argument(
        "--auth",
        action="store_true",
        help="part 2: also run a router with API keys on (CORRAL_AUTH=keys, a user key with an rpm "
        "limit) at the same connections, for the cost of admitting a key",
    )
    p.add_argument(
        "--split",
        action="store_true",
        help="part 1: also measure the router alone and nginx alone in front of the worker",
    )
    p.add_argument(
        "--pin",
        default="",
        metavar="WORKER_CPUS:PROXY_CPUS",
        help="part 1 only: pin the worker to some CPUs and the router, nginx, Redis, the registry and "
        "this client to others, e.g. 0:1 (default: everything shares every CPU)",
    )
    p.add_argument(
        "--pin-routers",
        default="",
        metavar="ROUTER_CPUS:OTHER_CPUS",
        help="part 2 only: pin the routers to some CPUs and the fake workers, Redis, the registry, wrk and "
        "this client to others, e.g. 1:0, so that the routers' CPU per request is measured without them",
    )
    p.add_argument(
        "--report-from",
        type=Path,
        default=None,
        help="measure nothing: rebuild the report from a file written by --json",
    )
    p.add_argument("--keep-tmp", action="store_true", help=argparse.SUPPRESS)  # debugging: keep logs and configs
    p.add_argument("--out", type=Path, default=ROOT / "loadtest/reports/router.md", help="Markdown report path")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results as JSON")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=1200,
        help="give up after this long (exit 3; partial report); a quiet machine needs ~5-6 min",
    )
    args = p.parse_args(argv)
    args.part_set = {x.strip() for x in args.parts.split(",") if x.strip()}
    if not args.part_set or args.part_set - {"latency", "capacity"}:
        p.error("--parts takes latency, capacity or both")

    def cpu_sets(text: str, flag: str, form: str) -> tuple[set[int], set[int]] | None:
        """``A:B`` (each a comma list of CPUs) as two disjoint sets of this machine's CPUs."""
        if not text:
            return None
        try:
            first, second = ({int(c) for c in side.split(",")} for side in text.split(":"))
        except ValueError:
            p.error(f"{flag} takes {form}, e.g. 0:1 or 0:1,2,3")
        if first & second or not (first | second) <= os.sched_getaffinity(0):
            p.error(f"{flag}: two disjoint sets of this machine's CPUs")
        return first, second

    args.pin_cpus = cpu_sets(args.pin, "--pin", "WORKER_CPUS:PROXY_CPUS")
    args.pin_router_cpus = cpu_sets(args.pin_routers, "--pin-routers", "ROUTER_CPUS:OTHER_CPUS")
    try:
        args.connection_list = [int(c) for c in args.connections.split(",") if c.strip()]
    except ValueError:
        p.error("--connections: comma-separated integers")
    if (
        args.streams < 1
        or args.tokens < 2
        or args.rounds < 1
        or args.wrk_seconds < 1
        or args.fake_workers < 1
        or args.wrk_repeats < 1
    ):
        p.error("--streams, --rounds, --wrk-seconds, --wrk-repeats, --fake-workers must be >= 1, --tokens >= 2")
    return args


_ARG_KEYS = (
    "streams",
    "tokens",
    "rounds",
    "wrk_seconds",
    "fake_workers",
    "profile_connections",
    "pin",
    "split",
    "auth",
    "pin_routers",
)
BENCH_ADMIN_KEY = "bench-admin-key-0123456789"
WARM_UP_S = 3  # part 2: each router's unrecorded wrk run before the measured ones


def rebuild(args: argparse.Namespace) -> int:
    """--report-from: the report again from a --json file (e.g. after changing how reports are written)."""
    raw = json.loads(args.report_from.read_text())
    for key, value in raw["meta"].get("args", {}).items():
        setattr(args, key, value)
    batches = [Batch(**{**b, "streams": [Stream(**x) for x in b["streams"]]}) for b in raw["batches"]]
    wrk_runs = [WrkRun(**r) for r in raw["wrk"]]
    report, ok = build_report(args, raw["meta"], batches, wrk_runs, raw.get("profiles") or {}, raw["problems"])
    save(report, args.out, None, raw)
    print(
        f"[bench] report rebuilt from {args.report_from} into {args.out}; targets {'met' if ok else 'NOT met (FAIL)'}"
    )
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
        print(
            f"[bench] missing: {', '.join(missing)} (apt-get install redis-server docker-registry nginx wrk; "
            f".venv/bin/pip install py-spy)",
            file=sys.stderr,
        )
        return 2
    if not args.model.is_file():
        print(
            f"[bench] model not found: {args.model} (./scripts/test downloads it, or set CORRAL_TEST_MODEL)",
            file=sys.stderr,
        )
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
        "nginx": version_of([NGINX_BINARY, "-v"]).replace("nginx version: ", ""),
        "redis": "Redis " + version_of([REDIS_BINARY, "--version"]).split("v=")[-1].split()[0],
        "registry": "Distribution " + version_of([REGISTRY_BINARY, "--version"]).split()[-1],
        "wrk": version_of([WRK_BINARY, "-v"]).split(" [")[0],
        "pyspy": version_of([str(Path(sys.executable).parent / "py-spy"), "--version"]),
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
        meta["busy"].append(
            f"at start: other processes used {idle.other_cores:.2f} cores ({idle.top_others()}), "
            f"load {meta['load_start']}, CPU pressure {meta['psi_start']}%"
        )
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
        digest = file_digest(args.model)
        meta["digest"] = digest
        phase = "redis and registry start"
        redis = start(Redis(tmp), "redis")
        registry = start(Registry(tmp), "registry")
        created = False

        if "latency" in args.part_set:
            phase = "part 1 start"
            worker = Worker(
                tmp,
                {
                    "CORRAL_NUM_THREADS": "1",
                    "OLLAMA_NUM_PARALLEL": str(meta["parallel"]),
                    "REDIS_URL": redis.redis_url(0),
                    "CORRAL_REGISTRY_URL": registry.url,
                    "OLLAMA_KEEP_ALIVE": "-1",
                    "OLLAMA_CONTEXT_LENGTH": str(NUM_CTX),
                    "CORRAL_WORKER_ID": "bench-worker",
                    "CORRAL_REGISTRY_MIRRORS": None,
                    "OLLAMA_NOPRUNE": None,
                    "PROMETHEUS_MULTIPROC_DIR": None,
                },
            )
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

            body = {
                "model": MODEL_NAME,
                "prompt": PROMPT,
                "raw": True,
                "stream": True,
                "options": {"num_predict": args.tokens, "temperature": 0, "seed": SEED},
            }
            phase = "first request (model load)"
            t0 = time.perf_counter()
            generate_once(
                nginx.url, {**body, "options": {**body["options"], "num_predict": 2}}, deadline.left(LOAD_TIMEOUT_S)
            )
            print(f"[bench] model loaded through the cluster in {time.perf_counter() - t0:.1f} s", flush=True)
            payload = json.dumps(body, separators=(",", ":")).encode()
            ports = {"direct": direct_port, "cluster": nginx.port}
            if args.split:  # each proxy alone in front of the worker, to see who adds what
                nginx_alone = start(Nginx(tmp, [direct_port], "nginx-alone"), "nginx")
                # The cluster with CORRAL_DIRECT_STREAMING=true: nginx streams from the worker and
                # the router only places the request.
                placing = start(
                    Router(tmp, "router-direct", redis.redis_url(0), registry.url, {"CORRAL_DIRECT_STREAMING": "true"}),
                    "router",
                )
                nginx_streams = start(Nginx(tmp, [placing.port], "nginx-streams"), "nginx")
                proxies += [nginx_alone, placing, nginx_streams]
                ports |= {"router": router.port, "nginx": nginx_alone.port, "streams": nginx_streams.port}
            warm_tokens = 4  # a short warm-up batch per path: connection pools, the worker's slots
            warm_payload = json.dumps(
                {**body, "options": {**body["options"], "num_predict": warm_tokens}}, separators=(",", ":")
            ).encode()
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
                print(
                    f"[bench] {phase}: {b.wall_s:.2f} s, {b.tok_s:.0f} tok/s, TTFT p50 "
                    f"{pct([s.ttft for s in b.streams], 50):.1f} ms, hop p50/p99 {pct(hops, 50):.2f}/"
                    f"{pct(hops, 99):.2f} ms, router {b.cpu.get('router', 0):.2f} s CPU, others "
                    f"{b.other_cores:.2f} cores",
                    flush=True,
                )
            phase = "part 1 stop"
            for service in (*proxies[::-1], worker):
                stop(service)

        if "capacity" in args.part_set:
            phase = "part 2 start"
            fakes = [
                start(FakeWorker(tmp, f"fake-{i + 1}", redis.redis_url(1), 1), f"fake-{i + 1}")
                for i in range(args.fake_workers)
            ]
            router = start(Router(tmp, "router-2", redis.redis_url(1), registry.url), "router")
            rpid = router.worker_pid()
            if not created:
                phase = "model import through the router"
                import_model(router.url, args.model, digest, [FAKE_MODEL])
            phase = "warm-up (placing the model on the fake worker)"
            for _ in range(20):
                final = generate_once(
                    router.url, {"model": FAKE_MODEL, "prompt": "hi", "stream": False}, deadline.left(SMALL_TIMEOUT_S)
                )
                if not final.get("done"):
                    raise RuntimeError(f"unexpected reply from the router: {final}")
            script = wrk_script(tmp, stream=False)
            common = dict(seconds=args.wrk_seconds, meter=meter, deadline=deadline)
            upstream = fakes[0].port if args.fake_workers == 1 else None

            def record(run: WrkRun) -> None:
                wrk_runs.append(run)
                note(run.other_cores, run.others, f"wrk {run.label}")
                print(
                    f"[bench] wrk {run.label}: {run.rps:,.0f} req/s, p50 {run.p50_ms:.1f} ms, p99 "
                    f"{run.p99_ms:.1f} ms, errors {run.n_errors}, router {run.ms_per_request:.2f} ms CPU/req, "
                    f"others {run.other_cores:.2f} cores",
                    flush=True,
                )

            phase = "wrk against the fake worker"
            record(
                run_wrk(
                    "fake worker, non-streamed",
                    "fake worker (direct)",
                    fakes[0].url + "/api/generate",
                    script,
                    stream=False,
                    tokens=1,
                    connections=max(args.connection_list),
                    router_pid=None,
                    **common,
                )
            )

            # The routers measured: without keys, and (--auth) with keys, taking turns run by run
            # so that drift on the machine falls on both alike.
            targets = [("router", router.url, script, rpid)]
            keyed = None
            if args.auth:
                phase = "a router with API keys"
                keyed = start(
                    Router(
                        tmp,
                        "router-keys",
                        redis.redis_url(1),
                        registry.url,
                        {"CORRAL_AUTH": "keys", "CORRAL_ADMIN_KEY": BENCH_ADMIN_KEY},
                    ),
                    "router-keys",
                )
                made = httpx.post(
                    keyed.url + "/api/cluster/keys",
                    json={"name": "bench", "rpm": 100_000_000},
                    headers={"Authorization": f"Bearer {BENCH_ADMIN_KEY}"},
                    timeout=SMALL_TIMEOUT_S,
                )
                made.raise_for_status()
                keyed_script = wrk_script(tmp, stream=False, key=made.json()["key"])
                targets.append(("router with keys", keyed.url, keyed_script, keyed.worker_pid()))
            if args.pin_router_cpus:
                pin([router.pid] + ([keyed.pid] if keyed is not None else []), args.pin_router_cpus[0])
                pin([f.pid for f in fakes] + [redis.pid, registry.pid, os.getpid()], args.pin_router_cpus[1])

            def router_run(label: str, target: str, url: str, wrk_lua: Path, pid: int, c: int, **extra) -> WrkRun:
                """One non-streamed wrk run against a router of ``targets``."""
                return run_wrk(
                    label,
                    target,
                    url + "/api/generate",
                    wrk_lua,
                    stream=False,
                    tokens=1,
                    connections=c,
                    router_pid=pid,
                    **{**common, **extra},
                )

            for target, url, wrk_lua, pid in targets:
                # Not recorded: a router's first seconds under load (its first connections to the
                # worker, Redis loading its scripts, a key's first admissions) are not its steady cost.
                phase = f"wrk warm-up of the {target}"
                router_run(
                    f"{target}, warm-up", target, url, wrk_lua, pid, max(args.connection_list), seconds=WARM_UP_S
                )
            for c in args.connection_list:
                for i in range(args.wrk_repeats):
                    for target, url, wrk_lua, pid in targets:
                        phase = f"wrk against the {target}, {c} connections, run {i + 1}"
                        label = f"{target}, non-streamed, c={c}"
                        record(router_run(label, target, url, wrk_lua, pid, c, upstream_port=upstream))
            if keyed is not None:
                # Keys on against off, side by side: both routers under the same load at the same
                # time, sharing their CPUs, so that the machine's drift (this VM's CPU time per
                # request moves by a third from one run to the next) falls on both alike.
                for c in args.connection_list:
                    for i in range(args.wrk_repeats):
                        phase = f"wrk against both routers at once, {c} connections, run {i + 1}"
                        with ThreadPoolExecutor(len(targets)) as pool:
                            pair = [
                                pool.submit(
                                    router_run,
                                    f"{target}, non-streamed, c={c}, side by side",
                                    target + SIDE_BY_SIDE,
                                    url,
                                    wrk_lua,
                                    pid,
                                    c,
                                )
                                for target, url, wrk_lua, pid in targets
                            ]
                            for run in pair:
                                record(run.result())

            def profiled(target: str, service: Router, wrk_lua: Path, suffix: str) -> dict:
                """A wrk run with py-spy attached to ``service``'s gunicorn worker; its profile."""
                out = args.profile_out
                raw = out.with_name(out.stem + suffix + out.suffix) if out else None
                found, run = profile_router(
                    tmp,
                    f"{target}, non-streamed, c={args.profile_connections}, py-spy attached",
                    service,
                    service.url + "/api/generate",
                    wrk_lua,
                    stream=False,
                    tokens=1,
                    connections=args.profile_connections,
                    seconds=args.wrk_seconds,
                    meter=meter,
                    deadline=deadline,
                    raw_out=raw,
                    upstream_port=upstream,
                )
                record(run)
                return found

            if keyed is not None:
                phase = "py-spy profile of the router with keys"
                profiles["keys"] = profiled("router with keys", keyed, keyed_script, "-keys")
                stop(keyed)

            phase = "py-spy profile of the router"
            profile = profiled("router", router, script, "")
            profiles["nostream"] = profile
            print(f"[bench] profile: {profile['samples']} event-loop samples; " + key_summary(profile), flush=True)

            if args.stream_tokens:
                phase = f"restart the fake worker with {args.stream_tokens} tokens"
                for i, fake in enumerate(list(fakes)):
                    port = fake.port
                    stop(fake)
                    fakes[i] = start(
                        FakeWorker(tmp, fake.id, redis.redis_url(1), args.stream_tokens, port=port), fake.id
                    )
                script = wrk_script(tmp, stream=True)
                c = max(args.connection_list)
                phase = "wrk against the fake worker, streamed"
                record(
                    run_wrk(
                        "fake worker, streamed",
                        "fake worker (direct)",
                        fakes[0].url + "/api/generate",
                        script,
                        stream=True,
                        tokens=args.stream_tokens,
                        connections=c,
                        router_pid=None,
                        **common,
                    )
                )
                phase = "wrk against the router, streamed"
                record(
                    run_wrk(
                        f"router, streamed, c={c}",
                        "router",
                        router.url + "/api/generate",
                        script,
                        stream=True,
                        tokens=args.stream_tokens,
                        connections=c,
                        router_pid=rpid,
                        upstream_port=upstream,
                        **common,
                    )
                )
                phase = "py-spy profile of the router, streamed"
                raw_out = (
                    args.profile_out.with_name(args.profile_out.stem + "-stream" + args.profile_out.suffix)
                    if args.profile_out
                    else None
                )
                profile, run = profile_router(
                    tmp,
                    f"router, streamed, c={c}, py-spy attached",
                    router,
                    router.url + "/api/generate",
                    script,
                    stream=True,
                    tokens=args.stream_tokens,
                    connections=c,
                    seconds=args.wrk_seconds,
                    meter=meter,
                    deadline=deadline,
                    raw_out=raw_out,
                    upstream_port=upstream,
                )
                profiles["stream"] = profile
                record(run)
                print(
                    f"[bench] profile (streamed): {profile['samples']} event-loop samples; " + key_summary(profile),
                    flush=True,
                )
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
    save(
        report,
        args.out,
        args.json,
        {
            "meta": meta,
            "batches": [asdict(b) for b in batches],
            "wrk": [asdict(r) for r in wrk_runs],
            "profiles": profiles,
            "problems": problems,
        },
    )
    print(f"[bench] report written to {args.out}; targets {'met' if ok else 'NOT met (FAIL)'}")
    return exit_status(meta, problems)


if __name__ == "__main__":
    sys.exit(main())
