"""``docker compose up`` for real: the images built from deploy/docker, the stack from
compose.yaml, the model preloaded through a registry mirror, the real clients through nginx,
a worker container killed under service, Prometheus scraping every replica, every dashboard
query returning data, ``--scale worker=3``, and ``down -v``.

Docker Hub is unreachable here: the images are built on a local debootstrap base (tests/e2e/
engine.py) and redis/registry/nginx/prometheus are stand-ins built from Debian packages
(deploy/docker/standins/), swapped in with compose.yaml's own ``CORRAL_*_IMAGE`` variables.
Grafana has no Debian package: it is left out of the run and its dashboards' queries are
checked against the stack's Prometheus instead. Where no Docker engine can be had the module
skips, saying why. The engine is driven with docker-py; compose with whichever Compose is
installed (v2 plugin, else Debian's docker-compose 1.29 with ``--compatibility`` so that
``deploy.replicas`` applies, as v2 always does). Traffic stays on loopback and the stack's own
bridge network.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import ollama
import pytest

from tests.support import dashboards, engine
from tests.support.images import png
from tests.support.load import short_load
from tests.support.model import MODEL_NAME
from tests.support.projector import write_projector
from tests.support.registries import seed_model
from tests.support.servers import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILES = [REPO / "compose.yaml", Path(__file__).with_name("compose.e2e.yaml")]
# Everything but Grafana (no stand-in) and the gpu profile.
SERVICES = ["redis", "registry", "router", "worker", "nginx", "prometheus", "preload"]
COMPOSE_TIMEOUT_S = 420.0
HEALTHY_TIMEOUT_S = 120.0
PRELOAD_TIMEOUT_S = 240.0
DATA_TIMEOUT_S = 90.0


def compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return [docker, "compose"]
    v1 = shutil.which("docker-compose")
    return [v1, "--compatibility"] if v1 else None


@dataclass
class Stack:
    client: object  # docker.DockerClient
    cli: list[str]
    project: str
    env: dict[str, str]
    endpoint: str
    prometheus: str
    env_file: str  # empty: a developer's .env must not change the test
    timings: dict[str, float] = field(default_factory=dict)
    preload_log: str = ""

    def compose(self, *args: str, timeout: float = COMPOSE_TIMEOUT_S) -> subprocess.CompletedProcess:
        files = [a for f in COMPOSE_FILES for a in ("-f", str(f))]
        command = [*self.cli, "-p", self.project, "--project-directory", str(REPO), "--env-file", self.env_file,
                   *files, *args]
        done = subprocess.run(command, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(command[2:])} failed ({done.returncode}):\n{done.stderr[-4000:]}"
                                 f"\n--- containers ---\n{self.logs()}")
        return done

    def containers(self, service: str | None = None, *, all: bool = False) -> list:
        labels = [f"com.docker.compose.project={self.project}"]
        if service:
            labels.append(f"com.docker.compose.service={service}")
        return self.client.containers.list(all=all, filters={"label": labels})

    def wait_healthy(self, services: list[str], timeout: float = HEALTHY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            waiting = []
            for service in services:
                found = self.containers(service)
                states = [c.attrs["State"].get("Health", {}).get("Status") for c in found]
                if not found or any(s != "healthy" for s in states):
                    waiting.append(f"{service}: {states or 'no container'}")
            if not waiting:
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"not healthy in {timeout:.0f}s: {waiting}\n{self.logs()}")
            time.sleep(1)

    def logs(self, tail: int = 40) -> str:
        out = []
        for container in self.containers(all=True):
            try:
                text = container.logs(tail=tail).decode(errors="replace")
            except Exception as exc:  # noqa: BLE001 - a container may be gone already
                text = f"(no logs: {exc})"
            out.append(f"--- {container.name} ({container.status}) ---\n{text}")
        return "\n".join(out)

    def ips(self, service: str) -> set[str]:
        ips = set()
        for container in self.containers(service):
            container.reload()
            for network in container.attrs["NetworkSettings"]["Networks"].values():
                ips.add(network["IPAddress"])
        return ips

    @contextlib.contextmanager
    def explained(self) -> Iterator[None]:
        """A failure carries the containers' logs with it."""
        try:
            yield
        except AssertionError as exc:
            raise AssertionError(f"{self.logs()}\n\n{exc}") from exc  # the failure last, where a tail shows it


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, gguf_path: Path) -> Iterator[Stack]:
    client = engine.engine()
    if isinstance(client, str):
        pytest.skip(f"no Docker engine: {client}")
    cli = compose_cli()
    if cli is None:
        pytest.skip("no Compose: neither the docker compose plugin nor docker-compose (Debian: apt-get install docker-compose)")
    timings: dict[str, float] = {}
    started = time.monotonic()
    images = engine.build_images(client, "corral-e2e", "test", timings)
    timings["build (all images)"] = time.monotonic() - started
    tmp = tmp_path_factory.mktemp("compose")
    env_file = tmp / "empty.env"
    env_file.write_text("")
    port, prometheus_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_HOST", "LANG")},
        "CORRAL_IMAGE_REGISTRY": "corral-e2e", "CORRAL_VERSION": "test",
        "CORRAL_REDIS_IMAGE": images.redis, "CORRAL_REGISTRY_IMAGE": images.registry,
        "CORRAL_NGINX_IMAGE": images.nginx, "CORRAL_PROMETHEUS_IMAGE": images.prometheus,
        "CORRAL_BIND_ADDRESS": "127.0.0.1", "CORRAL_PORT": str(port), "PROMETHEUS_PORT": str(prometheus_port),
        "GRAFANA_PORT": str(free_port()),
        "CORRAL_REGISTRY_MIRRORS": "registry.ollama.ai=http://upstream:5000",
        "CORRAL_PRELOAD": MODEL_NAME,  # = registry.ollama.ai/library/smollm2:135m, through the mirror
        "CORRAL_NUM_THREADS": "1",  # two workers on a 2-core machine
    }
    project = f"corral-e2e-{uuid.uuid4().hex[:8]}"
    s = Stack(client, cli, project, env, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prometheus_port}",
              str(env_file), timings)
    try:
        started = time.monotonic()
        s.compose("up", "-d", "--no-build", "upstream")
        s.wait_healthy(["upstream"])
        [upstream] = s.containers("upstream")
        upstream_port = upstream.attrs["NetworkSettings"]["Ports"]["5000/tcp"][0]["HostPort"]
        seed_model(f"http://127.0.0.1:{upstream_port}", "library/smollm2", "135m", gguf=gguf_path)
        s.compose("up", "-d", "--no-build", *SERVICES)
        s.wait_healthy(["redis", "registry", "router", "worker", "nginx", "prometheus"])
        timings["up until healthy"] = time.monotonic() - started
        [preload] = s.containers("preload", all=True)
        try:
            status = preload.wait(timeout=PRELOAD_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - docker-py raises requests' timeout
            raise AssertionError(f"preload did not finish in {PRELOAD_TIMEOUT_S:.0f}s: {exc}\n{s.logs()}") from None
        assert status["StatusCode"] == 0, f"preload failed: {status}\n{s.logs()}"
        s.preload_log = preload.logs().decode(errors="replace")
        timings["up until preloaded"] = time.monotonic() - started
        yield s
    finally:
        started = time.monotonic()
        try:
            s.compose("down", "-v", "--remove-orphans", "--timeout", "20")
            label = [f"com.docker.compose.project={project}"]
            left = client.containers.list(all=True, filters={"label": label}) + client.volumes.list(
                filters={"label": label})
            assert not left, f"down -v left {left}"
        finally:
            timings["down -v"] = time.monotonic() - started
            print("\ncompose e2e timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
            for tag in (images.router, images.worker):
                print(f"image {tag}: {engine.image_size(client, tag) / 1e6:.0f} MB")


def test_preload_pulled_the_model_through_the_mirror(stack: Stack):
    with stack.explained():
        assert f"{MODEL_NAME}: success" in stack.preload_log, stack.preload_log
        tags = httpx.get(stack.endpoint + "/api/tags", timeout=30).json()
        assert MODEL_NAME in [m["name"] for m in tags["models"]], tags


def test_the_real_clients_through_nginx(stack: Stack):
    with stack.explained():
        short_load(stack.endpoint, MODEL_NAME)
        assert httpx.get(stack.endpoint + "/api/version", timeout=10).json()["version"]


def test_an_image_request_through_nginx(stack: Stack, tmp_path: Path, gguf_path: Path):
    """A model with a projector (tests/support/projector.py) created through the endpoint; an
    image reaches it through nginx, a router and a worker that fetched the projector layer."""
    projector = write_projector(tmp_path / "mmproj.gguf")
    with stack.explained():
        client = ollama.Client(host=stack.endpoint, timeout=180)
        files = {"model.gguf": client.create_blob(gguf_path), "mmproj.gguf": client.create_blob(projector)}
        assert client.create(model="e2e-vision", files=files).status == "success"
        assert "vision" in (client.show("e2e-vision").capabilities or [])
        image = png(32, 32, lambda x, y: (8 * x % 256, 8 * y % 256, 128))
        plain = client.generate(model="e2e-vision", prompt="Describe it.", options={"num_predict": 4, "temperature": 0})
        seen = client.generate(model="e2e-vision", prompt="Describe it.", images=[image],
                               options={"num_predict": 4, "temperature": 0})
        assert seen.done and (seen.prompt_eval_count or 0) >= (plain.prompt_eval_count or 0) + 16, (seen, plain)
        client.delete("e2e-vision")


def test_prometheus_scrapes_every_router_and_worker_replica(stack: Stack):
    with stack.explained():
        want = {"router": stack.ips("router"), "worker": stack.ips("worker")}
        assert len(want["router"]) == 2 and len(want["worker"]) == 2, want  # deploy.replicas
        deadline = time.monotonic() + DATA_TIMEOUT_S
        while True:
            found = {"router": set(), "worker": set()}
            down = []
            for target in dashboards.targets(stack.prometheus):
                job = target["labels"]["job"]
                if job in found:
                    found[job].add(target["labels"]["instance"].rsplit(":", 1)[0])
                    if target["health"] != "up":
                        down.append((target["scrapeUrl"], target["health"], target.get("lastError")))
            if found == want and not down:
                break
            assert time.monotonic() < deadline, f"targets {found} (want {want}), not up: {down}"
            time.sleep(2)


def test_a_killed_worker_container_does_not_stop_service(stack: Stack):
    with stack.explained():
        victim = stack.containers("worker")[0]
        victim.kill()
        client = ollama.Client(host=stack.endpoint, timeout=180)
        for seed in range(4):
            answer = client.chat(model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}],
                                 options={"num_predict": 8, "seed": seed})
            assert answer.message.content.strip()
        deadline = time.monotonic() + 30
        while len(httpx.get(stack.endpoint + "/api/cluster/workers", timeout=10).json()["workers"]) != 1:
            assert time.monotonic() < deadline, "the killed worker's lease never lapsed"
            time.sleep(1)


