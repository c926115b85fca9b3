"""What can be checked of the compose stack without running it: the compose file parses and
uses the services' own variable names with .env.example's defaults, the Dockerfiles keep the
images' contract, the Prometheus config is valid, and every dashboard panel queries metrics the
services really export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from corral.router.settings import RouterSettings
from corral.worker.settings import WorkerSettings
from tests.support import dashboards

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
DOCKERFILES = sorted((REPO / "deploy" / "docker").glob("*.Dockerfile"))
# ${NAME:-default}, ${NAME-default} and ${NAME}
_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env_example() -> dict[str, str]:
    out = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            out[name.strip()] = value.strip()
    return out


def test_every_compose_variable_is_in_env_example_with_the_same_default():
    used: dict[str, set[str]] = {}
    for name, default in _VAR.findall(COMPOSE.read_text()):
        used.setdefault(name, set()).add(default)
    documented = env_example()
    assert set(used) == set(documented), (
        f"in compose.yaml only: {sorted(set(used) - set(documented))}; "
        f"in .env.example only: {sorted(set(documented) - set(used))}")
    for name, defaults in used.items():
        assert defaults == {documented[name]}, f"{name}: compose.yaml defaults {defaults}, .env.example {documented[name]!r}"


@pytest.mark.parametrize(("service", "settings"), [("router", RouterSettings), ("worker", WorkerSettings),
                                                   ("worker-cuda", WorkerSettings)])
def test_service_variables_are_ones_the_service_reads(service: str, settings: type):
    environment = compose()["services"][service]["environment"]
    ours = {k for k in environment if k.startswith(("OLLAMA_", "CORRAL_", "REDIS_"))}
    unknown = ours - set(settings.model_fields)
    assert not unknown, f"{service} is given variables it never reads: {sorted(unknown)}"
    # Everything a worker or router can be told is reachable from compose.
    if service != "worker-cuda":
        missing = {f for f in settings.model_fields if f.startswith(("OLLAMA_", "CORRAL_"))} - ours
        missing -= {"OLLAMA_HOST", "OLLAMA_MODELS", "CORRAL_SPOOL_DIR", "CORRAL_WORKER_ID", "CORRAL_WORKER_URL"}
        assert not missing, f"{service}: settings with no compose variable: {sorted(missing)}"


def test_compose_wiring():
    services = compose()["services"]
    assert services["nginx"]["ports"] == ["${CORRAL_BIND_ADDRESS:-0.0.0.0}:${CORRAL_PORT:-11434}:11434"]
    for name in ("router", "worker", "worker-cuda", "nginx", "preload"):
        assert services[name].get("depends_on"), name
    for name in ("redis", "registry", "nginx", "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name  # exec form
    devices = services["worker-cuda"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert services["worker-cuda"]["profiles"] == ["gpu"]
    assert services["preload"]["command"][:5] == ["pull", "--wait", "300", "--host", "http://nginx:11434"]


def test_compose_file_parses_with_the_installed_compose(tmp_path: Path):
    if shutil.which("docker-compose"):
        command = ["docker-compose"]
    elif shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        command = ["docker", "compose"]
    else:
        pytest.skip("neither docker-compose (Debian: apt-get install docker-compose) nor the compose plugin is installed")
    for profile in ([], ["--profile", "gpu"]):
        done = subprocess.run([*command, "-f", str(COMPOSE), *profile, "config", "-q"], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)
        assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_contract(dockerfile: Path):
    text = dockerfile.read_text()
    instructions = [line for line in re.sub(r"\\\n", " ", text).splitlines() if line and not line.startswith("#")]
    froms = [line for line in instructions if line.startswith("FROM ")]
    assert len(froms) >= 2, "multi-stage: a build stage and a final stage"
    stages: set[str] = set()
    for line in froms:  # a base is a build arg, or a stage above
        base = line.split()[1]
        assert re.fullmatch(r"\$\{[A-Z_]+\}", base) or base in stages, f"bases come from build args: {froms}"
        stages.update(re.findall(r" AS (\S+)$", line))
    last_stage = text[text.rindex("\nFROM "):]
    assert "USER 10001:10001" in last_stage
    assert re.search(r"^HEALTHCHECK .*CMD \[", last_stage, re.M | re.S), "a health check, exec form"
    assert 'ENTRYPOINT ["corral"]' in last_stage
    assert re.search(r'^CMD \["(router|worker)"\]$', last_stage, re.M)
    assert "--uid 10001" in last_stage


def test_prometheus_config_is_valid():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    done = subprocess.run([promtool, "check", "config", str(REPO / "deploy/prometheus/prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    jobs = {job["job_name"]: job for job in yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
            ["scrape_configs"]}
    assert jobs["router"]["dns_sd_configs"][0]["names"] == ["router"]
    assert jobs["worker"]["dns_sd_configs"][0]["names"] == ["worker"]


def test_dashboards_are_complete():
    loaded = dashboards.load()
    assert set(loaded) == {"cluster.json", "models.json", "tenants.json", "workers.json"}
    uids = [d["uid"] for d in loaded.values()]
    assert len(set(uids)) == len(uids)
    for name, dashboard in loaded.items():
        panels = dashboards.panels(dashboard)
        assert panels, name
        assert len({p["id"] for p in panels}) == len(panels), f"{name}: panel ids repeat"
        for panel in panels:
            where = f"{name} / {panel['title']}"
            assert panel["datasource"] == {"type": "prometheus", "uid": dashboards.DATASOURCE_UID}, where
            assert panel["targets"], f"{where}: no query"
            for target in panel["targets"]:
                assert target["expr"].strip(), where
                assert target.get("datasource", panel["datasource"])["uid"] == dashboards.DATASOURCE_UID, where
    # The folder compose mounts is the one Grafana's provider reads.
    provider = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/corral.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/corral"
    assert "./helm/corral/dashboards:/var/lib/grafana/dashboards/corral:ro" in compose()["services"]["grafana"]["volumes"]
    json.dumps(loaded)  # plain JSON, nothing Grafana-export-specific (no __inputs to fill)
    assert all("__inputs" not in d for d in loaded.values())


def test_dashboards_query_metrics_the_services_export():
    source = "\n".join(p.read_text() for p in (REPO / "services" / "corral").rglob("*.py"))
    exported = set(re.findall(r'"(corral_[a-z_]+)"', source))
    histogram_parts = ("_bucket", "_count", "_sum")
    unknown = {}
    for query in dashboards.queries():
        for name in dashboards.metric_names(query.expr):
            base = next((name.removesuffix(s) for s in histogram_parts if name.endswith(s)), name)
            if name in ("up",) or name.startswith("process_"):
                continue
            if base not in exported:
                unknown.setdefault(name, []).append(str(query))
    assert not unknown, "metrics no service exports:\n" + "\n".join(f"  {n}: {qs[0]}" for n, qs in unknown.items())
