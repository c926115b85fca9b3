"""Ollama's ``options``: the table of known keys, their types, defaults, and checks.

The same table types request ``options`` (JSON values) and Modelfile ``PARAMETER``
lines (strings), so both paths agree on names and kinds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from corral.api.errors import OptionError

logger = logging.getLogger(__name__)

Kind = Literal["integer", "float32", "boolean", "string", "array"]


INT32_MAX = (1 << 31) - 1
FLOAT32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class Option:
    kind: Kind
    default: Any
    # Load-time ("runner") options change the llama.cpp context: a new value
    # means a reload, exactly as in Ollama's scheduler.
    runner: bool = False
    # Integers are clamped into [low, high]: llama.cpp takes them as 32-bit C ints, where a
    # larger value would wrap around (Ollama's Go wraps them too, into nonsense). What a value
    # means relative to the model (num_ctx, num_batch, num_predict) is bounded by inference.
    low: int = -INT32_MAX
    high: int = INT32_MAX


OPTIONS: dict[str, Option] = {
    # runner
    "num_ctx": Option("integer", 4096, runner=True),
    "num_batch": Option("integer", 512, runner=True, low=1),
    "num_gpu": Option("integer", -1, runner=True, low=-1),
    "main_gpu": Option("integer", 0, runner=True, low=0),
    "use_mmap": Option("boolean", None, runner=True),
    # ggml's own ceiling (GGML_MAX_N_THREADS); 0 means the worker's CORRAL_NUM_THREADS.
    "num_thread": Option("integer", 0, runner=True, low=0, high=512),
    "draft_num_predict": Option("integer", 4, runner=True),
    # sampling
    "num_keep": Option("integer", 4),
    "seed": Option("integer", -1),
    "num_predict": Option("integer", -1),
    "top_k": Option("integer", 40),
    "top_p": Option("float32", 0.9),
    "min_p": Option("float32", 0.0),
    "typical_p": Option("float32", 1.0),
    "repeat_last_n": Option("integer", 64),
    "temperature": Option("float32", 0.8),
    "repeat_penalty": Option("float32", 1.0),
    "presence_penalty": Option("float32", 0.0),
    "frequency_penalty": Option("float32", 0.0),
    "stop": Option("array", None),
}

RUNNER_OPTIONS = frozenset(k for k, o in OPTIONS.items() if o.runner)

# Removed from Ollama over time; requests may still send them and must not fail.
REMOVED_OPTIONS = frozenset(
    {
        "numa",
        "tfs_z",
        "penalize_newline",
        "mirostat",
        "mirostat_eta",
        "mirostat_tau",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
    }
)
# A Modelfile PARAMETER with one of these names warns and is dropped.
DEPRECATED_PARAMETERS = frozenset(
    {
        "mirostat",
        "mirostat_eta",
        "mirostat_tau",
        "penalize_newline",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
    }
)


def _check_value(key: str, option: Option, value: Any) -> Any:
    kind = option.kind
    if kind == "integer":
        # JSON numbers arrive as int or float; Go truncates a float into an int field.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(f'option "{key}" must be of type integer')
        return min(max(int(value), option.low), option.high)
    if kind == "float32":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(f'option "{key}" must be of type float32')
        return min(max(float(value), -FLOAT32_MAX), FLOAT32_MAX)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise OptionError(f'option "{key}" must be of type boolean')
        return value
    if kind == "array":
        if isinstance(value, str):
            # A lone string is what people mean when they write "stop": "\n".
            return [value]
        if not isinstance(value, list):
            raise OptionError(f'option "{key}" must be of type array')
        for item in value:
            if not isinstance(item, str):
                raise OptionError(f'option "{key}" must be of type array of strings')
        return list(value)
    if not isinstance(value, str):
        raise OptionError(f'option "{key}" must be of type string')
    return value


def validate_options(options: Any) -> dict[str, Any]:
    """Check a request's ``options``; unknown keys are dropped with a warning, as in Ollama."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise OptionError("options must be an object")
    checked: dict[str, Any] = {}
    for key, value in options.items():
        option = OPTIONS.get(key)
        if option is None:
            if key not in REMOVED_OPTIONS:
                logger.warning("invalid option provided: %s", key)
            continue
        if value is None:
            continue
        checked[key] = _check_value(key, option, value)
    return checked


def parse_parameter(key: str, text: str) -> Any:
    """Type one Modelfile ``PARAMETER key value`` (value as written)."""
    option = OPTIONS.get(key)
    if option is None:
        raise OptionError(f"unknown parameter '{key}'")
    text = text.strip()
    if option.kind == "integer":
        try:
            return int(text)
        except ValueError:
            try:
                return int(float(text))
            except ValueError:
                raise OptionError(f"invalid int value [{text}]") from None
    if option.kind == "float32":
        try:
            return float(text)
        except ValueError:
            raise OptionError(f"invalid float value [{text}]") from None
    if option.kind == "boolean":
        lowered = text.lower()
        if lowered in ("true", "1", "t"):
            return True
        if lowered in ("false", "0", "f"):
            return False
        raise OptionError(f"invalid bool value [{text}]")
    if option.kind == "array":
        return [text]
    return text


def merge_parameters(into: dict[str, Any], key: str, value: Any) -> None:
    """Add one typed parameter; repeated ``stop`` lines accumulate."""
    if OPTIONS[key].kind == "array":
        into.setdefault(key, [])
        into[key].extend(value if isinstance(value, list) else [value])
    else:
        into[key] = value
