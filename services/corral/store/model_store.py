"""What a model store does, whatever holds its manifests and blobs (docs/api-coverage.md,
"Model management" and "Manifests and the local layout").

``ModelStore`` is the one implementation of tags, show, create, copy and delete. It reaches
its storage only through a few blocking primitives (``_locate``, ``_scan``,
``_read_manifest``, ``_write_manifest_sync``, ``_delete_manifest``, ``_blob_size``,
``_read_blob``, ``_put_small_blob``, ``_blob_gguf``, ``_blob_location``, ``_prune``) plus
``has_blob``/``write_blob``, which the two stores implement:

- ``LocalStore`` (local.py): Ollama's on-disk layout under ``OLLAMA_MODELS``;
- ``RegistryStore`` (oci.py): the cluster's OCI registry.

So the API routes serve either store, chosen by configuration. The public methods are
async; storage work runs in threads.
"""

from __future__ import annotations

import asyncio
import copy as copy_module
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
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
from corral.gocompat import encode, quote
from corral.gotemplate import Template, TemplateError
from corral.store.gguf import GGUFError, GGUFInfo, human_number
from corral.store.modelfile import format_modelfile, format_parameters, parse_modelfile
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
    model_path: Path | None  # a local file the engine can open (None in a remote store)
    adapters: list[Path] = field(default_factory=list)
    projectors: list[Path] = field(default_factory=list)
    model_digest: str | None = None  # hex of the model layer
    projector_digests: list[str] = field(default_factory=list)
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


