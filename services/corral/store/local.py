"""The local model store: Ollama's on-disk layout under ``OLLAMA_MODELS`` (contract §4.3).

    <root>/manifests/<host>/<namespace>/<model>/<tag>   exact manifest bytes
    <root>/blobs/sha256-<hex>                            content-addressed layers

What must stay true:
- Nothing is read or written outside ``root``: names are validated (names.py), digests
  must match ``sha256[:-]<64 hex>``, ``files`` keys must be relative without ``..``.
- Every write is a temp file in the target's directory plus ``os.replace``, so readers
  (and other processes sharing the store) never see half a blob or half a manifest, and
  concurrent writers of one blob are harmless.
- Blobs are deleted only when the manifest that used them goes away (delete, or create
  replacing a model) and no other manifest references them; uploads waiting for their
  ``create`` are never touched.

The public methods are async so a registry-backed store can share the interface;
filesystem work runs in threads.
"""

from __future__ import annotations

import asyncio
import copy as copy_module
import hashlib
import json
import logging
import os
import re
import secrets
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from corral.api.errors import (
    BadRequestError,
    CorralError,
    InvalidNameError,
    NotFoundError,
    model_not_found,
)
from corral.api.options import validate_options
from corral.api.streams import format_time
from corral.store.gguf import GGUFCache, GGUFError, GGUFInfo, human_number
from corral.store.modelfile import format_modelfile, format_parameters, go_quote, parse_modelfile
from corral.store.names import ModelName

logger = logging.getLogger(__name__)

# What reading a damaged manifest or config can raise; such a model is reported, not fatal.
_DAMAGED = (OSError, ValueError, TypeError, AttributeError, BadRequestError)

MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_PROJECTOR = "application/vnd.ollama.image.projector"
MEDIA_ADAPTER = "application/vnd.ollama.image.adapter"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_PROMPT = "application/vnd.ollama.image.prompt"  # legacy name of a template layer
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_MESSAGES = "application/vnd.ollama.image.messages"
MEDIA_LICENSE = "application/vnd.ollama.image.license"

# Ollama's template when a model has none (and its GGUF has no chat template either).
DEFAULT_TEMPLATE = "{{ .Prompt }}"
# Arrays longer than this show as null in a non-verbose /api/show (Ollama's default
# maxArraySize): nobody wants 50k tokenizer strings in every show response.
SHOW_MAX_ARRAY = 1024

_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
# Uploads are hashed and written in slices this big, off the event loop.
_WRITE_SLICE = 4 << 20
# Names Ollama's template package defines; a template calling them must still parse.
_TEMPLATE_FUNCS: dict[str, Callable[..., Any]] = {
    "json": lambda *args: "",
    "currentDate": lambda *args: "",
    "yesterdayDate": lambda *args: "",
    "toTypeScriptType": lambda *args: "",
}


def digest_hex(digest: str) -> str:
    """The lower-case hex of a ``sha256:<hex>``/``sha256-<hex>`` digest, else 400."""
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        raise BadRequestError("invalid digest format")
    return match.group(1).lower()


@dataclass
class ModelRecord:
    name: ModelName
    manifest: dict
    digest: str
    modified_at: datetime
    size: int
    config: dict
    model_path: Path | None
    adapters: list[Path] = field(default_factory=list)
    projectors: list[Path] = field(default_factory=list)
    template: str | None = None
    system: str | None = None
    params: dict = field(default_factory=dict)
    messages: list[dict] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    parent_model: str = ""

    def details(self) -> dict:
        return {
            "parent_model": "",
            "format": self.config.get("model_format", ""),
            "family": self.config.get("model_family", ""),
            "families": self.config.get("model_families"),
            "parameter_size": self.config.get("model_type", ""),
            "quantization_level": self.config.get("file_type", ""),
        }


@dataclass
class _CreatePlan:
    """Everything /api/create decided before its first progress line."""

    name: ModelName
    layers: list[dict]  # final manifest layers, in order
    new_blobs: dict[str, bytes]  # hex -> content for layers this create introduces
    config: dict
    statuses_before: list[str]  # "parsing GGUF" lines


