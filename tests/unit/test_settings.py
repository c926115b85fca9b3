"""Configuration: Ollama's variables and defaults; a bad value names the variable."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from corral.settings import parse_ollama_host
from corral.worker.settings import WorkerSettings


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ("http", "127.0.0.1", 11434)),
        ("0.0.0.0", ("http", "0.0.0.0", 11434)),
        ("0.0.0.0:8080", ("http", "0.0.0.0", 8080)),
        ("http://example.com", ("http", "example.com", 80)),
        ("https://example.com", ("https", "example.com", 443)),
        (":11435", ("http", "0.0.0.0", 11435)),
        ('"127.0.0.1:9000"', ("http", "127.0.0.1", 9000)),
    ],
)
def test_ollama_host(value, expected):
    hp = parse_ollama_host(value)
    assert (hp.scheme, hp.host, hp.port) == expected


def test_defaults_are_ollamas(monkeypatch):
    for name in ("OLLAMA_KEEP_ALIVE", "OLLAMA_NUM_PARALLEL", "OLLAMA_MAX_QUEUE", "OLLAMA_MAX_LOADED_MODELS"):
        monkeypatch.delenv(name, raising=False)
    s = WorkerSettings()
    assert s.keep_alive_seconds == 300
    assert s.OLLAMA_NUM_PARALLEL == 1
    assert s.OLLAMA_MAX_QUEUE == 512
    assert s.max_loaded_models == 3


@pytest.mark.parametrize(("value", "seconds"), [("10m", 600), ("30", 30), ("-1", math.inf), ("1h30m", 5400)])
def test_keep_alive_env_syntax(monkeypatch, value, seconds):
    monkeypatch.setenv("OLLAMA_KEEP_ALIVE", value)
    assert WorkerSettings().keep_alive_seconds == seconds


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), ("1", True), ("true", True), ("false", False)])
def test_flash_attention_unset_leaves_it_to_llama_cpp(monkeypatch, value, expected):
    # Unset or empty (compose's "${OLLAMA_FLASH_ATTENTION:-}") is llama.cpp's auto; a value forces it.
    if value is None:
        monkeypatch.delenv("OLLAMA_FLASH_ATTENTION", raising=False)
    else:
        monkeypatch.setenv("OLLAMA_FLASH_ATTENTION", value)
    assert WorkerSettings().OLLAMA_FLASH_ATTENTION is expected


@pytest.mark.parametrize(
    ("name", "value"),
    [("OLLAMA_NUM_PARALLEL", "many"), ("OLLAMA_KEEP_ALIVE", "soon"), ("OLLAMA_HOST", "host:notaport")],
)
def test_bad_value_stops_start_up_naming_the_variable(tmp_path, name, value):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), name: value}
    result = subprocess.run(
        [sys.executable, "-m", "corral.cli", "worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert name in result.stderr