class ModelStore:
    """The store's logic over abstract storage; see the module docstring for the primitives."""

    def __init__(
        self,
        *,
        capabilities: Callable[[ModelRecord, GGUFInfo | None], list[str]] | None = None,
        noprune: bool = False,
    ) -> None:
        self._capabilities = capabilities
        self._noprune = noprune
        # Serialises manifest writes with pruning in this process, so a create can't
        # lose a blob to a concurrent delete's reference scan. Other processes sharing
        # the store are not covered.
        self._lock = asyncio.Lock()

    # --- storage primitives (blocking) ------------------------------------------------------

    def _locate(self, name: ModelName) -> tuple[ModelName, Any] | None:
        """The stored name and a manifest reference for ``name``, matched case-insensitively."""
        raise NotImplementedError

    def _scan(self) -> list[tuple[ModelName, Any]]:
        raise NotImplementedError

    def _read_manifest(self, ref: Any) -> tuple[bytes, dict, datetime]:
        """Exact bytes, parsed object, and when the model was last written."""
        raise NotImplementedError

    def _write_manifest_sync(self, name: ModelName, data: bytes) -> str:
        raise NotImplementedError

    def _delete_manifest(self, name: ModelName, ref: Any) -> None:
        raise NotImplementedError

    def _blob_size(self, hex_digest: str) -> int | None:
        raise NotImplementedError

    def _read_blob(self, hex_digest: str) -> bytes:
        """A small blob's bytes (config, template, params...)."""
        raise NotImplementedError

    def _put_small_blob(self, data: bytes) -> tuple[str, bool]:
        """Store small content; returns (hex, created)."""
        raise NotImplementedError

    def _blob_gguf(self, hex_digest: str) -> GGUFInfo:
        raise NotImplementedError

    def _blob_location(self, hex_digest: str) -> Path | None:
        """A local path to the blob, where the store has one."""
        return None

    def _prune(self, candidates: Iterable[str]) -> int:
        """Delete those candidate blobs no remaining manifest references; returns how many."""
        return 0

    async def has_blob(self, digest: str) -> bool:
        raise NotImplementedError

    async def write_blob(self, digest: str, chunks: AsyncIterator[bytes]) -> bool:
        """Store an upload; True if created, False if it was already there (body unread)."""
        raise NotImplementedError

    # --- records ----------------------------------------------------------------------------

    def _existing_or(self, name: ModelName) -> ModelName:
        """Ollama's getExistingName: writes go to a model's stored case when it exists."""
        located = self._locate(name)
        return located[0] if located else name

    def _read_config(self, manifest: dict) -> dict:
        digest = (manifest.get("config") or {}).get("digest")
        if not digest:
            return {}
        config = json.loads(self._read_blob(digest_hex(digest)))
        if not isinstance(config, dict):
            raise TypeError("config is not a JSON object")
        return config

    def _summary(self, name: ModelName, ref: Any) -> ModelRecord:
        """The record from the manifest and config alone, without reading its layers."""
        data, manifest, modified = self._read_manifest(ref)
        return ModelRecord(
            name=name,
            manifest=manifest,
            digest=hashlib.sha256(data).hexdigest(),
            modified_at=modified,
            size=_manifest_size(manifest),
            config=self._read_config(manifest),
            model_path=None,
        )

    def _load(self, name: ModelName, ref: Any) -> ModelRecord:
        try:
            record = self._summary(name, ref)
            for layer in record.manifest.get("layers") or []:
                self._apply_layer(record, layer)
        except _DAMAGED as exc:
            raise CorralError(f"model {name.display} is damaged: {exc}") from exc
        return record

    def _apply_layer(self, record: ModelRecord, layer: dict) -> None:
        media_type, hex_digest = layer.get("mediaType"), digest_hex(layer.get("digest", ""))
        if media_type == MEDIA_MODEL:
            if record.model_digest is None:
                record.model_digest = hex_digest
                record.model_path = self._blob_location(hex_digest)
                record.parent_model = layer.get("from", "")
        elif media_type == MEDIA_PROJECTOR:
            record.projector_digests.append(hex_digest)
            record.projectors.append(self._blob_location(hex_digest) or Path(f"sha256-{hex_digest}"))
        elif media_type == MEDIA_ADAPTER:
            record.adapters.append(self._blob_location(hex_digest) or Path(f"sha256-{hex_digest}"))
        elif media_type in (MEDIA_TEMPLATE, MEDIA_PROMPT):
            record.template = self._read_blob(hex_digest).decode("utf-8")
        elif media_type == MEDIA_SYSTEM:
            record.system = self._read_blob(hex_digest).decode("utf-8")
        elif media_type == MEDIA_PARAMS:
            params = json.loads(self._read_blob(hex_digest))
            record.params = params if isinstance(params, dict) else {}
        elif media_type == MEDIA_MESSAGES:
            messages = json.loads(self._read_blob(hex_digest))
            record.messages = messages if isinstance(messages, list) else []
        elif media_type == MEDIA_LICENSE:
            record.license.append(self._read_blob(hex_digest).decode("utf-8"))

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
        for name, ref in self._scan():
            try:
                record = self._summary(name, ref)
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
        info = self._gguf_for(record.model_digest)
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
        if record.projector_digests:
            projector = self._gguf_for(record.projector_digests[0])
            if projector is not None:
                response["projector_info"] = _model_info(projector, verbose)
        if info is not None:
            response["tensors"] = [dict(tensor) for tensor in info.tensors]
        response["capabilities"] = self._capabilities_for(record, info)
        response["modified_at"] = format_time(record.modified_at)
        if record.config.get("requires"):
            response["requires"] = record.config["requires"]
        return response

    def _gguf_for(self, hex_digest: str | None) -> GGUFInfo | None:
        if hex_digest is None:
            return None
        try:
            return self._blob_gguf(hex_digest)
        except (OSError, GGUFError) as exc:
            raise CorralError(f"cannot read model file sha256-{hex_digest}: {exc}") from exc

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
                size = self._existing_blob(path, digest)
                self._read_gguf_file(path, digest)
                adapter_layers.append(_layer(MEDIA_ADAPTER, digest_hex(digest), size))
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
            layers = _without(layers, MEDIA_PARAMS) + [text_layer(MEDIA_PARAMS, encode(merged, sort_keys=True))]
        if messages:
            layers = _without(layers, MEDIA_MESSAGES) + [text_layer(MEDIA_MESSAGES, encode(messages))]

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
            size = self._existing_blob(path, digest)
            statuses.append("parsing GGUF")
            info = self._read_gguf_file(path, digest)
            if info.kind == "adapter":
                raise BadRequestError(f'{path} is a LoRA adapter; pass it in "adapters"')
            layer = _layer(MEDIA_MODEL, digest_hex(digest), size)
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

    def _existing_blob(self, path: str, digest: str) -> int:
        """The size of an uploaded blob ``files`` names, else Ollama's 400."""
        size = self._blob_size(digest_hex(digest))
        if size is None:
            raise BadRequestError(
                f"blob not found for {path} (digest {digest}); upload it to /api/blobs/{digest} first"
            )
        return size

    def _read_gguf_file(self, path: str, digest: str) -> GGUFInfo:
        try:
            return self._blob_gguf(digest_hex(digest))
        except GGUFError as exc:
            raise BadRequestError(f"supplied file was not in GGUF format: {path}: {exc.message}") from exc

    def _read_json_blob(self, digest: str) -> Any:
        try:
            return json.loads(self._read_blob(digest_hex(digest)))
        except (OSError, ValueError) as exc:
            raise CorralError(f"cannot read layer {digest}: {exc}") from exc

    def _write_layers(self, plan: _CreatePlan) -> list[str]:
        """Store the layers this create introduces; one status line per final layer."""
        statuses = []
        for layer in plan.layers:
            hex_digest = digest_hex(layer["digest"])
            created = False
            if hex_digest in plan.new_blobs:
                _, created = self._put_small_blob(plan.new_blobs[hex_digest])
            statuses.append(f"{'creating new' if created else 'using existing'} layer sha256:{hex_digest}")
        return statuses

    def _commit_create(self, plan: _CreatePlan) -> None:
        """Under the store lock: check every layer is present, write the manifest, prune."""
        for layer in plan.layers:
            hex_digest = digest_hex(layer["digest"])
            if hex_digest in plan.new_blobs:
                # A concurrent delete may have pruned a blob another model shared with us.
                self._put_small_blob(plan.new_blobs[hex_digest])
            elif self._blob_size(hex_digest) is None:
                raise CorralError(f"layer {layer['digest']} is missing from the store")
        old = self._locate(plan.name)
        old_digests: set[str] = set()
        if old is not None:
            with suppress(OSError, ValueError):
                old_digests = manifest_digests(self._read_manifest(old[1])[1])
        config_bytes = encode(plan.config)
        config_hex, _ = self._put_small_blob(config_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": f"sha256:{config_hex}", "size": len(config_bytes)},
            "layers": plan.layers,
        }
        self._write_manifest_sync(plan.name, _compact_json(manifest))
        if old_digests and not self._noprune:
            self._prune(old_digests)

    # --- pull and push (store/pull.py drives these; the blob transfers are the store's own) ----

    async def commit_pull(self, name: ModelName, manifest: bytes) -> bool:
        """Write a pulled manifest; True when layers only the old one used were removed."""
        async with self._lock:
            return await asyncio.to_thread(self._commit_pull_sync, name, manifest)

    def _commit_pull_sync(self, name: ModelName, manifest: bytes) -> bool:
        name = self._existing_or(name)
        new_digests = manifest_digests(json.loads(manifest))
        for hex_digest in new_digests:
            if self._blob_size(hex_digest) is None:
                raise CorralError(f"layer sha256:{hex_digest} is missing from the store")
        old_digests: set[str] = set()
        located = self._locate(name)
        if located is not None:
            with suppress(OSError, ValueError, AttributeError, TypeError):
                old_digests = manifest_digests(self._read_manifest(located[1])[1])
        self._write_manifest_sync(name, manifest)
        if self._noprune:
            return False
        return self._prune(old_digests - new_digests) > 0

    async def manifest_for_push(self, name: ModelName) -> bytes:
        def read() -> bytes:
            located = self._locate(name)
            if located is None:
                raise model_not_found(name.display)
            return self._read_manifest(located[1])[0]

        return await asyncio.to_thread(read)

    # --- copy / delete ---------------------------------------------------------------------

    async def copy(self, source: str, destination: str) -> None:
        """Duplicate a manifest under a new name; the blobs are shared."""
        src = _parse_or(source, f"source {quote(str(source))} is invalid")
        dst = _parse_or(destination, f"destination {quote(str(destination))} is invalid")
        async with self._lock:
            await asyncio.to_thread(self._copy_sync, src, dst, source)

    def _copy_sync(self, src: ModelName, dst: ModelName, requested: str) -> None:
        located = self._locate(src)
        if located is None:
            raise NotFoundError(f"model {quote(requested)} not found")
        data = self._read_manifest(located[1])[0]
        self._write_manifest_sync(self._existing_or(dst), data)

    async def delete(self, name: str) -> None:
        """Remove a manifest, its empty directories, and the blobs only it used."""
        parsed = _parse_or(name, f"name {quote(str(name))} is invalid")
        async with self._lock:
            await asyncio.to_thread(self._delete_sync, parsed, name)

    def _delete_sync(self, parsed: ModelName, requested: str) -> None:
        located = self._locate(parsed)
        if located is None:
            raise model_not_found(requested)
        stored, ref = located
        try:
            digests = manifest_digests(self._read_manifest(ref)[1])
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            # Still remove it: a damaged manifest must not be undeletable.
            logger.warning("deleting damaged manifest %s: %s", stored.display, exc)
            digests = set()
        self._delete_manifest(stored, ref)
        self._prune(digests)


# --- helpers ---------------------------------------------------------------------------------


def _compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _without(layers: list[dict], *media_types: str) -> list[dict]:
    return [layer for layer in layers if layer["mediaType"] not in media_types]


def _layer(media_type: str, hex_digest: str, size: int) -> dict:
    return {"mediaType": media_type, "digest": f"sha256:{hex_digest}", "size": size}


def _manifest_size(manifest: dict) -> int:
    layers = manifest.get("layers") or []
    return sum(int(layer.get("size", 0)) for layer in layers) + int((manifest.get("config") or {}).get("size", 0))


def manifest_digests(manifest: dict) -> set[str]:
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
        Template(template, funcs=_TEMPLATE_FUNCS)
    except TemplateError as exc:
        raise BadRequestError(f"template error: {exc}") from exc