class LocalStore:
    def __init__(
        self,
        root: Path | str,
        *,
        gguf_cache: GGUFCache | None = None,
        capabilities: Callable[[ModelRecord, GGUFInfo | None], list[str]] | None = None,
        noprune: bool = False,
    ) -> None:
        self.root = Path(root)
        self.manifests_dir = self.root / "manifests"
        self.blobs_dir = self.root / "blobs"
        self.gguf_cache = gguf_cache if gguf_cache is not None else GGUFCache()
        self._capabilities = capabilities
        self._noprune = noprune
        # Serialises manifest writes with pruning in this process, so a create can't
        # lose a blob to a concurrent delete's reference scan. Other processes sharing
        # the store are not covered.
        self._lock = asyncio.Lock()

    # --- blobs ---------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / f"sha256-{digest_hex(digest)}"

    async def has_blob(self, digest: str) -> bool:
        path = self.blob_path(digest)
        return await asyncio.to_thread(path.is_file)

    async def write_blob(self, digest: str, chunks: AsyncIterator[bytes]) -> bool:
        """Store an upload; True if created, False if it was already there (body unread)."""
        expected = digest_hex(digest)
        final = self.blobs_dir / f"sha256-{expected}"
        if await asyncio.to_thread(final.is_file):
            return False
        fd, temp = await asyncio.to_thread(self._open_temp, self.blobs_dir, f"sha256-{expected}")
        hasher = hashlib.sha256()
        done = False
        try:
            with os.fdopen(fd, "wb") as f:
                pending: list[bytes] = []
                pending_size = 0
                async for chunk in chunks:
                    pending.append(chunk)
                    pending_size += len(chunk)
                    if pending_size >= _WRITE_SLICE:
                        await asyncio.to_thread(_write_hashed, f, hasher, b"".join(pending))
                        pending, pending_size = [], 0
                await asyncio.to_thread(_write_hashed, f, hasher, b"".join(pending), sync=True)
            actual = hasher.hexdigest()
            if actual != expected:
                raise BadRequestError(f'digest mismatch, expected "{digest}", got "sha256:{actual}"')
            await asyncio.to_thread(os.replace, temp, final)
            done = True
            return True
        finally:
            if not done:
                with suppress(OSError):
                    os.unlink(temp)

    def _write_blob_bytes(self, data: bytes) -> tuple[str, bool]:
        """Store small content (a template, params); returns (hex, created)."""
        hex_digest = hashlib.sha256(data).hexdigest()
        final = self.blobs_dir / f"sha256-{hex_digest}"
        if final.is_file():
            return hex_digest, False
        _atomic_write(final, data)
        return hex_digest, True

    @staticmethod
    def _open_temp(directory: Path, stem: str) -> tuple[int, str]:
        directory.mkdir(parents=True, exist_ok=True)
        # A dot name is never a valid blob or model name, so scans skip it.
        path = directory / f".{stem}.{secrets.token_hex(8)}.tmp"
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), str(path)

    # --- manifests -----------------------------------------------------------------------

    async def write_manifest(self, name: ModelName, manifest: dict | bytes) -> str:
        """Write a manifest's exact bytes atomically; returns their sha256 hex."""
        data = manifest if isinstance(manifest, bytes) else _compact_json(manifest)
        return await asyncio.to_thread(self._write_manifest_sync, name, data)

    def _write_manifest_sync(self, name: ModelName, data: bytes) -> str:
        _atomic_write(self.manifests_dir / name.manifest_relpath(), data)
        return hashlib.sha256(data).hexdigest()

    def _locate(self, name: ModelName) -> tuple[ModelName, Path] | None:
        """The stored name and manifest path for ``name``, matched case-insensitively."""
        exact = self.manifests_dir / name.manifest_relpath()
        if exact.is_file():
            return name, exact
        current, found = self.manifests_dir, []
        for part in name.manifest_relpath().parts:
            try:
                entries = sorted(os.listdir(current))
            except OSError:
                return None
            match = next((entry for entry in entries if entry.lower() == part.lower()), None)
            if match is None:
                return None
            found.append(match)
            current = current / match
        if not current.is_file():
            return None
        host, namespace, model, tag = found
        return ModelName(host, namespace, model, tag, name.scheme), current

    def _existing_or(self, name: ModelName) -> ModelName:
        """Ollama's getExistingName: writes go to a model's stored case when it exists."""
        located = self._locate(name)
        return located[0] if located else name

    def _scan(self) -> list[tuple[ModelName, Path]]:
        """Every manifest on disk (``manifests/*/*/*/*``) whose path is a valid name."""
        found: list[tuple[ModelName, Path]] = []
        for path in _walk_files(self.manifests_dir, depth=4):
            host, namespace, model, tag = path.relative_to(self.manifests_dir).parts
            try:
                name = ModelName.parse(f"{host}/{namespace}/{model}:{tag}")
            except InvalidNameError:
                logger.warning("skipping manifest with an invalid name: %s", path)
                continue
            found.append((name, path))
        return found

    def _read_manifest(self, path: Path) -> tuple[bytes, dict, os.stat_result]:
        data = path.read_bytes()
        stat = path.stat()
        manifest = json.loads(data)
        if not isinstance(manifest, dict):
            raise TypeError("manifest is not a JSON object")
        return data, manifest, stat

    def _read_config(self, manifest: dict) -> dict:
        digest = (manifest.get("config") or {}).get("digest")
        if not digest:
            return {}
        config = json.loads(self.blob_path(digest).read_bytes())
        if not isinstance(config, dict):
            raise TypeError("config is not a JSON object")
        return config

    def _summary(self, name: ModelName, path: Path) -> ModelRecord:
        """The record from the manifest and config alone, without reading its layers."""
        data, manifest, stat = self._read_manifest(path)
        return ModelRecord(
            name=name,
            manifest=manifest,
            digest=hashlib.sha256(data).hexdigest(),
            modified_at=datetime.fromtimestamp(stat.st_mtime).astimezone(),
            size=_manifest_size(manifest),
            config=self._read_config(manifest),
            model_path=None,
        )

    def _load(self, name: ModelName, path: Path) -> ModelRecord:
        try:
            record = self._summary(name, path)
            for layer in record.manifest.get("layers") or []:
                self._apply_layer(record, layer)
        except _DAMAGED as exc:
            raise CorralError(f"model {name.display} is damaged: {exc}") from exc
        return record

    def _apply_layer(self, record: ModelRecord, layer: dict) -> None:
        media_type, blob = layer.get("mediaType"), self.blob_path(layer.get("digest", ""))
        if media_type == MEDIA_MODEL:
            if record.model_path is None:
                record.model_path = blob
                record.parent_model = layer.get("from", "")
        elif media_type == MEDIA_PROJECTOR:
            record.projectors.append(blob)
        elif media_type == MEDIA_ADAPTER:
            record.adapters.append(blob)
        elif media_type in (MEDIA_TEMPLATE, MEDIA_PROMPT):
            record.template = blob.read_text("utf-8")
        elif media_type == MEDIA_SYSTEM:
            record.system = blob.read_text("utf-8")
        elif media_type == MEDIA_PARAMS:
            params = json.loads(blob.read_bytes())
            record.params = params if isinstance(params, dict) else {}
        elif media_type == MEDIA_MESSAGES:
            messages = json.loads(blob.read_bytes())
            record.messages = messages if isinstance(messages, list) else []
        elif media_type == MEDIA_LICENSE:
            record.license.append(blob.read_text("utf-8"))

    # --- reads -----------------------------------------------------------------------------

    async def get(self, name: str) -> ModelRecord:
        parsed = ModelName.parse(name)
        return await asyncio.to_thread(self._get_sync, parsed, name)

    def _get_sync(self, parsed: ModelName, requested: str) -> ModelRecord:
        located = self._locate(parsed)
        if located is None:
            raise model_not_found(requested)
        return self._load(*located)

    async def tags(self) -> list[dict]:
        return await asyncio.to_thread(self._tags_sync)

    def _tags_sync(self) -> list[dict]:
        entries: list[tuple[float, dict]] = []
        for name, path in self._scan():
            try:
                record = self._summary(name, path)
            except _DAMAGED as exc:
                # One damaged model must not hide the others (ollama#13885).
                logger.warning("skipping unreadable model %s: %s", name.display, exc)
                continue
            entry = {
                "name": name.display,
                "model": name.display,
                "modified_at": format_time(record.modified_at),
                "size": record.size,
                "digest": record.digest,
                "details": record.details(),
            }
            entries.append((record.modified_at.timestamp(), entry))
        entries.sort(key=lambda item: item[0], reverse=True)
        return [entry for _, entry in entries]

    async def show(
        self,
        name: str,
        *,
        verbose: bool = False,
        system: str | None = None,
        options: dict | None = None,
    ) -> dict:
        """The /api/show response; ``system``/``options`` are the request's overrides."""
        record = await self.get(name)
        return await asyncio.to_thread(self._show_sync, record, verbose, system, options)

    def _show_sync(self, record: ModelRecord, verbose: bool, system: str | None, options: dict | None) -> dict:
        info = self._gguf_for(record.model_path)
        if system:
            record.system = system
        # Without a TEMPLATE layer the worker renders the GGUF's own chat template, so show
        # that; the Modelfile then has no TEMPLATE line, so re-creating from it keeps that.
        template = record.template
        if template is None:
            template = (info.chat_template if info is not None else None) or DEFAULT_TEMPLATE
        # As in Ollama, request options reach the Modelfile text but not `parameters`.
        modelfile_params = {**record.params, **(options or {})}
        details = record.details()
        details["parent_model"] = record.parent_model
        if details["quantization_level"] in ("", "unknown") and info is not None:
            details["quantization_level"] = info.file_type

        response: dict[str, Any] = {
            "license": "\n".join(record.license),
            "modelfile": format_modelfile(
                from_=str(record.model_path) if record.model_path else record.name.display,
                template=record.template,
                system=record.system,
                parameters=modelfile_params,
                messages=record.messages,
                license=record.license,
                adapters=[str(p) for p in record.adapters],
                projectors=[str(p) for p in record.projectors],
                short_name=record.name.display,
            ),
            "parameters": format_parameters(record.params),
            "template": template,
        }
        if record.system:
            response["system"] = record.system
        for key in ("renderer", "parser"):
            if record.config.get(key):
                response[key] = record.config[key]
        response["details"] = details
        if record.messages:
            response["messages"] = [
                {"role": m.get("role", ""), "content": m.get("content", "")}
                for m in record.messages
                if isinstance(m, dict)
            ]
        response["model_info"] = _model_info(info, verbose) if info else {}
        if record.projectors:
            projector = self._gguf_for(record.projectors[0])
            if projector is not None:
                response["projector_info"] = _model_info(projector, verbose)
        if info is not None:
            response["tensors"] = [dict(tensor) for tensor in info.tensors]
        response["capabilities"] = self._capabilities_for(record, info)
        response["modified_at"] = format_time(record.modified_at)
        if record.config.get("requires"):
            response["requires"] = record.config["requires"]
        return response

    def _gguf_for(self, path: Path | None) -> GGUFInfo | None:
        if path is None:
            return None
        try:
            return self.gguf_cache.read(path)
        except (OSError, GGUFError) as exc:
            raise CorralError(f"cannot read model file {path.name}: {exc}") from exc

    def _capabilities_for(self, record: ModelRecord, info: GGUFInfo | None) -> list[str]:
        if self._capabilities is not None:
            return list(self._capabilities(record, info))
        return ["embedding"] if info is not None and info.is_embedding else ["completion"]

    # --- create ----------------------------------------------------------------------------

    async def create(self, request: dict) -> AsyncIterator[dict]:
        """/api/create as progress dicts ``{"status": ...}``.

        Every validation error (400, or 404 for an unknown ``from``) is raised before the
        first item, i.e. by the first ``await anext(gen)``, so a route that primes the
        generator can still answer with a plain error status.
        """
        plan = await self._plan_create(request)
        for status in plan.statuses_before:
            yield {"status": status}
        for status in await asyncio.to_thread(self._write_layers, plan):
            yield {"status": status}
        yield {"status": "writing manifest"}
        async with self._lock:
            await asyncio.to_thread(self._commit_create, plan)
        yield {"status": "success"}

    async def _plan_create(self, request: dict) -> _CreatePlan:
        if not isinstance(request, dict):
            raise BadRequestError("request body must be a JSON object")
        request = _from_legacy(request)
        files = _check_files(request.get("files"), "files")
        adapters = _check_files(request.get("adapters"), "adapters")
        licenses = _check_license(request.get("license"))
        raw_name = request.get("model") or request.get("name") or ""
        if not isinstance(raw_name, str):
            raise InvalidNameError()
        name = ModelName.parse(raw_name)
        if request.get("quantize") or request.get("quantization"):
            raise BadRequestError(
                "quantization is not supported; quantize GGUF models with llama.cpp tools before importing"
            )
        template = _optional_str(request, "template")
        system = _optional_str(request, "system")
        if template:
            _check_template(template)
        parameters = _check_parameters(request.get("parameters"))
        messages = _check_messages(request.get("messages"))
        from_ = request.get("from") or ""
        if not isinstance(from_, str):
            raise InvalidNameError()
        if not from_ and not files:
            raise BadRequestError("neither 'from' or 'files' was specified")
        return await asyncio.to_thread(
            self._plan_layers, name, from_, files, adapters, template, system, licenses, parameters, messages, request
        )

    def _plan_layers(
        self,
        name: ModelName,
        from_: str,
        files: dict[str, str],
        adapters: dict[str, str],
        template: str | None,
        system: str | None,
        licenses: list[str],
        parameters: dict[str, Any],
        messages: list[dict] | None,
        request: dict,
    ) -> _CreatePlan:
        name = self._existing_or(name)
        statuses: list[str] = []
        if from_:
            # Ollama prefers `from` when both are given.
            layers, config = self._base_layers(from_)
        else:
            layers, config = self._gguf_layers(files, statuses)
        for key in ("renderer", "parser", "requires"):
            if isinstance(request.get(key), str) and request[key]:
                config[key] = request[key]

        if adapters:
            adapter_layers = []
            for path, digest in adapters.items():
                blob = self._existing_blob(path, digest)
                self._read_gguf_file(path, blob)
                adapter_layers.append(_layer(MEDIA_ADAPTER, digest_hex(digest), blob.stat().st_size))
            layers = _without(layers, MEDIA_ADAPTER) + adapter_layers

        # Ollama's ApplyModelfileLayers: singletons replace, parameters merge, licenses append.
        new_blobs: dict[str, bytes] = {}

        def text_layer(media_type: str, data: bytes) -> dict:
            hex_digest = hashlib.sha256(data).hexdigest()
            new_blobs[hex_digest] = data
            return _layer(media_type, hex_digest, len(data))

        if template:
            layers = _without(layers, MEDIA_TEMPLATE, MEDIA_PROMPT) + [text_layer(MEDIA_TEMPLATE, template.encode())]
        if system:
            layers = _without(layers, MEDIA_SYSTEM) + [text_layer(MEDIA_SYSTEM, system.encode())]
        layers += [text_layer(MEDIA_LICENSE, text.encode()) for text in licenses if text]
        if parameters:
            merged: dict[str, Any] = {}
            for layer in layers:
                if layer["mediaType"] == MEDIA_PARAMS:
                    inherited = self._read_json_blob(layer["digest"])
                    if isinstance(inherited, dict):
                        for key, value in inherited.items():
                            merged.setdefault(key, value)
            merged.update(parameters)
            layers = _without(layers, MEDIA_PARAMS) + [text_layer(MEDIA_PARAMS, _go_json(merged, sort_keys=True))]
        if messages:
            layers = _without(layers, MEDIA_MESSAGES) + [text_layer(MEDIA_MESSAGES, _go_json(messages))]

        config["rootfs"] = {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]}
        return _CreatePlan(name=name, layers=layers, new_blobs=new_blobs, config=config, statuses_before=statuses)

    def _base_layers(self, from_: str) -> tuple[list[dict], dict]:
        base_name = ModelName.parse(from_)
        located = self._locate(base_name)
        if located is None:
            raise model_not_found(from_)
        base = self._load(*located)
        layers = []
        for layer in base.manifest.get("layers") or []:
            inherited = _layer(layer.get("mediaType", ""), digest_hex(layer.get("digest", "")), layer.get("size", 0))
            inherited["from"] = base.name.display  # what show reports as parent_model
            layers.append(inherited)
        config = copy_module.deepcopy(base.config) or {"architecture": "amd64", "os": "linux"}
        return layers, config

    def _gguf_layers(self, files: dict[str, str], statuses: list[str]) -> tuple[list[dict], dict]:
        if any(path.endswith(".safetensors") for path in files):
            raise BadRequestError(
                "safetensors models are not supported; convert the model to GGUF and create from that file"
            )
        model: tuple[GGUFInfo, dict] | None = None
        projectors: list[dict] = []
        for path in sorted(files):
            digest = files[path]
            blob = self._existing_blob(path, digest)
            statuses.append("parsing GGUF")
            info = self._read_gguf_file(path, blob)
            if info.kind == "adapter":
                raise BadRequestError(f'{path} is a LoRA adapter; pass it in "adapters"')
            layer = _layer(MEDIA_MODEL, digest_hex(digest), blob.stat().st_size)
            if info.is_projector:
                layer["mediaType"] = MEDIA_PROJECTOR
                projectors.append(layer)
            elif model is not None:
                raise BadRequestError("only one model GGUF is supported per model; split GGUF files are not supported")
            else:
                model = (info, layer)
        if model is None:
            raise BadRequestError("no model GGUF found in files")
        info, layer = model
        config: dict[str, Any] = {
            "model_format": "gguf",
            "model_family": info.architecture,
            "model_families": [info.architecture],
            "model_type": human_number(info.parameter_count),
            "file_type": info.file_type,
        }
        if info.context_length:
            config["context_length"] = info.context_length
        if info.embedding_length:
            config["embedding_length"] = info.embedding_length
        config |= {"architecture": "amd64", "os": "linux"}  # required by the image spec
        return [layer, *projectors], config

    def _existing_blob(self, path: str, digest: str) -> Path:
        blob = self.blob_path(digest)
        if not blob.is_file():
            raise BadRequestError(
                f"blob not found for {path} (digest {digest}); upload it to /api/blobs/{digest} first"
            )
        return blob

    def _read_gguf_file(self, path: str, blob: Path) -> GGUFInfo:
        try:
            return self.gguf_cache.read(blob)
        except GGUFError as exc:
            raise BadRequestError(f"supplied file was not in GGUF format: {path}: {exc.message}") from exc

    def _read_json_blob(self, digest: str) -> Any:
        try:
            return json.loads(self.blob_path(digest).read_bytes())
        except (OSError, ValueError) as exc:
            raise CorralError(f"cannot read layer {digest}: {exc}") from exc

    def _write_layers(self, plan: _CreatePlan) -> list[str]:
        """Store the layers this create introduces; one status line per final layer."""
        statuses = []
        for layer in plan.layers:
            hex_digest = digest_hex(layer["digest"])
            created = False
            if hex_digest in plan.new_blobs:
                _, created = self._write_blob_bytes(plan.new_blobs[hex_digest])
            statuses.append(f"{'creating new' if created else 'using existing'} layer sha256:{hex_digest}")
        return statuses

    def _commit_create(self, plan: _CreatePlan) -> None:
        """Under the store lock: check every layer is present, write the manifest, prune."""
        for layer in plan.layers:
            hex_digest = digest_hex(layer["digest"])
            if hex_digest in plan.new_blobs:
                # A concurrent delete may have pruned a blob another model shared with us.
                self._write_blob_bytes(plan.new_blobs[hex_digest])
            elif not (self.blobs_dir / f"sha256-{hex_digest}").is_file():
                raise CorralError(f"layer {layer['digest']} is missing from the store")
        old = self._locate(plan.name)
        old_digests: set[str] = set()
        if old is not None:
            with suppress(OSError, ValueError):
                old_digests = _manifest_digests(self._read_manifest(old[1])[1])
        config_bytes = _go_json(plan.config)
        config_hex, _ = self._write_blob_bytes(config_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": f"sha256:{config_hex}", "size": len(config_bytes)},
            "layers": plan.layers,
        }
        self._write_manifest_sync(plan.name, _compact_json(manifest))
        if old_digests and not self._noprune:
            self._prune(old_digests)

    # --- copy / delete ---------------------------------------------------------------------

    async def copy(self, source: str, destination: str) -> None:
        """Duplicate a manifest under a new name; the blobs are shared."""
        src = _parse_or(source, f"source {go_quote(str(source))} is invalid")
        dst = _parse_or(destination, f"destination {go_quote(str(destination))} is invalid")
        async with self._lock:
            await asyncio.to_thread(self._copy_sync, src, dst, source)

    def _copy_sync(self, src: ModelName, dst: ModelName, requested: str) -> None:
        located = self._locate(src)
        if located is None:
            raise NotFoundError(f"model {go_quote(requested)} not found")
        data = located[1].read_bytes()
        self._write_manifest_sync(self._existing_or(dst), data)

    async def delete(self, name: str) -> None:
        """Remove a manifest, its empty directories, and the blobs only it used."""
        parsed = _parse_or(name, f"name {go_quote(str(name))} is invalid")
        async with self._lock:
            await asyncio.to_thread(self._delete_sync, parsed, name)

    def _delete_sync(self, parsed: ModelName, requested: str) -> None:
        located = self._locate(parsed)
        if located is None:
            raise model_not_found(requested)
        path = located[1]
        try:
            digests = _manifest_digests(self._read_manifest(path)[1])
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            # Still remove it: a damaged manifest must not be undeletable.
            logger.warning("deleting damaged manifest %s: %s", path, exc)
            digests = set()
        path.unlink()
        self._remove_empty_dirs(path.parent)
        self._prune(digests)

    def _remove_empty_dirs(self, directory: Path) -> None:
        while directory != self.manifests_dir and self.manifests_dir in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def _prune(self, candidates: Iterable[str]) -> None:
        """Delete those candidate blobs no remaining manifest references."""
        referenced: set[str] = set()
        for _, path in self._scan():
            try:
                referenced |= _manifest_digests(self._read_manifest(path)[1])
            except (OSError, ValueError, AttributeError, TypeError) as exc:
                logger.warning("ignoring unreadable manifest %s while pruning: %s", path, exc)
        for hex_digest in set(candidates) - referenced:
            blob = self.blobs_dir / f"sha256-{hex_digest}"
            try:
                blob.unlink()
                logger.info("removed unused blob sha256:%s", hex_digest)
            except FileNotFoundError:
                pass
            except OSError as exc:
                logger.warning("could not remove blob %s: %s", blob, exc)