def test_scale_workers(stack: Stack):
    with stack.explained():
        stack.compose("up", "-d", "--no-build", "--no-deps", "--scale", "worker=3", "worker")
        stack.wait_healthy(["worker"])
        assert len(stack.containers("worker")) == 3
        deadline = time.monotonic() + 60
        while True:
            registered = httpx.get(stack.endpoint + "/api/cluster/workers", timeout=10).json()["workers"]
            scraped = {t["labels"]["instance"] for t in dashboards.targets(stack.prometheus)
                       if t["labels"]["job"] == "worker" and t["health"] == "up"}
            if len(registered) == 3 and len(scraped) == 3:
                break
            assert time.monotonic() < deadline, f"registered {registered}, scraped {scraped}"
            time.sleep(2)
        answer = ollama.Client(host=stack.endpoint, timeout=180).generate(
            model=MODEL_NAME, prompt="Hello", options={"num_predict": 8})
        assert answer.response.strip()


def test_every_dashboard_query_returns_data(stack: Stack):
    # Last: by now the traffic spans many scrape intervals (a series born between two scrapes
    # with all its counts shows no rate until it grows again), as on any dashboard in use.
    with stack.explained():
        problems = dashboards.check_all(stack.prometheus, "5m", DATA_TIMEOUT_S,
                                        set(dashboards.load()) - dashboards.KEYS_ONLY)
        assert not problems, "dashboard queries without data:\n" + "\n".join(
            f"  {query}\n      -> {problem}" for query, problem in problems.items())


