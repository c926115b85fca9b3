"""``corral list``, ``ps``, ``show``, ``cp``, ``rm`` and ``stop``: the models on the server, as
``ollama``'s commands of the same names print them. ``ps`` on a cluster adds WORKERS: which
workers hold each loaded model."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any, TextIO

from corral.cli.client import Api, CliError
from corral.cli.units import human_bytes, human_time, parse_time, table
from corral.gocompat import format_float
from corral.store.gguf import human_number


def short_id(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


def list_models(args: argparse.Namespace) -> int:
    with Api() as api:
        models = api.json("GET", "/api/tags")["models"]
    rows = [["NAME", "ID", "SIZE", "MODIFIED"]]
    prefix = (args.prefix or "").lower()
    for m in models:
        if m["name"].lower().startswith(prefix):
            size = "-" if m.get("remote_model") else human_bytes(int(m.get("size", 0)))
            modified = human_time(parse_time(m.get("modified_at")), "Never")
            rows.append([m["name"], short_id(m.get("digest", "")), size, modified])
    sys.stdout.write(table(rows))
    return 0


def processor(size: int, vram: int) -> str:
    if vram == 0:
        return "100% CPU"
    if vram == size:
        return "100% GPU"
    if vram > size or size == 0:
        return "Unknown"
    cpu = round((size - vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def until(expires_at: str | None, now: datetime | None = None) -> str:
    when = parse_time(expires_at)
    if when is not None and when < (now or datetime.now(when.tzinfo)):
        return "Stopping..."
    return human_time(when, "Never", now=now)


def ps(args: argparse.Namespace) -> int:
    with Api() as api:
        models = api.json("GET", "/api/ps")["models"]
    cluster = any("workers" in m for m in models)
    header = ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"] + (["WORKERS"] if cluster else [])
    rows = [header]
    for m in models:
        if args.prefix and not m["name"].startswith(args.prefix):
            continue
        size, vram = int(m.get("size", 0)), int(m.get("size_vram", 0))
        row = [
            m["name"],
            short_id(m.get("digest", "")),
            human_bytes(size),
            processor(size, vram),
            str(m.get("context_length") or 0),
            until(m.get("expires_at")),
        ]
        if cluster:
            row.append(",".join(m.get("workers") or []))
        rows.append(row)
    sys.stdout.write(table(rows))
    return 0


def _section(out: TextIO, title: str, rows: list[list[str]]) -> None:
    out.write(f"  {title}\n" + table(rows, header=False, indent=True) + "\n")


def _lines(text: str) -> list[list[str]]:
    """System and License: the first two non-empty lines, then ``...`` if there were more."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return [[line] for line in lines[:2]] + ([["..."]] if len(lines) > 2 else [])


def _model_rows(info: dict[str, Any]) -> list[list[str]]:
    details = info.get("details") or {}
    model_info = info.get("model_info")
    if model_info is None:
        rows = [["architecture", details.get("family", "")], ["parameters", details.get("parameter_size", "")]]
    else:
        arch = model_info.get("general.architecture") or ""
        rows = [["architecture", arch]] if arch else []
        count = model_info.get("general.parameter_count")
        parameters = details.get("parameter_size") or (human_number(int(count)) if count else "")
        if parameters:
            rows.append(["parameters", parameters])
        for key, label in (("context_length", "context length"), ("embedding_length", "embedding length")):
            value = model_info.get(f"{arch}.{key}")
            if isinstance(value, int | float) and not isinstance(value, bool):
                rows.append([label, format_float(float(value), plain=True)])
    rows.append(["quantization", details.get("quantization_level", "")])
    if info.get("requires"):
        rows.append(["requires", info["requires"]])
    return rows


def show_info(info: dict[str, Any], *, verbose: bool = False, out: TextIO | None = None) -> None:
    """``ollama show``'s sections (also the chat's ``/show info``)."""
    out = out or sys.stdout
    _section(out, "Model", _model_rows(info))
    if info.get("capabilities"):
        _section(out, "Capabilities", [[c] for c in info["capabilities"]])
    projector = info.get("projector_info")
    if projector is not None:
        arch = projector.get("general.architecture", "")
        rows = [
            ["architecture", arch],
            ["parameters", human_number(int(projector.get("general.parameter_count") or 0))],
        ]
        for key, label in (("embedding_length", "embedding length"), ("projection_dim", "dimensions")):
            value = projector.get(f"{arch}.vision.{key}", projector.get(f"{arch}.audio.{key}"))
            if value is not None:
                rows.append([label, format_float(float(value), plain=True)])
        _section(out, "Projector", rows)
    if info.get("parameters"):
        _section(out, "Parameters", [line.split() for line in info["parameters"].splitlines() if line.strip()])
    if verbose and info.get("model_info") is not None:
        _section(out, "Metadata", [[k, _meta(v)] for k, v in sorted(info["model_info"].items())])
    if info.get("system"):
        _section(out, "System", _lines(info["system"]))
    if info.get("license"):
        _section(out, "License", _lines(info["license"]))