# --- helpers ---------------------------------------------------------------------------------


def _walk_files(root: Path, depth: int) -> list[Path]:
    """Regular files exactly ``depth`` levels below root, skipping dot names."""
    level = [root]
    for _ in range(depth - 1):
        next_level = []
        for directory in level:
            with suppress(OSError):
                next_level += [Path(e.path) for e in os.scandir(directory) if e.is_dir() and not e.name.startswith(".")]
        level = next_level
    files = []
    for directory in level:
        with suppress(OSError):
            files += [Path(e.path) for e in os.scandir(directory) if e.is_file() and not e.name.startswith(".")]
    return files


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = LocalStore._open_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise


def _write_hashed(f: Any, hasher: Any, data: bytes, *, sync: bool = False) -> None:
    hasher.update(data)
    f.write(data)
    if sync:
        f.flush()
        os.fsync(f.fileno())


def _compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _go_json(value: Any, *, sort_keys: bool = False) -> bytes:
    """What Go's ``json.Encoder.Encode`` writes: compact, HTML-escaped, newline-terminated.

    Matching it byte for byte gives the same layer digests Ollama would, so the same
    parameters or messages share a blob with models Ollama created in this store.
    """
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return (text + "\n").encode()


def _without(layers: list[dict], *media_types: str) -> list[dict]:
    return [layer for layer in layers if layer["mediaType"] not in media_types]


