"""Checks on what a server answered, and bounded waits for what it will."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx
import pytest

T = TypeVar("T")
JSON_UTF8 = "application/json; charset=utf-8"  # Ollama's (gin's) content type for JSON


def assert_error(r: httpx.Response, status: int, message: str) -> None:
    """An error as Ollama answers it: the status, ``{"error": message}``, gin's content type."""
    assert (r.status_code, r.json()) == (status, {"error": message}), r.text
    assert r.headers["content-type"] == JSON_UTF8


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.1) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
