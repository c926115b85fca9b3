"""Ollama's ``format`` as a GBNF grammar for llama.cpp's grammar sampler."""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from corral.api.errors import BadRequestError


def format_grammar(fmt: Any) -> str | None:
    """None when unset (``null``, ``""``); JSON for ``"json"``; a schema's grammar for an object."""
    if fmt is None or fmt == "" or fmt == "null":
        return None
    if fmt == "json":
        return JSON_GBNF
    if isinstance(fmt, dict):
        try:
            return json_schema_to_gbnf(json.dumps(fmt))
        except Exception as exc:  # the converter raises assorted errors on bad schemas
            raise BadRequestError(f"invalid JSON schema in format: {exc}") from exc
    # Ollama quotes the raw JSON it received (Go's %q), so a string shows its own quotes escaped.
    shown = json.dumps(json.dumps(fmt, separators=(",", ":"), ensure_ascii=False), ensure_ascii=False)
    raise BadRequestError(f'invalid format: {shown}; expected "json" or a valid JSON Schema object')