def _layer(media_type: str, hex_digest: str, size: int) -> dict:
    return {"mediaType": media_type, "digest": f"sha256:{hex_digest}", "size": size}


def _manifest_size(manifest: dict) -> int:
    layers = manifest.get("layers") or []
    return sum(int(layer.get("size", 0)) for layer in layers) + int((manifest.get("config") or {}).get("size", 0))


def _manifest_digests(manifest: dict) -> set[str]:
    digests = set()
    for layer in [manifest.get("config") or {}, *(manifest.get("layers") or [])]:
        match = _DIGEST.fullmatch(str(layer.get("digest", "")))
        if match:
            digests.add(match.group(1).lower())
    return digests


def _model_info(info: GGUFInfo, verbose: bool) -> dict:
    # Go marshals maps with sorted keys; Ollama drops these two from model_info.
    out = {}
    for key in sorted(info.kv):
        if key in ("general.name", "tokenizer.chat_template"):
            continue
        value = info.kv[key]
        if isinstance(value, list) and len(value) > SHOW_MAX_ARRAY and not verbose:
            value = None
        out[key] = value
    return out


def _parse_or(text: Any, message: str) -> ModelName:
    if not isinstance(text, str):
        raise BadRequestError(message)
    try:
        return ModelName.parse(text)
    except InvalidNameError:
        raise BadRequestError(message) from None