def _meta(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return format_float(float(value))
    if isinstance(value, list):
        shown: list[str] = []
        width = 1
        for item in value:
            text = _meta(item)
            if shown and width + len(text) + 2 > 10:
                break
            shown.append(text)
            width += len(text) + (2 if len(shown) > 1 else 0)
        more = f" ...+{len(value) - len(shown)} more" if len(shown) < len(value) else ""
        return "[" + " ".join(shown) + more + "]"
    return str(value)


def show(args: argparse.Namespace) -> int:
    only = [f for f in ("license", "modelfile", "parameters", "system", "template") if getattr(args, f)]
    if len(only) > 1:
        raise CliError(
            "only one of '--license', '--modelfile', '--parameters', '--system', or '--template' can be specified"
        )
    with Api() as api:
        info = api.json("POST", "/api/show", {"model": args.model, "verbose": args.verbose})
    if only:
        text = info.get(only[0], "")
        sys.stdout.write(text + ("\n" if only[0] in ("license", "modelfile", "parameters") else ""))
        return 0
    show_info(info, verbose=args.verbose)
    return 0


def copy(args: argparse.Namespace) -> int:
    with Api() as api:
        api.request("POST", "/api/copy", {"source": args.source, "destination": args.destination})
    print(f"copied '{args.source}' to '{args.destination}'")
    return 0


def _unload(api: Api, model: str) -> None:
    api.request("POST", "/api/generate", {"model": model, "prompt": "", "keep_alive": "0s", "stream": False})


def remove(args: argparse.Namespace) -> int:
    """Each model unloaded (quietly), then deleted; the first failure stops the rest."""
    with Api() as api:
        for name in args.models:
            try:
                _unload(api, name)
            except CliError as exc:
                if "not found" not in str(exc).lower():
                    print(f"Warning: unable to stop model '{name}'", file=sys.stderr)
            api.request("DELETE", "/api/delete", {"model": name})
            print(f"deleted '{name}'")
    return 0


def stop(args: argparse.Namespace) -> int:
    with Api() as api:
        try:
            api.json("POST", "/api/show", {"model": args.model})
            _unload(api, args.model)
        except CliError as exc:
            if "not found" in str(exc).lower():
                raise CliError(f'couldn\'t find model "{args.model}" to stop') from None
            raise
    return 0


def add_parsers(sub: Any) -> None:
    for name in ("list", "ls"):
        p = sub.add_parser(name, help="list models")
        p.add_argument("prefix", nargs="?", help="only the models whose names start with this")
        p.set_defaults(func=list_models)
    p = sub.add_parser("ps", help="list running models (and, on a cluster, the workers that hold them)")
    p.add_argument("prefix", nargs="?", help="only the models whose names start with this")
    p.set_defaults(func=ps)
    p = sub.add_parser("show", help="show information for a model")
    p.add_argument("model")
    for flag, text in (
        ("--license", "show the license of a model"),
        ("--modelfile", "show the Modelfile of a model"),
        ("--parameters", "show the parameters of a model"),
        ("--template", "show the template of a model"),
        ("--system", "show the system message of a model"),
    ):
        p.add_argument(flag, action="store_true", help=text)
    p.add_argument("-v", "--verbose", action="store_true", help="show detailed model information")
    p.set_defaults(func=show)
    p = sub.add_parser("cp", help="copy a model")
    p.add_argument("source")
    p.add_argument("destination")
    p.set_defaults(func=copy)
    p = sub.add_parser("rm", help="remove models")
    p.add_argument("models", nargs="+")
    p.set_defaults(func=remove)
    p = sub.add_parser("stop", help="stop a running model")
    p.add_argument("model")
    p.set_defaults(func=stop)
