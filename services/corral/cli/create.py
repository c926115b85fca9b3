"""``corral create NAME -f Modelfile``: a model from a Modelfile, as ``ollama create`` makes it.

The Modelfile is parsed here (the server's own parser, ``corral.store.modelfile``, so its
errors read the same). A ``FROM`` or ``ADAPTER`` that names a local file is uploaded through
``/api/blobs`` (a ``HEAD`` first: a blob the server has is not sent again), with a bar, and
named by digest in the ``/api/create`` request's ``files``/``adapters``; the server's status
stream is drawn as it comes.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from corral.api.errors import CorralError
from corral.cli.client import Api, CliError
from corral.cli.progress import Progress
from corral.store.modelfile import Command, parse_modelfile

CHUNK = 1 << 20


def _local_file(args: str, base: Path) -> Path | None:
    """The file a FROM/ADAPTER names, if it names one on this machine (else it is a model name)."""
    text = args.strip()
    if not text or text.startswith("@"):
        return None
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = base / path
    if path.is_dir():
        raise CliError(f"{text}: importing a directory (safetensors) is not supported; convert it to a GGUF file")
    return path if path.is_file() else None


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
    return "sha256:" + sha.hexdigest()


def _upload(api: Api, path: Path, digest: str, progress: Progress) -> None:
    """``HEAD /api/blobs/<digest>``, then the file if the server lacks it."""
    size = path.stat().st_size
    status = f"copying file {digest}"
    if api.exists(f"/api/blobs/{digest}"):
        # Shown all the same, done: ollama prints this line for every file it names.
        progress.update({"status": status, "digest": digest, "total": size, "completed": size})
        return

    def chunks() -> Iterator[bytes]:
        sent = 0
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                sent += len(chunk)
                progress.update({"status": status, "digest": digest, "total": size, "completed": sent})
                yield chunk

    api.request("POST", f"/api/blobs/{digest}", content=chunks(), headers={"Content-Length": str(size)})


def create(args: argparse.Namespace) -> int:
    modelfile = Path(args.file).expanduser()
    try:
        text = modelfile.read_text(encoding="utf-8")
    except FileNotFoundError:
        # ollama falls back to importing the current directory, which this client does not do
        # (no safetensors here): what it then says when it finds nothing to import.
        raise CliError("no Modelfile or safetensors files found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"reading {args.file}: {exc}") from None
    try:
        parsed = parse_modelfile(text)
    except CorralError as exc:
        raise CliError(exc.message) from None
    base = modelfile.resolve().parent
    with Api() as api:
        progress = Progress(args.name)
        progress.update({"status": "gathering model components"})
        try:
            commands = []
            for command in parsed.commands:
                path = _local_file(command.args, base) if command.name in ("model", "adapter") else None
                if path is not None:
                    digest = _digest(path)
                    _upload(api, path, digest, progress)
                    command = Command(command.name, "@" + digest)
                commands.append(command)
            parsed.commands = commands
            try:
                body: dict[str, Any] = parsed.to_create_request()
            except CorralError as exc:
                raise CliError(exc.message) from None
            body.update(model=args.name, stream=True)
            if args.quantize:
                body["quantize"] = args.quantize
            for event in api.stream("/api/create", body):
                progress.update(event)
        finally:
            progress.close()
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("create", help="create a model from a Modelfile")
    p.add_argument("name")
    p.add_argument("-f", "--file", default="Modelfile", help="name of the Modelfile (default: Modelfile)")
    p.add_argument("-q", "--quantize", default="", help="quantize the model to this level (e.g. q4_K_M)")
    p.set_defaults(func=create)
