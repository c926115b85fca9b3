"""``corral --version``: the server's version and this client's, as ``ollama --version`` reports them."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

from corral.api import OLLAMA_VERSION
from corral.cli.client import Api, CliError


def corral_version() -> str:
    try:
        return package_version("corral")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def show() -> int:
    """``ollama version is <server>``; a warning when the server's Ollama version is not the one this
    client speaks, or when there is no server; then Corral's own version (this client's)."""
    server = ""
    try:
        with Api() as api:
            server = str(api.json("GET", "/api/version").get("version", ""))
    except (CliError, ValueError, AttributeError):
        print("Warning: could not connect to a running Ollama instance")
    if server:
        print(f"ollama version is {server}")
    if server != OLLAMA_VERSION:
        print(f"Warning: client version is {OLLAMA_VERSION}")
    print(f"corral version is {corral_version()}")
    return 0
