"""bench_router.py's Markdown report: the tables, verdicts and profiles."""

from __future__ import annotations

from harness import banners, fmt, median
from router_profile import KEY_FRAMES
from router_setup import FAKE_MODEL, NUM_CTX, OTHER_CPU_NOISY, PROMPT, SEED, TARGET_P50_MS, TARGET_P99_MS, TARGET_RPS
from router_streams import Batch
from router_wrk import WrkRun


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


def key_summary(profile: dict) -> str:
    n = profile["samples"] or 1
    rows = [
        (profile["key"].get(label, 0) / n, label.lstrip("— ").split(" (")[0])
        for label, _, _, todo in KEY_FRAMES
        if todo
    ]
    return ", ".join(f"{name} {100 * share:.0f}%" for share, name in sorted(rows, reverse=True)[:5])


def render_profile(profile: dict, title: str, *, full: bool, router_runs: list[WrkRun]) -> list[str]:
    out = []
    n = profile["samples"] or 1
    kind = f"streamed, {profile['tokens']} tokens" if profile["stream"] else "non-streamed"
    out.append(f"### {title}\n")
    out.append(
        f"`py-spy record --threads --format raw --rate 100` on the router's gunicorn worker process during "
        f"{profile['seconds']:.0f} s of `wrk -c{profile['connections']}` {kind} load (the *py-spy attached* "
        f"row above; py-spy pauses the process for each sample, so that run is a little slower). Percentages "
        f"are shares of the **{profile['samples']:,} samples of the event-loop thread** (the thread that "
        f"serves requests; idle samples are not recorded, so this is its busy time). *self* = the function "
        f"itself was running; *total* = the function was on the stack.\n"
    )
    if full:
        out.append(
            "Threads of the process (py-spy samples vs. CPU time from `/proc/<pid>/task/<tid>/stat` over the "
            "same load):\n"
        )
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
        out.append(
            'py-spy decides "idle" heuristically: executor threads parked in `concurrent/futures/thread.py:'
            "_worker` (waiting for work) show up as samples although `/proc` says they used no CPU; that is why "
            "only the event-loop thread is analysed.\n"
        )
    out.append(f"#### {title}: one request's path (event-loop thread, total %)\n")
    out.append("| where | total % |")
    out.append("|---|---:|")
    for label, _, _, _ in KEY_FRAMES:
        out.append(f"| {label} | {100 * profile['key'].get(label, 0) / n:.1f} |")
    outside = profile["samples"] - profile["key"].get(KEY_FRAMES[0][0], 0)
    out.append(
        f"| not in any request's frames (uvloop's C code, Redis and socket callbacks, …) | {100 * outside / n:.1f} |"
    )
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
    for name, count in profile["self"][: 25 if full else 15]:
        out.append(f"| `{name}` | {100 * count / n:.1f} |")
    out.append("")
    out.append(
        "`asyncio/runners.py:Runner.run` as *self* is time spent in uvloop's C event loop (socket reads and "
        "writes, C callbacks) with no Python frame above it.\n"
    )
    out.append(f"#### {title}: top functions by total time (on the stack)\n")
    out.append("| file:function | total % |")
    out.append("|---|---:|")
    shown = 0
    for name, count in profile["total"]:
        if name.startswith(
            (
                "<module>",
                "gunicorn/",
                "uvicorn_worker/",
                "corral/cli/",
                "corral/router/serve.py",
                "uvicorn/_compat.py",
                "asyncio/runners.py",
                "asyncio/base_events.py",
            )
        ):
            continue  # the process's entry frames: on every stack
        out.append(f"| `{name}` | {100 * count / n:.1f} |")
        shown += 1
        if shown >= (30 if full else 15):
            break
    out.append("")
    out.append(f"#### {title}: what to optimise\n")
    rows = sorted(
        ((profile["key"].get(label, 0) / n, label, todo) for label, _, _, todo in KEY_FRAMES if todo), reverse=True
    )
    for share, label, todo in rows:
        if share >= 0.03:
            out.append(
                f"- **{label.lstrip('— ')}: {100 * share:.0f}%** of the event loop's busy time. "
                f"{todo[0].upper() + todo[1:]}."
            )
    if router_runs:
        ms = [r.ms_per_request for r in router_runs]
        out.append(
            f"- Budget: {TARGET_RPS:,.0f} req/s on one process means ≤ {1000 / TARGET_RPS:.1f} ms of CPU "
            f"per request; it costs {fmt(min(ms), 2)}–{fmt(max(ms), 2)} ms now, so the router's per-request "
            f"work has to shrink {min(ms) * TARGET_RPS / 1000:.0f}–{max(ms) * TARGET_RPS / 1000:.0f}×: no "
            f"single row above is enough on its own."
        )
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