def _from_legacy(request: dict) -> dict:
    """Turn a pre-0.5.5 ``{"modelfile": ...}`` request into the JSON form."""
    if "modelfile" not in request and "path" not in request:
        return request
    if request.get("from") or request.get("files"):
        return request
    modelfile = request.get("modelfile")
    if isinstance(modelfile, str) and modelfile:
        converted = parse_modelfile(modelfile).to_create_request()
        for key in ("model", "name", "quantize", "quantization", "stream"):
            if key in request:
                converted[key] = request[key]
        return converted
    if request.get("path"):
        # Old servers read a Modelfile from their own disk; this store reads nothing
        # outside its root, so the client must send the text.
        raise BadRequestError('reading a Modelfile from a server path is not supported; send its text in "modelfile"')
    raise BadRequestError("path or Modelfile are required")


def _check_files(files: Any, field_name: str) -> dict[str, str]:
    if files is None:
        return {}
    if not isinstance(files, dict):
        raise BadRequestError(f"{field_name} must be an object of file names to digests")
    checked = {}
    for path, digest in files.items():
        if not _is_relative_path(path):
            raise BadRequestError("file path must be relative")
        if not isinstance(digest, str) or not digest:
            raise BadRequestError("invalid digest format")
        digest_hex(digest)
        checked[path] = digest
    return checked


