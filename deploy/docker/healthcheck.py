"""The images' HEALTHCHECK: exit 0 when GET <path> on this container's OLLAMA_HOST answers 200.

    python3 healthcheck.py /api/version           # liveness (router and worker)
    python3 healthcheck.py /api/cluster/ready     # router readiness: 503 while Redis is unreachable

Standard library only, so the probe costs no import of the service and works in every image.
"""

import os
import sys
import urllib.error
import urllib.request


def port_of(ollama_host: str) -> int:
    # OLLAMA_HOST is [scheme://]host[:port]; only the port matters for a probe from inside.
    rest = ollama_host.strip().strip("\"'").split("://", 1)[-1].rstrip("/")
    host_port = rest.rsplit("]", 1)[-1]  # [::]:11434 -> :11434
    _, sep, port = host_port.rpartition(":")
    if sep and port.isdigit():
        return int(port)
    return 443 if ollama_host.startswith("https://") else 80 if "://" in ollama_host else 11434


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "/api/version"
    url = f"http://127.0.0.1:{port_of(os.environ.get('OLLAMA_HOST', ''))}{path}"
    try:
        with urllib.request.urlopen(url, timeout=4) as reply:
            return 0 if reply.status == 200 else 1
    except (OSError, urllib.error.URLError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