SPLIT_PATHS = {
    "router": "router alone (no nginx)",
    "nginx": "nginx alone (no router)",
    "streams": "nginx + router, nginx streaming from the worker (CORRAL_DIRECT_STREAMING=true)",
}


def _split_table(batches: list[Batch]) -> list[str]:
    """--split: what each proxy adds on its own, beside what both add together, in the same run."""
    if not any(b.path in SPLIT_PATHS for b in batches):
        return []
    d_hops = _collect(batches, "direct", "hops")
    d_path = _network_path(batches, "direct")
    out = [
        "### Who adds what (`--split`: each proxy alone in front of the same worker, same run)\n",
        "| path | per token p50 added | p99 added | TTFT network path p50 added | p99 added "
        "| router µs / token | nginx µs / token |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    added: dict[str, float] = {}
    idle = {role: _idle_rate(batches, role) for role in ("router", "nginx")}
    per_token: dict[str, dict[str, float]] = {}
    cluster = ("cluster", "nginx + router (the cluster, routers relaying: the default)")
    for path, label in (*SPLIT_PATHS.items(), cluster):
        group = [b for b in batches if b.path == path]
        if not group:
            continue
        hops = _collect(batches, path, "hops")
        way = _network_path(batches, path)
        added[path] = pct(hops, 50) - pct(d_hops, 50)
        cpu = {
            role: median([max(b.cpu.get(role, 0.0) - idle[role] * b.wall_s, 0.0) * 1e6 / b.tokens for b in group])
            for role in ("router", "nginx")
        }
        per_token[path] = cpu
        out.append(
            f"| {label} | {fmt(added[path], 2)} | {fmt(pct(hops, 99) - pct(d_hops, 99), 2)} "
            f"| {fmt(pct(way, 50) - pct(d_path, 50), 2)} | {fmt(pct(way, 99) - pct(d_path, 99), 2)} "
            f"| {fmt(cpu['router'], 0)} | {fmt(cpu['nginx'], 0)} |"
        )
    out.append(
        "\nCPU per token: the process's CPU time during the path's batches, less its idle rate during the "
        "direct batches, ÷ tokens relayed (median over batches; placing and starting requests included)."
    )
    if {"router", "nginx", "cluster"} <= set(added):
        out.append(
            f"Per token at p50, router alone + nginx alone = {fmt(added['router'] + added['nginx'], 2)} ms; "
            f"both together add {fmt(added['cluster'], 2)} ms."
        )
    for path, how in (("streams", "nginx streaming from the worker"), ("cluster", "the routers relaying")):
        if path in per_token:
            router_cpu, nginx_cpu = per_token[path]["router"], per_token[path]["nginx"]
            verdict = "PASS" if router_cpu <= nginx_cpu else "FAIL"
            out.append(
                f"\n**Router CPU per token ≤ nginx's**, {how}: router {fmt(router_cpu, 0)} µs, nginx "
                f"{fmt(nginx_cpu, 0)} µs per token: **{verdict}**."
            )
    out.append("")
    return out


def build_report(
    args, meta: dict, batches: list[Batch], wrk_runs: list[WrkRun], profiles: dict[str, dict], problems: list[str]
) -> tuple[str, bool]:
    out: list[str] = []
    out.append("# Router benchmark: latency through nginx + router, and one router process's capacity\n")
    out.extend(
        banners(
            meta,
            problems,
            "**Problems**: some measurements failed or are missing",
            "**Noisy run**: other processes used the CPU during these measurements (this machine has 2 cores; "
            "the model, the router, nginx and the client already share them), so latencies are inflated and "
            "req/s understated; re-run on an idle machine before committing",
        )
    )
    out.append(f"- Date: {meta['date']}; total benchmark time {meta.get('total_s', 0):.0f} s")
    out.append(
        f"- Machine: {meta['nproc']} CPUs (`nproc`), {meta['cpu']}, {meta['mem']}; {meta['os']}; "
        f"Python {meta['python']}"
    )
    out.append(
        f"- Load average (1/5/15 min): {meta['load_start']} at start, {meta.get('load_end', 'n/a')} at end; "
        f"CPU pressure (some, avg10) {meta.get('psi_start', 'n/a')}% at start"
    )
    out.append(f"- Code: {meta.get('git', 'unknown')}")
    out.append(
        f"- Tools: {meta.get('nginx', '?')}, {meta.get('redis', '?')}, {meta.get('registry', '?')}, "
        f"{meta.get('wrk', '?')}, {meta.get('pyspy', '?')}"
    )
    out.append(f"- Command: `{meta['command']}`\n")

    # -- summary
    d_hops, c_hops = _collect(batches, "direct", "hops"), _collect(batches, "cluster", "hops")
    d_ttft, c_ttft = _collect(batches, "direct", "ttft"), _collect(batches, "cluster", "ttft")
    d_in, c_in = _collect(batches, "direct", "inbound"), _collect(batches, "cluster", "inbound")
    d_path, c_path = _network_path(batches, "direct"), _network_path(batches, "cluster")
    added = {}
    for name, d, c in (
        ("token", d_hops, c_hops),
        ("ttft", d_ttft, c_ttft),
        ("path", d_path, c_path),
        ("inbound", d_in, c_in),
    ):
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
    out.append(
        f"| 1a. added latency per token, 64 concurrent real streams: p50 ≤ {TARGET_P50_MS:g} ms, "
        f"p99 ≤ {TARGET_P99_MS:g} ms (CPU layout: {layout}) | p50 **{fmt(added['token'][0], 2)} ms**, "
        f"p99 **{fmt(added['token'][1], 2)} ms** | {v_token} |"
    )
    out.append(
        f"| 1b. added time to first token, network path only (request in + first token out) | "
        f"p50 **{fmt(added['path'][0], 2)} ms**, p99 **{fmt(added['path'][1], 2)} ms** | {v_path} |"
    )
    out.append(
        f"| 1c. time to first token as the client sees it (TTFT through the cluster − direct TTFT) | "
        f"p50 {fmt(added['ttft'][0], 1)} ms, p99 {fmt(added['ttft'][1], 1)} ms | {v_ttft} (no verdict: "
        f"see below) |"
    )
    if router_runs:
        ms = [r.ms_per_request for r in router_runs]
        conns = sorted({r.connections for r in router_runs})
        out.append(
            f"| 2. one router process against the PACED FAKE WORKER: ≥ {TARGET_RPS:,.0f} requests/s | "
            f"best **{best_rps:,.0f} req/s**, median {median([r.rps for r in router_runs]):,.0f} over "
            f"{len(router_runs)} non-streamed runs ({', '.join(map(str, conns))} connections); router CPU "
            f"{fmt(min(ms), 2)}–{fmt(max(ms), 2)} ms per request (median {fmt(median(ms), 2)}), i.e. at most "
            f"{1000 / min(ms):,.0f} req/s even with a whole core to itself | {rps_verdict} |"
        )
    else:
        out.append(
            f"| 2. one router process against the PACED FAKE WORKER: ≥ {TARGET_RPS:,.0f} requests/s | n/a | n/a |"
        )
    out.append("")
    out.append(
        "Added latency is a difference of percentiles of the same quantity measured on both paths in the same "
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
        "negative, and it gets no verdict.\n"
    )

    # -- part 1
    out.append("## 1. Latency through nginx + router (one real worker, concurrent streams)\n")
    if not batches:
        out.append("Not measured.\n")
    else:
        s0 = batches[0].streams[0]
        out.append(
            f"Setup: redis-server, docker-registry, one `{meta.get('worker_cmd', 'corral worker')}` "
            f"(CORRAL_NUM_THREADS=1, OLLAMA_NUM_PARALLEL={meta.get('parallel')}, OLLAMA_KEEP_ALIVE=-1, "
            f"OLLAMA_CONTEXT_LENGTH={NUM_CTX}), one `{meta.get('router_cmd', 'corral router')}` "
            f"(CORRAL_ROUTER_PROCESSES=1) and nginx {meta.get('nginx', '')} configured from "
            f"`services/corral/nginx/corral-up.conf` + `corral-proxy.conf`. Model `{meta.get('model')}` "
            f"({meta.get('model_mb', 0):.0f} MB) imported through nginx (`/api/blobs` + `/api/create`); worker "
            f"URL from `GET /api/cluster/workers`. Each batch: {args.streams} concurrent streaming "
            f'`/api/generate` requests (raw prompt "{PROMPT}", {s0.prompt_eval_count} prompt tokens, '
            f"num_predict {args.tokens}, temperature 0, seed {SEED}), one TCP connection each, all "
            f"connected before the first request is written; {args.rounds} batches per path after one "
            f"short warm-up batch per path (num_predict 4). Client: asyncio ({meta.get('loop', 'asyncio')}) on raw sockets, "
            f"JSON parsed after the batch.\n"
        )
        pinned = meta.get("args", {}).get("pin")
        if pinned:
            worker_cpus, proxy_cpus = pinned.split(":")
            out.append(
                f"**CPU layout: pinned.** The worker (every thread: llama.cpp's and its event loop) on CPU "
                f"{worker_cpus}; the router, nginx, Redis, the registry and this client on CPU {proxy_cpus} "
                f"(affinity of every thread, set again before each batch). Both paths see the same worker "
                f"on the same CPU; the router and nginx have a CPU that the model does not use, as they do "
                f"in any deployment where routers and workers are separate machines or pods.\n"
            )
        else:
            out.append(
                "**CPU layout: shared.** Every process may run on every CPU: the model (llama.cpp's thread "
                "and the worker's event loop), the router, nginx and the client compete for 2 cores, so "
                "a relayed line also waits for a CPU (`--pin 0:1` separates them).\n"
            )
        out.append("### Added by nginx + router (cluster − direct, ms)\n")
        out.append("| quantity | p50 added | p99 added | samples per path | verdict |")
        out.append("|---|---:|---:|---:|---|")
        out.append(
            f"| per token: worker wrote the line → client read it | **{fmt(added['token'][0], 2)}** "
            f"| **{fmt(added['token'][1], 2)}** | {len(d_hops):,} / {len(c_hops):,} | {v_token} |"
        )
        out.append(
            f"| request in: client wrote the request → worker started | {fmt(added['inbound'][0], 2)} "
            f"| {fmt(added['inbound'][1], 2)} | {len(d_in)} / {len(c_in)} | |"
        )
        out.append(
            f"| TTFT, network path only (request in + first token out) | **{fmt(added['path'][0], 2)}** "
            f"| **{fmt(added['path'][1], 2)}** | {len(d_path)} / {len(c_path)} | {v_path} |"
        )
        out.append(
            f"| TTFT as the client sees it | {fmt(added['ttft'][0], 1)} | {fmt(added['ttft'][1], 1)} "
            f"| {len(d_ttft)} / {len(c_ttft)} | {v_ttft} |"
        )
        out.append("")
        out.extend(_split_table(batches))
        out.append("### Absolute numbers per path (ms unless noted)\n")
        out.append("| | direct to the worker p50 | p99 | through nginx + router p50 | p99 |")
        out.append("|---|---:|---:|---:|---:|")
        for label, attr in (
            ("per token: worker wrote → client read", "hops"),
            ("request in: client wrote → worker started", "inbound"),
            ("time to first token (client)", "ttft"),
            ("worker: started → first token line created", "worker_ttft"),
            ("gap between consecutive tokens (client)", "gaps"),
            ("whole request (client)", "end"),
        ):
            d, c = _collect(batches, "direct", attr), _collect(batches, "cluster", attr)
            out.append(
                f"| {label} | {fmt(pct(d, 50), 2)} | {fmt(pct(d, 99), 2)} | {fmt(pct(c, 50), 2)} "
                f"| {fmt(pct(c, 99), 2)} |"
            )
        d_b = [b for b in batches if b.path == "direct"]
        c_b = [b for b in batches if b.path == "cluster"]
        out.append(
            f"| aggregate tok/s over the batch (median) | {fmt(median([b.tok_s for b in d_b]))} | "
            f"| {fmt(median([b.tok_s for b in c_b]))} | |"
        )
        out.append("")
        out.append("### CPU during the batches (cores: CPU seconds ÷ batch wall time, median over batches)\n")
        out.append("| path | worker | router | nginx | redis | client (this script) | other processes |")
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        groups = [("direct", d_b), ("through nginx + router", c_b)]
        groups += [
            (SPLIT_PATHS[path], [b for b in batches if b.path == path])
            for path in SPLIT_PATHS
            if any(b.path == path for b in batches)
        ]
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
        out.append(
            f"Router CPU per streamed request (whole router process group, less its idle rate of "
            f"{fmt(idle_rate * 1000, 1)} ms/s seen during the direct batches): {fmt(median(per_req), 2)} ms, "
            f"i.e. {fmt(median(per_tok), 0)} µs per relayed token, placing and starting the request "
            f"included; nginx {fmt(median(nginx_tok), 0)} µs per token. The worker runs llama.cpp with 1 "
            f"thread plus its own Python event loop, so it can use more than one core.\n"
        )
        out.append("### Batches\n")
        out.append(
            "| # | path | wall s | tok/s | TTFT p50 / p99 ms | per-token hop p50 / p99 ms | "
            "CPU s: worker / router / nginx / client | other processes |"
        )
        out.append("|---:|---|---:|---:|---|---|---|---|")
        for b in batches:
            ttft = [s.ttft for s in b.streams]
            hops = [h for s in b.streams for h in s.hops]
            cpu = " / ".join(fmt(b.cpu.get(r, 0.0), 2) for r in ("worker", "router", "nginx", "self"))
            others = f"{b.other_cores:.2f} cores" + (f" ({b.others})" if b.others else "")
            out.append(
                f"| {b.index} | {b.path} | {b.wall_s:.2f} | {b.tok_s:.0f} | {fmt(pct(ttft, 50))} / "
                f"{fmt(pct(ttft, 99))} | {fmt(pct(hops, 50), 2)} / {fmt(pct(hops, 99), 2)} | {cpu} | {others} |"
            )
        out.append("")

    # -- part 2
    out.append("## 2. Router capacity against the PACED FAKE WORKER\n")
    if not wrk_runs:
        out.append("Not measured.\n")
    else:
        out.append(
            f"Setup: a second `corral router` with CORRAL_ROUTER_PROCESSES=1 (Redis db 1, the same registry, "
            f"model `{FAKE_MODEL}` created there from the same GGUF) and {args.fake_workers} PACED FAKE "
            f"WORKER(s) (`loadtest/fake_worker.py --pace-ms 0`: registers in Redis like a worker and answers "
            f"at once with `--tokens` NDJSON lines; no model runs). `wrk -t1 -cC -dDs` POSTs "
            f'`{{"model":"{FAKE_MODEL}","prompt":"hi","stream":false}}` (or `"stream":true`) to '
            f"`/api/generate` on the router's own port (no nginx), and straight to the fake worker for "
            f"reference. Router CPU is the gunicorn worker process's user + system time from "
            f"`/proc/<pid>/stat`.\n"
        )
        out.append(
            "| run | target | stream, tokens | conns | **req/s** | p50 ms | p90 ms | p99 ms | p99.9 ms "
            "| errors | router CPU ms/req | router → worker connections after | cores: router / fake worker / "
            "redis / wrk | other processes |"
        )
        out.append("|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---|")
        for r in wrk_runs:
            errs = ", ".join(f"{k} {v}" for k, v in r.errors.items()) or "0"
            cores = " / ".join(fmt(r.cpu.get(role, 0.0) / r.seconds, 2) for role in ("router", "fake-1", "redis"))
            cores += f" / {fmt(r.wrk_cpu_s / r.seconds, 2)}"
            others = f"{r.other_cores:.2f} cores" + (f" ({r.others})" if r.others else "")
            out.append(
                f"| {r.label} | {r.target} | {'yes' if r.stream else 'no'}, {r.tokens} | {r.connections} "
                f"| **{r.rps:,.0f}** | {fmt(r.p50_ms, 1)} | {fmt(r.p90_ms, 1)} | {fmt(r.p99_ms, 1)} "
                f"| {fmt(r.p999_ms, 1)} | {errs} | {fmt(r.ms_per_request, 2) if r.target.startswith('router') else '–'} "
                f"| {r.upstream_conns if r.upstream_conns is not None else '–'} | {cores} | {others} |"
            )
        out.append("")
        out.append(
            f"Target: ≥ {TARGET_RPS:,.0f} req/s per router process: {rps_verdict} "
            f"(best router run {best_rps:,.0f} req/s). On 2 cores the router shares the machine with the "
            f"fake worker, Redis and wrk; *router CPU ms/req* is what one request costs the router process "
            f"whatever the machine, so 1000 ÷ it is the most one fully busy core could serve.\n"
        )

    out.extend(_auth_section(wrk_runs))

    # -- profile
    out.append("## 3. Where the router's CPU goes (py-spy) — analysis\n")
    if not profiles:
        out.append("Not measured.\n")
    for key, title in (
        ("nostream", "Non-streamed requests"),
        ("keys", "Non-streamed requests, API keys on"),
        ("stream", "Streamed requests"),
    ):
        if key in profiles:
            out.extend(
                render_profile(
                    profiles[key], title, full=key == "nostream", router_runs=router_runs if key == "nostream" else []
                )
            )
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


AUTH_TARGET_RATIO = 1.10  # issue 18: admitting a key adds at most 10% to the router's CPU per request
SIDE_BY_SIDE = " (side by side)"  # a run made while the other router was under the same load


def _auth_section(wrk_runs: list[WrkRun]) -> list[str]:
    """``--auth``: the router's CPU per request with API keys on against off, connection for connection.

    The verdict comes from the side-by-side runs: both routers loaded at once, pair by pair, the
    median of the pairs' ratios. Runs taken in turns are shown too; on a VM whose speed drifts
    between runs they scatter too much to decide 10%."""
    keyed = [r for r in wrk_runs if r.target == "router with keys"]
    if not keyed:
        return []
    out = [
        "### API keys on against off (`--auth`)\n",
        "The same router build and fake worker; the keyed router runs `CORRAL_AUTH=keys` and wrk sends a "
        "user key with an rpm limit, so every request runs the admission script (folded into the slot's "
        "acquire script: the key's record, its rpm window, its flight) and, when it ends, its usage update "
        "(folded into the slot's release). *Side by side*: a wrk against each router at the same time, both "
        "routers sharing the routers' CPUs, so that drift of the machine's speed hits both alike; the ratio is "
        "the median over those pairs. *In turns*: the runs above, one router after the other.\n",
        "| conns | pairs side by side | keys ÷ off per pair | **median keys ÷ off** | router CPU ms/req off "
        "/ keys (medians, side by side) | in turns: ms/req off / keys, ratio | req/s keys in turns (median) | "
        f"target ≤ {AUTH_TARGET_RATIO:.2f}× and ≥ {TARGET_RPS:,.0f} req/s |",
        "|---:|---:|---|---:|---|---|---:|---|",
    ]
    for c in sorted({r.connections for r in keyed}):
        off = [r for r in wrk_runs if r.target == "router" and r.connections == c and "py-spy" not in r.label]
        on = [r for r in keyed if r.connections == c]
        pairs_off = [r for r in wrk_runs if r.target == "router" + SIDE_BY_SIDE and r.connections == c]
        pairs_on = [r for r in wrk_runs if r.target == "router with keys" + SIDE_BY_SIDE and r.connections == c]
        if not off or not pairs_off:
            continue
        ratios = [b.ms_per_request / a.ms_per_request for a, b in zip(pairs_off, pairs_on)]
        ratio = median(ratios)
        turns_off, turns_on = median([r.ms_per_request for r in off]), median([r.ms_per_request for r in on])
        rps_on = median([r.rps for r in on])
        ok = ratio <= AUTH_TARGET_RATIO and rps_on >= TARGET_RPS
        out.append(
            f"| {c} | {len(ratios)} | {', '.join(f'{x:.2f}' for x in ratios)} | **{ratio:.2f}** "
            f"| {fmt(median([r.ms_per_request for r in pairs_off]), 3)} / "
            f"{fmt(median([r.ms_per_request for r in pairs_on]), 3)} "
            f"| {fmt(turns_off, 3)} / {fmt(turns_on, 3)}, {turns_on / turns_off:.2f} | {rps_on:,.0f} "
            f"| {'**PASS**' if ok else '**FAIL**'} |"
        )
    out.append("")
    return out
