"""``corral keys``: the cluster's API keys from the shell, through the admin API
(``/api/cluster/keys``, ``/api/cluster/usage``) at ``OLLAMA_HOST``, with ``OLLAMA_API_KEY``
(an admin key) as the ``ollama`` client sends it.

    corral keys create alice --models llama3.2 --rpm 60     # prints the new key, once
    corral keys list
    corral keys revoke alice
    corral keys usage --window 24h
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from corral.cli.client import Api
from corral.cli.units import table
from corral.cluster.tenants import USAGE_FIELDS


def _call(method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, str] | None = None) -> Any:
    with Api() as api:
        return api.json(method, path, body, params=params)


def _models(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [m for m in text.replace(",", " ").split() if m]


def create(args: argparse.Namespace) -> int:
    body = {"name": args.name, "admin": args.admin, "models": _models(args.models), "rpm": args.rpm, "tpm": args.tpm}
    answer = _call("POST", "/api/cluster/keys", body)
    print(answer["key"])
    print(f"key {answer['name']} created; this is the only time it is shown", file=sys.stderr)
    return 0


def list_keys(_args: argparse.Namespace) -> int:
    keys = _call("GET", "/api/cluster/keys")["keys"]
    rows = [["NAME", "ADMIN", "MODELS", "RPM", "TPM", "CREATED"]]
    for key in keys:
        models = key.get("models")
        rows.append(
            [
                key["name"],
                "yes" if key.get("admin") else "no",
                "all" if models is None else ",".join(models) or "none",
                str(key.get("rpm") or "-"),
                str(key.get("tpm") or "-"),
                key.get("created_at", ""),
            ]
        )
    sys.stdout.write(table(rows))
    return 0


def revoke(args: argparse.Namespace) -> int:
    for name in args.names:
        _call("DELETE", "/api/cluster/keys", {"name": name})
        print(f"revoked '{name}'")
    return 0


def usage(args: argparse.Namespace) -> int:
    answer = _call("GET", "/api/cluster/usage", params={"window": args.window})
    rows = [["KEY", "MODEL", "REQUESTS", "ERRORS", "PROMPT TOKENS", "GENERATED TOKENS"]]
    for key in answer["keys"]:
        for row in key["models"]:
            rows.append([key["name"], row["model"], *(str(row[f]) for f in USAGE_FIELDS)])
    totals = answer["totals"]
    rows.append(["(all)", "", *(str(totals[f]) for f in USAGE_FIELDS)])
    sys.stdout.write(table(rows))
    print(f"from {answer['since']} to {answer['until']}", file=sys.stderr)
    return 0


def add_parser(sub: Any) -> None:
    keys = sub.add_parser("keys", help="manage the cluster's API keys (CORRAL_AUTH=keys; OLLAMA_API_KEY: an admin key)")
    actions = keys.add_subparsers(dest="action", required=True)
    new = actions.add_parser("create", help="create a key and print it (shown only this once)")
    new.add_argument("name")
    new.add_argument("--admin", action="store_true", help="may manage models and keys")
    new.add_argument("--models", help="the only models it may use (comma-separated; default: all)")
    new.add_argument("--rpm", type=int, help="requests per minute (default: no limit)")
    new.add_argument("--tpm", type=int, help="tokens per minute, prompt and generated (default: no limit)")
    new.set_defaults(action_func=create)
    actions.add_parser("list", help="list keys (never their secrets)").set_defaults(action_func=list_keys)
    gone = actions.add_parser("revoke", help="revoke keys; they stop working on every router at once")
    gone.add_argument("names", nargs="+")
    gone.set_defaults(action_func=revoke)
    used = actions.add_parser("usage", help="requests and tokens per key and model")
    used.add_argument("--window", default="24h", help="how far back (a duration: 1h, 7d is 168h; default 24h)")
    used.set_defaults(action_func=usage)
    keys.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return args.action_func(args)