def test_api_keys_on_the_same_stack(stack: Stack):
    """Last: `CORRAL_AUTH=keys` and `CORRAL_ADMIN_KEY`, nothing else, on the running stack (routers
    and workers recreated, as `docker compose up -d` after editing .env does)."""
    admin = "e2e-admin-key-0123456789"
    with stack.explained():
        keyed = {**stack.env, "CORRAL_AUTH": "keys", "CORRAL_ADMIN_KEY": admin}
        plain, stack.env = stack.env, keyed
        try:
            stack.compose("up", "-d", "--no-build", "router", "worker")
            stack.wait_healthy(["router", "worker", "nginx"])
        finally:
            stack.env = plain
        # The recreated routers came back on new addresses: nginx follows them by itself
        # (deploy/nginx/follow-routers.sh polls every 2 s), with no restart.
        deadline = time.monotonic() + 30
        while (status := httpx.get(stack.endpoint + "/api/version", timeout=10).status_code) != 200:
            assert time.monotonic() < deadline, f"the endpoint still answers {status} 30 s after the routers came back"
            time.sleep(1)
        r = httpx.get(stack.endpoint + "/api/tags", timeout=30)
        assert (r.status_code, r.json()) == (401, {"error": "unauthorized: no API key (send Authorization: Bearer <key>)"})
        made = subprocess.run(
            [sys.executable, "-m", "corral.cli", "keys", "create", "e2e-user", "--models", MODEL_NAME],
            env={**os.environ, "OLLAMA_HOST": stack.endpoint, "OLLAMA_API_KEY": admin},
            capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        client = ollama.Client(host=stack.endpoint, timeout=180, headers={"Authorization": f"Bearer {made.stdout.strip()}"})
        assert [m.model for m in client.list().models] == [MODEL_NAME]
        assert client.generate(model=MODEL_NAME, prompt="Hello", options={"num_predict": 4}).done
        # A worker answers its routers only: reached from inside the network without the token, 401.
        [router] = stack.containers("router")[:1]
        probe = ("import urllib.request, urllib.error\n"
                 "try:\n    urllib.request.urlopen('http://worker:11434/api/tags', timeout=10)\n"
                 "except urllib.error.HTTPError as e:\n    print(e.code)\n")
        code, out = router.exec_run(["python3", "-c", probe])
        assert (code, out.decode().strip()) == (0, "401"), out