def _is_relative_path(path: Any) -> bool:
    """Go's ``fs.ValidPath`` plus Ollama's extra refusals (``.``, backslashes, colons)."""
    if not isinstance(path, str) or path in ("", ".") or any(c in path for c in "\\:\x00"):
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def _check_license(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise BadRequestError("license must be a string or a list of strings")


def _optional_str(request: dict, key: str) -> str | None:
    value = request.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequestError(f"{key} must be a string")
    return value


def _check_parameters(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequestError("parameters must be an object")
    return validate_options(value)  # types checked as for request options; OptionError is a 400


def _check_messages(value: Any) -> list[dict] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadRequestError("messages must be a list")
    messages = []
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("role", ""), str):
            raise BadRequestError("each message must be an object with a role and content")
        content = message.get("content", "")
        messages.append(
            {"role": message.get("role", ""), "content": content if isinstance(content, str) else str(content)}
        )
    return messages


def _check_template(template: str) -> None:
    try:
        from corral.worker.gotemplate import Template, TemplateError
    except ImportError:  # a router-only install may not ship the worker's template engine
        logger.warning("cannot check templates: corral.worker.gotemplate is not available")
        return
    try:
        Template(template, funcs=_TEMPLATE_FUNCS)
    except TemplateError as exc:
        raise BadRequestError(f"template error: {exc}") from exc
