"""A worker's cluster identity: its settings (memory, labels, id, URL, drain) and what it detects."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from corral.cluster.workers import STATE_READY
from corral.settings import parse_ollama_host, parse_size
from corral.worker.registration import (
    cgroup_cpu_limit,
    cgroup_memory_limit,
    device_and_memory,
    gpu_memory,
    parse_gpu_memory,
    system_memory,
    worker_info,
)
from corral.worker.settings import WorkerSettings, advertised_url, parse_labels, primary_host

GiB = 1 << 30
CLUSTER_VARS = (
    "REDIS_URL", "CORRAL_WORKER_ID", "CORRAL_WORKER_URL", "CORRAL_WORKER_MEMORY", "CORRAL_WORKER_LABELS",
    "CORRAL_DRAIN_TIMEOUT", "CUDA_VISIBLE_DEVICES", "OLLAMA_HOST", "OLLAMA_NUM_PARALLEL", "OLLAMA_MAX_LOADED_MODELS",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in CLUSTER_VARS:
        monkeypatch.delenv(name, raising=False)


# -- CORRAL_WORKER_MEMORY --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1073741824", GiB),
        ("8GiB", 8 * GiB),
        ("8Gi", 8 * GiB),
        ("8 gib", 8 * GiB),
        ("512MB", 512_000_000),
        ("512M", 512_000_000),
        ("512MiB", 512 << 20),
        ("1.5G", 1_500_000_000),
        ("64k", 64_000),
        ("64KiB", 64 << 10),
        ("2T", 2 * 10**12),
        ("100B", 100),
    ],
)
def test_memory_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "8XB", "-1", "0", "0GiB", "8 G iB", "GiB"])
def test_memory_sizes_that_do_not_parse(text):
    with pytest.raises(ValueError):
        parse_size(text)


# -- CORRAL_WORKER_LABELS --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        ("", {}),
        ("zone=eu-1", {"zone": "eu-1"}),
        ("zone=eu-1,tier=gold", {"zone": "eu-1", "tier": "gold"}),
        (" zone = eu-1 , tier=gold, ", {"zone": "eu-1", "tier": "gold"}),
        ("gpu=", {"gpu": ""}),
        ("corral.io/pool=a=b", {"corral.io/pool": "a=b"}),
    ],
)
def test_labels(text, labels):
    assert parse_labels(text) == labels


@pytest.mark.parametrize("text", ["zone", "=eu-1", "zone=a,zone=b", "bad key=1", "-x=1"])
def test_labels_that_do_not_parse(text):
    with pytest.raises(ValueError):
        parse_labels(text)


# -- CORRAL_WORKER_URL -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("127.0.0.1:11434", "http://127.0.0.1:11434"),
        ("localhost:8080", "http://localhost:8080"),
        ("10.1.2.3", "http://10.1.2.3:11434"),
        ("https://worker.example", "https://worker.example:443"),
        ("[::1]:9000", "http://[::1]:9000"),
    ],
)
def test_advertised_url_is_where_the_worker_listens(listen, url):
    assert advertised_url(parse_ollama_host(listen)) == url


@pytest.mark.parametrize("listen", ["0.0.0.0:11500", ":11500", "[::]:11500"])
def test_every_interface_is_advertised_as_the_primary_address(listen):
    host = primary_host()
    assert host and host not in ("0.0.0.0", "::")
    shown = f"[{host}]" if ":" in host else host
    assert advertised_url(parse_ollama_host(listen)) == f"http://{shown}:11500"


def test_primary_host_is_an_address_of_this_host_or_its_name():
    host = primary_host()
    if host != socket.gethostname():
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))  # only an address of this host can be bound


# -- the settings ---------------------------------------------------------------------------


def test_cluster_defaults(monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:11500")
    s = WorkerSettings()
    assert s.REDIS_URL == ""
    host, port, suffix = s.CORRAL_WORKER_ID.rsplit("-", 2)
    assert (host, port) == (socket.gethostname(), "11500")
    assert len(suffix) == 6 and int(suffix, 16) >= 0
    assert WorkerSettings().CORRAL_WORKER_ID != s.CORRAL_WORKER_ID  # two workers on one host and port
    assert s.CORRAL_WORKER_URL == advertised_url(s.listen)
    assert s.worker_memory is None  # detected
    assert s.worker_labels == {}
    assert s.drain_timeout_seconds == 30


def test_cluster_values(monkeypatch):
    for name, value in {
        "REDIS_URL": "redis://:secret@redis:6379/1",
        "CORRAL_WORKER_ID": "gpu-node-7",
        "CORRAL_WORKER_URL": "http://worker-7.corral.svc:11434/",
        "CORRAL_WORKER_MEMORY": "24GiB",
        "CORRAL_WORKER_LABELS": "zone=eu-1,gpu=a100",
        "CORRAL_DRAIN_TIMEOUT": "2m30s",
    }.items():
        monkeypatch.setenv(name, value)
    s = WorkerSettings()
    assert s.CORRAL_WORKER_ID == "gpu-node-7"
    assert s.CORRAL_WORKER_URL == "http://worker-7.corral.svc:11434"
    assert s.worker_memory == 24 * GiB
    assert s.worker_labels == {"zone": "eu-1", "gpu": "a100"}
    assert s.drain_timeout_seconds == 150
    assert s.redacted()["REDIS_URL"] == "***"  # a password in the URL


@pytest.mark.parametrize(("value", "seconds"), [("0", 0), ("45", 45), ("500ms", 0.5), ("1h", 3600)])
def test_drain_timeout(monkeypatch, value, seconds):
    monkeypatch.setenv("CORRAL_DRAIN_TIMEOUT", value)
    assert WorkerSettings().drain_timeout_seconds == seconds


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REDIS_URL", "http://redis:6379"),
        ("REDIS_URL", "redis://redis:port"),
        ("CORRAL_WORKER_ID", "has space"),
        ("CORRAL_WORKER_ID", "x" * 201),
        ("CORRAL_WORKER_URL", "worker:11434"),
        ("CORRAL_WORKER_URL", "ftp://worker"),
        ("CORRAL_WORKER_MEMORY", "lots"),
        ("CORRAL_WORKER_LABELS", "zone"),
        ("CORRAL_DRAIN_TIMEOUT", "soon"),
        ("CORRAL_DRAIN_TIMEOUT", "-1"),
        ("CORRAL_DRAIN_TIMEOUT", "-5s"),
    ],
)
def test_a_bad_value_names_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        WorkerSettings()
    assert [error["loc"] for error in info.value.errors()] == [(name,)]


def test_a_bad_value_stops_start_up(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CORRAL_WORKER_MEMORY": "8 gigs"}
    result = subprocess.run(
        [sys.executable, "-m", "corral.cli", "worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "CORRAL_WORKER_MEMORY" in result.stderr and "8GiB" in result.stderr


# -- what the worker detects -------------------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_cgroup_v2_in_a_container(tmp_path):
    t = _tree(tmp_path, {"proc": "0::/\n", "cg/memory.max": "4294967296\n"})
    assert cgroup_memory_limit(t / "proc", t / "cg") == 4 * GiB


def test_cgroup_v2_without_a_limit(tmp_path):
    t = _tree(tmp_path, {"proc": "0::/\n", "cg/memory.max": "max\n"})
    assert cgroup_memory_limit(t / "proc", t / "cg") is None


def test_cgroup_v2_the_tightest_limit_up_the_tree(tmp_path):
    t = _tree(tmp_path, {
        "proc": "0::/kubepods/pod1/ctr\n",
        "cg/kubepods/memory.max": "8589934592\n",
        "cg/kubepods/pod1/memory.max": "2147483648\n",
        "cg/kubepods/pod1/ctr/memory.max": "max\n",
    })
    assert cgroup_memory_limit(t / "proc", t / "cg") == 2 * GiB


def test_cgroup_v1_memory_controller(tmp_path):
    t = _tree(tmp_path, {
        "proc": "12:pids:/docker/abc\n4:memory:/docker/abc\n0::/\n",
        "cg/memory/docker/abc/memory.limit_in_bytes": "1073741824\n",
        "cg/pids/docker/abc/memory.limit_in_bytes": "1\n",  # another controller's tree: ignored
    })
    assert cgroup_memory_limit(t / "proc", t / "cg") == GiB


def test_cgroup_v1_host_path_but_namespaced_mount(tmp_path):
    # /proc/self/cgroup names the host's path; the mount shows this container's cgroup as its root.
    t = _tree(tmp_path, {"proc": "4:memory:/docker/abc\n", "cg/memory/memory.limit_in_bytes": "536870912\n"})
    assert cgroup_memory_limit(t / "proc", t / "cg") == 512 << 20


def test_cgroup_cpu_quota_v2_rounds_up_and_takes_the_tightest(tmp_path):
    t = _tree(tmp_path, {
        "proc": "0::/kubepods/pod1/ctr\n",
        "cg/kubepods/cpu.max": "max 100000\n",
        "cg/kubepods/pod1/cpu.max": "250000 100000\n",  # 2.5 CPUs: 3 threads
        "cg/kubepods/pod1/ctr/cpu.max": "max 100000\n",
    })
    assert cgroup_cpu_limit(t / "proc", t / "cg") == 3
    t2 = _tree(tmp_path / "none", {"proc": "0::/\n", "cg/cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(t2 / "proc", t2 / "cg") is None


def test_cgroup_cpu_quota_v1(tmp_path):
    t = _tree(tmp_path, {
        "proc": "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n",
        "cg/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000\n",
        "cg/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
    })
    assert cgroup_cpu_limit(t / "proc", t / "cg") == 1
    unlimited = _tree(tmp_path / "u", {
        "proc": "5:cpu,cpuacct:/\n",
        "cg/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "cg/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    })
    assert cgroup_cpu_limit(unlimited / "proc", unlimited / "cg") is None


def test_no_cgroup(tmp_path):
    assert cgroup_memory_limit(tmp_path / "missing", tmp_path) is None


def test_system_memory_is_ram_or_the_cgroup_limit_below_it(tmp_path):
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert system_memory(tmp_path / "missing", tmp_path) == ram
    unlimited = _tree(tmp_path / "v1", {"proc": "4:memory:/\n", "cg/memory/memory.limit_in_bytes": "9223372036854771712\n"})
    assert system_memory(unlimited / "proc", unlimited / "cg") == ram
    limited = _tree(tmp_path / "v2", {"proc": "0::/\n", "cg/memory.max": "1048576\n"})
    assert system_memory(limited / "proc", limited / "cg") == 1 << 20


def test_nvidia_smi_memory():
    assert parse_gpu_memory("81559\n81559\n") == [81559 << 20, 81559 << 20]
    assert parse_gpu_memory(" 24576 \n[N/A]\n\n") == [24576 << 20]
    assert parse_gpu_memory("") == []


def _fake_nvidia_smi(tmp_path: Path, monkeypatch) -> Path:
    """An nvidia-smi on PATH that records its arguments and reports two 80 GiB GPUs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\nprintf "81920\\n81920\\n"\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return tmp_path / "args"


