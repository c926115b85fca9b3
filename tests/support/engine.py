"""A Docker engine and Corral's images for the end-to-end test, built with no Docker Hub.

- ``engine()``: a docker-py client for a running engine; as root with Debian's ``dockerd``
  installed and none running, it starts one (its log under /tmp). Returns the reason instead
  when there is no engine to be had, so the test can skip saying exactly why.
- ``base_image()``: ``corral-base:bookworm``, a ``debootstrap --variant=minbase bookworm`` root
  imported once per engine, standing in for ``debian:12.11-slim`` (the Dockerfiles' default).
- ``build_images()``: the router and CPU worker images from their Dockerfiles, offline
  (``CORRAL_PIP_OFFLINE=1``: every Python package from a wheelhouse made on this machine,
  llama-cpp-python from the wheel ``scripts/test`` built, never compiled here), and the
  stand-ins for redis/registry/nginx/prometheus from Debian packages (deploy/docker/standins).

Every wait is bounded; build logs come back in the exception when a build fails.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from corral.supervise import Child

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("CORRAL_CACHE", Path.home() / ".cache" / "corral"))
BASE_IMAGE = "corral-base:bookworm"
DEBIAN_MIRROR = os.environ.get("CORRAL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
LLAMA_CPP_VERSION = "0.3.36"
ENGINE_START_TIMEOUT_S = 60.0
API_TIMEOUT_S = 900  # one docker-py call; a build is one call
DEBOOTSTRAP_TIMEOUT_S = 600
WHEELHOUSE_TIMEOUT_S = 600
DOCKERD_LOG = Path(tempfile.gettempdir()) / "corral-e2e-dockerd.log"


def engine():
    """A docker-py client whose engine answers ping, or a string saying why there is none."""
    try:
        import docker
    except ImportError:
        return "the docker Python SDK is not installed (pip install -e '.[test]')"
    try:
        client = docker.from_env(timeout=API_TIMEOUT_S)
        client.ping()
        return client
    except Exception as exc:  # noqa: BLE001 - any failure means: no engine yet
        first_error = f"{type(exc).__name__}: {exc}"
    if os.environ.get("DOCKER_HOST"):
        return f"no Docker engine at DOCKER_HOST={os.environ['DOCKER_HOST']} ({first_error}); not starting one"
    dockerd = shutil.which("dockerd") or shutil.which("dockerd", path="/usr/sbin:/usr/bin")
    if dockerd is None:
        return f"no Docker engine ({first_error}) and no dockerd to start (Debian: apt-get install docker.io)"
    if os.geteuid() != 0:
        return f"no Docker engine ({first_error}) and dockerd needs root to start"
    # Left running for later runs, as a system service would be: not watched, it outlives the test.
    Child("dockerd", [dockerd], log=DOCKERD_LOG).start()
    deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            client = docker.from_env(timeout=API_TIMEOUT_S)
            client.ping()
            return client
        except Exception:  # noqa: BLE001
            time.sleep(0.5)
    tail = DOCKERD_LOG.read_text(errors="replace")[-2000:]
    return f"dockerd did not answer within {ENGINE_START_TIMEOUT_S:.0f}s; its log ({DOCKERD_LOG}):\n{tail}"


def base_image(client) -> str:
    """The local Debian 12 base (debootstrap minbase, imported), made once per engine."""
    import docker.errors

    try:
        client.images.get(BASE_IMAGE)
        return BASE_IMAGE
    except docker.errors.ImageNotFound:
        pass
    debootstrap = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin")
    if debootstrap is None:
        raise RuntimeError("debootstrap not found (Debian: apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(prefix="corral-base-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        done = subprocess.run(
            [debootstrap, "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
            capture_output=True, text=True, timeout=DEBOOTSTRAP_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            for entry in sorted(rootfs.iterdir()):
                tar.add(entry, arcname=entry.name, filter=_slim)
        repository, tag = BASE_IMAGE.split(":")
        client.api.import_image_from_file(str(archive), repository=repository, tag=tag)
    client.images.get(BASE_IMAGE)
    return BASE_IMAGE


# What Debian's -slim images leave out, so image sizes measured here are close to real ones.
_SLIM_DROP = ("var/cache/apt/archives/", "var/lib/apt/lists/", "usr/share/doc/", "usr/share/man/", "usr/share/info/",
              "usr/share/locale/")


def _slim(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    name = member.name.lstrip("./")
    return None if any(name.startswith(d) and name != d.rstrip("/") for d in _SLIM_DROP) else member


def wheelhouse() -> Path:
    """Every wheel the images install (router and worker extras, build backend), made here with
    the machine's pip once per pyproject.toml, plus the llama-cpp-python wheel scripts/test built."""
    llama = sorted(CACHE.glob(f"wheels/llama_cpp_python-{LLAMA_CPP_VERSION}-*.whl"))
    if not llama:
        raise RuntimeError(f"no llama_cpp_python-{LLAMA_CPP_VERSION} wheel in {CACHE / 'wheels'}: run ./scripts/test")
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]
    house = CACHE / "e2e-wheels" / key
    if not (house / ".complete").exists():
        shutil.rmtree(house, ignore_errors=True)
        house.mkdir(parents=True)
        python = REPO / ".venv" / "bin" / "python"
        done = subprocess.run(
            [str(python if python.exists() else "python3"), "-m", "pip", "wheel", "-q", "-w", str(house),
             "--find-links", str(CACHE / "wheels"), f"{REPO}[worker,router]", "setuptools>=77", "wheel",
             # Required only below the machine's Python: Debian 12 has 3.11.2 (redis needs it there).
             "async-timeout>=4.0.3"],
            capture_output=True, text=True, timeout=WHEELHOUSE_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise RuntimeError(f"pip wheel failed ({done.returncode}):\n{done.stderr[-3000:]}")
        for own in house.glob("corral-*.whl"):  # the images build corral from the source they copy
            own.unlink()
        (house / ".complete").touch()
    return house


@dataclass(frozen=True)
class Images:
    router: str
    worker: str
    redis: str
    registry: str
    nginx: str
    prometheus: str


def _context(tmp: Path, wheels: Path) -> Path:
    """The build context compose.yaml uses (the repository, as .dockerignore trims it), with
    deploy/docker/wheels/ filled from the wheelhouse: a copy, so the checkout is never written."""
    ctx = tmp / "context"
    ctx.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.whl")
    for name in ("pyproject.toml", "README.md", ".dockerignore"):
        shutil.copy2(REPO / name, ctx / name)
    shutil.copytree(REPO / "services", ctx / "services", ignore=ignore)
    shutil.copytree(REPO / "deploy" / "docker", ctx / "deploy" / "docker", ignore=ignore)
    for wheel in wheels.glob("*.whl"):
        target = ctx / "deploy" / "docker" / "wheels" / wheel.name
        try:
            os.link(wheel, target)  # no copy where the cache and /tmp share a filesystem
        except OSError:
            shutil.copy2(wheel, target)
    return ctx


def build(client, ctx: Path, dockerfile: str, tag: str, buildargs: dict[str, str]) -> float:
    """Build one image; returns seconds taken. A failure raises with the build's log."""
    import docker.errors

    started = time.monotonic()
    try:
        client.images.build(path=str(ctx), dockerfile=dockerfile, tag=tag, buildargs=buildargs, rm=True,
                            forcerm=True, timeout=API_TIMEOUT_S)
    except docker.errors.BuildError as exc:
        log = "".join(str(chunk.get("stream", chunk.get("error", ""))) for chunk in exc.build_log)
        raise RuntimeError(f"building {tag} from {dockerfile} failed: {exc.msg}\n{log[-6000:]}") from None
    return time.monotonic() - started


def build_images(client, prefix: str, version: str, timings: dict[str, float]) -> Images:
    """Corral's images (tagged as compose.yaml names them under ``prefix``) and the stand-ins."""
    base = base_image(client)
    wheels = wheelhouse()
    args = {"BASE_IMAGE": base, "CORRAL_PIP_OFFLINE": "1"}
    images = Images(
        router=f"{prefix}/corral-router:{version}", worker=f"{prefix}/corral-worker:{version}",
        redis="corral-standin/redis:bookworm", registry="corral-standin/registry:bookworm",
        nginx="corral-standin/nginx:bookworm", prometheus="corral-standin/prometheus:bookworm",
    )
    with tempfile.TemporaryDirectory(prefix="corral-e2e-build-") as tmp:
        ctx = _context(Path(tmp), wheels)
        for tag, dockerfile in (
            (images.router, "deploy/docker/router.Dockerfile"),
            (images.worker, "deploy/docker/worker.Dockerfile"),
            (images.redis, "deploy/docker/standins/redis.Dockerfile"),
            (images.registry, "deploy/docker/standins/registry.Dockerfile"),
            (images.nginx, "deploy/docker/standins/nginx.Dockerfile"),
            (images.prometheus, "deploy/docker/standins/prometheus.Dockerfile"),
        ):
            timings[tag] = build(client, ctx, dockerfile, tag, args)
    return images


def image_size(client, tag: str) -> int:
    return int(client.images.get(tag).attrs["Size"])


if __name__ == "__main__":  # build everything, for a person at a terminal: python -m tests.support.engine
    got = engine()
    if isinstance(got, str):
        raise SystemExit(got)
    spent: dict[str, float] = {}
    built = build_images(got, "corral-e2e", "test", spent)
    for image_tag, seconds in spent.items():
        print(f"{image_tag}: built in {seconds:.1f}s, {image_size(got, image_tag) / 1e6:.0f} MB")
