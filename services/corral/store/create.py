"""``/api/create``: a model from a GGUF upload, another model, a Modelfile or the JSON form.

``ModelCreator.run`` checks the request (every 400 before the first status line), plans the
new manifest's layers (the base model's, the GGUF's, then template, system, parameters,
messages, adapters, license over them), writes the small blobs, and commits the manifest under
the store's lock. It reaches the store only through ``Storage`` and ``ModelStore``'s records.
"""

from __future__ import annotations

import asyncio
import copy as copy_module
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from corral.api.errors import BadRequestError, CorralError, InvalidNameError, model_not_found
from corral.api.options import validate_options
from corral.gocompat import encode
from corral.gotemplate import Template, TemplateError
from corral.store.gguf import GGUFError, GGUFInfo, human_number
from corral.store.manifest import (
    MEDIA_ADAPTER,
    MEDIA_CONFIG,
    MEDIA_LICENSE,
    MEDIA_MANIFEST,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_PROJECTOR,
    MEDIA_PROMPT,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    compact_json,
    digest_hex,
    manifest_digests,
)
from corral.store.modelfile import parse_modelfile
from corral.store.names import ModelName

if TYPE_CHECKING:
    from corral.store.model_store import ModelStore

# Names Ollama's template package defines; a template calling them must still parse.
_TEMPLATE_FUNCS: dict[str, Callable[..., Any]] = {
    "json": lambda *args: "",
    "currentDate": lambda *args: "",
    "yesterdayDate": lambda *args: "",
    "toTypeScriptType": lambda *args: "",
}


@dataclass
class _CreatePlan:
    """Everything /api/create decided before its first progress line."""

    name: ModelName
    layers: list[dict]  # final manifest layers, in order
    new_blobs: dict[str, bytes]  # hex -> content for layers this create introduces
    config: dict
    statuses_before: list[str]  # "parsing GGUF" lines


class ModelCreator:
    def __init__(self, store: ModelStore) -> None:
        self.store = store

    async def run(self, request: dict) -> AsyncIterator[dict]:
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
        async with self.store.writing:
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
        name = self.store.existing_name(name)
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
        located = self.store.locate(base_name)
        if located is None:
            raise model_not_found(from_)
        base = self.store.load(*located)
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
        size = self.store.blob_size(digest_hex(digest))
        if size is None:
            raise BadRequestError(
                f"blob not found for {path} (digest {digest}); upload it to /api/blobs/{digest} first"
            )
        return size

    def _read_gguf_file(self, path: str, digest: str) -> GGUFInfo:
        try:
            return self.store.blob_gguf(digest_hex(digest))
        except GGUFError as exc:
            raise BadRequestError(f"supplied file was not in GGUF format: {path}: {exc.message}") from exc

    def _read_json_blob(self, digest: str) -> Any:
        try:
            return json.loads(self.store.read_blob(digest_hex(digest)))
        except (OSError, ValueError) as exc:
            raise CorralError(f"cannot read layer {digest}: {exc}") from exc

    def _write_layers(self, plan: _CreatePlan) -> list[str]:
        """Store the layers this create introduces; one status line per final layer."""
        statuses = []
        for layer in plan.layers:
            hex_digest = digest_hex(layer["digest"])
            created = False
            if hex_digest in plan.new_blobs:
                _, created = self.store.put_small_blob(plan.new_blobs[hex_digest])
            statuses.append(f"{'creating new' if created else 'using existing'} layer sha256:{hex_digest}")
        return statuses

    def _commit_create(self, plan: _CreatePlan) -> None:
        """Under the store lock: check every layer is present, write the manifest, prune."""
        for layer in plan.layers:
            hex_digest = digest_hex(layer["digest"])
            if hex_digest in plan.new_blobs:
                # A concurrent delete may have pruned a blob another model shared with us.
                self.store.put_small_blob(plan.new_blobs[hex_digest])
            elif self.store.blob_size(hex_digest) is None:
                raise CorralError(f"layer {layer['digest']} is missing from the store")
        old = self.store.locate(plan.name)
        old_digests: set[str] = set()
        if old is not None:
            with suppress(OSError, ValueError):
                old_digests = manifest_digests(self.store.read_manifest(old[1])[1])
        config_bytes = encode(plan.config)
        config_hex, _ = self.store.put_small_blob(config_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": f"sha256:{config_hex}", "size": len(config_bytes)},
            "layers": plan.layers,
        }
        self.store.put_manifest(plan.name, compact_json(manifest))
        if old_digests and not self.store.noprune:
            self.store.prune_unreferenced(old_digests)


def _without(layers: list[dict], *media_types: str) -> list[dict]:
    return [layer for layer in layers if layer["mediaType"] not in media_types]


def _layer(media_type: str, hex_digest: str, size: int) -> dict:
    return {"mediaType": media_type, "digest": f"sha256:{hex_digest}", "size": size}


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