def test_gpu_memory_asks_nvidia_smi_for_the_visible_gpus(tmp_path, monkeypatch):
    args = _fake_nvidia_smi(tmp_path, monkeypatch)
    assert gpu_memory(None) == [80 * GiB, 80 * GiB]
    assert args.read_text().split() == ["--query-gpu=memory.total", "--format=csv,noheader,nounits"]
    gpu_memory("0,GPU-1234")
    assert args.read_text().split()[-2:] == ["-i", "0,GPU-1234"]


@pytest.mark.parametrize("visible", ["", "-1"])
def test_gpu_memory_with_every_gpu_hidden(tmp_path, monkeypatch, visible):
    args = _fake_nvidia_smi(tmp_path, monkeypatch)
    assert gpu_memory(visible) == []
    assert not args.exists()


def test_gpu_memory_without_nvidia_smi(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_memory(None) == []


def test_device_and_memory_of_this_build():
    import llama_cpp

    settings = WorkerSettings()
    device, memory = device_and_memory(settings)
    if not llama_cpp.llama_supports_gpu_offload():
        assert (device, memory) == ("cpu", system_memory())
    assert device in ("cpu", "cuda") and memory > 0


def test_worker_info(monkeypatch):
    monkeypatch.setenv("OLLAMA_NUM_PARALLEL", "4")
    monkeypatch.setenv("CORRAL_WORKER_MEMORY", "6GiB")
    monkeypatch.setenv("CORRAL_WORKER_LABELS", "zone=eu-1")
    settings = WorkerSettings()
    info = worker_info(settings)
    assert info.id == settings.CORRAL_WORKER_ID
    assert info.url == settings.CORRAL_WORKER_URL
    assert info.memory_total == 6 * GiB
    assert (info.num_parallel, info.max_loaded) == (4, 3)  # OLLAMA_MAX_LOADED_MODELS=0 means 3
    assert info.labels == {"zone": "eu-1"}
    assert info.state == STATE_READY
    assert info.started_at > 0 and info.version
