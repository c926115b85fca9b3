"""Ollama's ``format`` as a GBNF grammar for llama.cpp's grammar sampler.

A JSON schema comes from the client, so its conversion is bounded: llama.cpp's converter
writes a repetition count out in full (``minItems: 10**9`` is a billion copies of a rule) and
nests one group per optional repeat (``maxLength: 100000`` is a grammar nested 100,000 deep,
which llama.cpp's recursive grammar parser cannot take). Schemas past these bounds are refused
with a 400 before anything is built.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from corral.api.errors import BadRequestError
from corral.api.gojson import dumps

MAX_SCHEMA_BYTES = 256 * 1024
MAX_SCHEMA_DEPTH = 64
MAX_REPEAT = 1024  # minItems, maxItems, minLength, maxLength, and {m,n} in patterns
MAX_GRAMMAR_BYTES = 1 << 20
_COUNTS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")
_QUANTIFIER = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def format_grammar(fmt: Any) -> str | None:
    """None when unset (``null``, ``""``); JSON for ``"json"``; a schema's grammar for an object."""
    if fmt is None or fmt == "" or fmt == "null":
        return None
    if fmt == "json":
        return JSON_GBNF
    if isinstance(fmt, dict):
        _check_schema(fmt)
        text = json.dumps(fmt)
        if len(text) > MAX_SCHEMA_BYTES:
            raise BadRequestError(f"invalid JSON schema in format: over {MAX_SCHEMA_BYTES} bytes")
        try:
            grammar = json_schema_to_gbnf(text)
        except Exception as exc:  # the converter raises assorted errors on bad schemas
            raise BadRequestError(f"invalid JSON schema in format: {exc}") from exc
        if len(grammar) > MAX_GRAMMAR_BYTES:
            raise BadRequestError(f"invalid JSON schema in format: its grammar is over {MAX_GRAMMAR_BYTES} bytes")
        return grammar
    # Ollama quotes the raw JSON it received (Go's %q), so a string shows its own quotes escaped.
    shown = json.dumps(dumps(fmt, ensure_ascii=False), ensure_ascii=False)
    raise BadRequestError(f'invalid format: {shown}; expected "json" or a valid JSON Schema object')


def _check_schema(schema: dict) -> None:
    def refuse(why: str) -> BadRequestError:
        return BadRequestError(f"invalid JSON schema in format: {why}")

    todo: list[tuple[Any, int]] = [(schema, 1)]
    while todo:  # iterative: the nesting is the client's to choose
        node, depth = todo.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise refuse(f"nested deeper than {MAX_SCHEMA_DEPTH}")
        if isinstance(node, dict):
            for key, value in node.items():
                if (
                    key in _COUNTS
                    and isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and value > MAX_REPEAT
                ):
                    raise refuse(f"{key} {value} is over {MAX_REPEAT}")
                if key == "pattern" and isinstance(value, str):
                    for low, high in _QUANTIFIER.findall(value):
                        if int(low) > MAX_REPEAT or (high and int(high) > MAX_REPEAT):
                            raise refuse(f"a repetition in pattern is over {MAX_REPEAT}")
                todo.append((value, depth + 1))
        elif isinstance(node, list):
            todo.extend((item, depth + 1) for item in node)
