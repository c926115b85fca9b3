"""``/api/show``: a model's details, Modelfile, parameters, template, GGUF metadata and
capabilities, as Ollama composes them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corral.api.errors import CorralError
from corral.api.streams import format_time
from corral.store.gguf import GGUFError, GGUFInfo
from corral.store.modelfile import format_modelfile, format_parameters

if TYPE_CHECKING:
    from corral.store.model_store import ModelRecord, ModelStore

# Ollama's template when a model has none (and its GGUF has no chat template either).
DEFAULT_TEMPLATE = "{{ .Prompt }}"
# Arrays longer than this show as null in a non-verbose /api/show (Ollama's default
# maxArraySize): nobody wants 50k tokenizer strings in every show response.
SHOW_MAX_ARRAY = 1024


def show_response(
    store: ModelStore, record: ModelRecord, verbose: bool, system: str | None, options: dict | None
) -> dict:
    """The /api/show response for a record; ``system``/``options`` are the request's overrides."""
    info = _gguf_for(store, record.model_digest)
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
            {"role": m.get("role", ""), "content": m.get("content", "")} for m in record.messages if isinstance(m, dict)
        ]
    response["model_info"] = _model_info(info, verbose) if info else {}
    if record.projector_digests:
        projector = _gguf_for(store, record.projector_digests[0])
        if projector is not None:
            response["projector_info"] = _model_info(projector, verbose)
    if info is not None:
        response["tensors"] = [dict(tensor) for tensor in info.tensors]
    response["capabilities"] = store.capabilities(record, info)
    response["modified_at"] = format_time(record.modified_at)
    if record.config.get("requires"):
        response["requires"] = record.config["requires"]
    return response


def _gguf_for(store: ModelStore, hex_digest: str | None) -> GGUFInfo | None:
    if hex_digest is None:
        return None
    try:
        return store.blob_gguf(hex_digest)
    except (OSError, GGUFError) as exc:
        raise CorralError(f"cannot read model file sha256-{hex_digest}: {exc}") from exc


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
