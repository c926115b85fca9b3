"""The OpenAI-compatible layer: /v1 bodies in, native bodies out, and back again.

Pure translation, no I/O. A route parses the JSON body, calls ``*_request`` to
get the native request it hands to the native handler, and turns what comes back
into the OpenAI shape with ``*_response`` (or a ``ChatStream`` /
``CompletionStream`` fed one native chunk at a time).

Behaviour follows Ollama's ``openai/openai.go`` and ``middleware/openai.go``:
the same defaults (temperature and top_p 1.0, stream off), the same quirks
(``"data": null`` for an empty model list) and the same error messages, byte for
byte, because clients match on them. Where a body has the wrong JSON type the
message is the one Go's ``encoding/json`` would give.

Where this differs from Ollama on purpose:
- every native message made from a ``tool`` message's content parts carries its
  ``tool_name`` and ``tool_call_id`` (Ollama keeps them only when tool calls are
  present);
- a tool call's ``arguments`` may also arrive as an object, not only as a
  JSON string;
- a mid-stream failure ends an SSE stream with an OpenAI error event.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import random
import struct
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from corral.api.errors import BadRequestError, openai_error_body
from corral.api.gojson import INT64_MAX, INT64_MIN, json_kind
from corral.api.streams import SSE_DONE, SSEStream, dumps, parse_time, sse_event
from corral.gocompat import type_name

SYSTEM_FINGERPRINT = "fp_ollama"

_IMAGE_PREFIXES = tuple(f"data:image/{t};base64," for t in ("jpeg", "jpg", "png", "webp"))
_BLANK_IMAGE_PREFIX = "data:;base64,"

# How Go prints the type of openai.ToolCall's anonymous "function" field.
_TOOL_CALL_FUNCTION = 'struct { Name string "json:\\"name\\""; Arguments string "json:\\"arguments\\"" }'

# reasoning_effort -> native think. Anything else is refused.
_REASONING: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "max",
    "xhigh": "max",
    "ultra": "max",
}


def think_for_effort(effort: str) -> bool | str:
    """OpenAI's reasoning effort as Ollama's ``think`` value."""
    if effort not in _REASONING:
        raise BadRequestError(
            f'invalid reasoning value: \'{effort}\' (must be "high", "medium", "low", "max", or "none")'
        )
    return _REASONING[effort]


# -- ids ---------------------------------------------------------------------


def new_chat_id() -> str:
    return f"chatcmpl-{random.randrange(999)}"


def new_completion_id() -> str:
    return f"cmpl-{random.randrange(999)}"


# -- reading bodies with Go's type errors -------------------------------------


class _Fields:
    """Typed reads from one JSON object; null or absent reads as None, as in Go."""

    def __init__(self, obj: Mapping[str, Any], struct_name: str, path: str = "") -> None:
        self._obj = obj
        self._struct = struct_name
        self._path = path

    def nested(self, key: str, struct_name: str, go_type: str) -> _Fields | None:
        value = self._get(key, dict, go_type)
        return None if value is None else _Fields(value, struct_name, self._field(key))

    def string(self, key: str) -> str | None:
        return self._get(key, str, "string")

    def boolean(self, key: str) -> bool | None:
        return self._get(key, bool, "bool")

    def number(self, key: str, go_type: str = "float64") -> float | None:
        value = self._obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._type_error(key, json_kind(value), go_type)
        return value

    def integer(self, key: str) -> int | None:
        value = self._obj.get(key)
        if value is None:
            return None
        if isinstance(value, float) or (isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX):
            raise self._type_error(key, f"number {value!r}", "int")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._type_error(key, json_kind(value), "int")
        return value

    def array(self, key: str, go_type: str) -> list[Any] | None:
        return self._get(key, list, go_type)

    def objects(self, key: str, struct_name: str, go_type: str) -> list[_Fields] | None:
        """An array of objects, each readable in turn."""
        items = self.array(key, f"[]{go_type}")
        if items is None:
            return None
        out = []
        for item in items:
            if not isinstance(item, dict):
                raise self._type_error(key, json_kind(item), go_type)
            out.append(_Fields(item, struct_name, self._field(key)))
        return out

    def raw(self, key: str) -> Any:
        return self._obj.get(key)

    @property
    def value(self) -> dict[str, Any]:
        return dict(self._obj)

    def _get(self, key: str, kind: type, go_type: str) -> Any:
        value = self._obj.get(key)
        if value is None:
            return None
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self._type_error(key, json_kind(value), go_type)
        return value

    def _field(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _type_error(self, key: str, kind: str, go_type: str) -> BadRequestError:
        return BadRequestError(
            f"json: cannot unmarshal {kind} into Go struct field {self._struct}.{self._field(key)} of type {go_type}"
        )


def _body(body: Any, go_type: str) -> _Fields:
    if body is None:  # Go decodes a JSON null into a zero-value struct
        return _Fields({}, go_type.rpartition(".")[2])
    if not isinstance(body, dict):
        raise BadRequestError(f"json: cannot unmarshal {json_kind(body)} into Go value of type {go_type}")
    return _Fields(body, go_type.rpartition(".")[2])


def include_usage(body: Any) -> bool:
    """Whether a /v1 chat or completion body asked for ``stream_options.include_usage``."""
    if not isinstance(body, dict):
        return False
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


# -- /v1/chat/completions -----------------------------------------------------


def chat_request(body: Any) -> dict[str, Any]:
    """A /v1/chat/completions body as a native /api/chat request."""
    req = _body(body, "openai.ChatCompletionRequest")
    model = req.string("model") or ""
    messages = req.objects("messages", "Message", "openai.Message") or []
    stream = req.boolean("stream") or False
    stream_options = req.nested("stream_options", "StreamOptions", "openai.StreamOptions")
    if stream_options is not None:
        stream_options.boolean("include_usage")
    max_tokens = req.integer("max_tokens")
    seed = req.integer("seed")
    stop = req.raw("stop")
    temperature = req.number("temperature")
    frequency_penalty = req.number("frequency_penalty")
    presence_penalty = req.number("presence_penalty")
    top_p = req.number("top_p")
    response_format = req.nested("response_format", "ResponseFormat", "openai.ResponseFormat")
    tools = [t.value for t in req.objects("tools", "Tool", "api.Tool") or []]
    reasoning = req.nested("reasoning", "Reasoning", "openai.Reasoning")
    reasoning_effort = req.string("reasoning_effort")
    logprobs = req.boolean("logprobs")
    top_logprobs = req.integer("top_logprobs")
    debug_render_only = req.boolean("_debug_render_only")

    if not messages:
        raise BadRequestError("[] is too short - 'messages'")

    native: dict[str, Any] = {
        "model": model,
        "messages": _native_messages(messages),
        "options": {},
        "stream": stream,
    }

    options = native["options"]
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        # The chat path drops non-string stops silently; completions refuse them.
        options["stop"] = [s for s in stop if isinstance(s, str)]
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    options["temperature"] = 1.0 if temperature is None else temperature
    if seed is not None:
        options["seed"] = seed
    if frequency_penalty is not None:
        options["frequency_penalty"] = frequency_penalty
    if presence_penalty is not None:
        options["presence_penalty"] = presence_penalty
    options["top_p"] = 1.0 if top_p is None else top_p

    if response_format is not None:
        fmt = _format(response_format)
        if fmt is not None:
            native["format"] = fmt
    if tools:
        native["tools"] = tools

    # reasoning.effort wins over reasoning_effort, even when it is empty.
    effort = reasoning.string("effort") if reasoning is not None else reasoning_effort
    if effort:
        native["think"] = think_for_effort(effort)

    if logprobs:
        native["logprobs"] = True
    if top_logprobs:
        native["top_logprobs"] = top_logprobs
    if debug_render_only:
        native["_debug_render_only"] = True
    return native


def _format(response_format: _Fields) -> Any:
    kind = (response_format.string("type") or "").strip().lower()
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = response_format.nested("json_schema", "JsonSchema", "openai.JsonSchema")
        if schema is not None:
            return schema.raw("schema")
    return None


def _native_messages(messages: list[_Fields]) -> list[dict[str, Any]]:
    native: list[dict[str, Any]] = []
    for msg in messages:
        role = msg.string("role") or ""
        reasoning = msg.string("reasoning") or ""
        name = msg.string("name") or ""
        tool_call_id = msg.string("tool_call_id") or ""
        raw_tool_calls = msg.objects("tool_calls", "ToolCall", "openai.ToolCall")
        content = msg.raw("content")

        tool_name = ""
        if role.lower() == "tool":
            tool_name = name or (tool_call_id and _tool_name_for(messages, tool_call_id))

        if isinstance(content, str):
            made = [_message(role, content)]
        elif isinstance(content, list):
            made = [_part_message(role, part) for part in content] or [_message(role, "")]
        elif raw_tool_calls is None:
            # content may only be left out when the message carries tool calls
            raise BadRequestError(f"invalid message content type: {type_name(content)}")
        else:
            made = [_message(role, "")]

        last = made[-1]
        if reasoning:
            last["thinking"] = reasoning
        if raw_tool_calls:
            last["tool_calls"] = _native_tool_calls(raw_tool_calls)
        for m in made:
            if tool_name:
                m["tool_name"] = tool_name
            if tool_call_id:
                m["tool_call_id"] = tool_call_id
        native.extend(made)
    return native


def _message(role: str, content: str) -> dict[str, Any]:
    return {"role": role, "content": content}


def _tool_name_for(messages: list[_Fields], tool_call_id: str) -> str:
    # Latest first, so that a reused id names the most recent call.
    for msg in reversed(messages):
        for call in msg.raw("tool_calls") or []:
            if isinstance(call, dict) and call.get("id") == tool_call_id:
                function = call.get("function")
                name = function.get("name") if isinstance(function, dict) else None
                return name if isinstance(name, str) else ""
    return ""


def _part_message(role: str, part: Any) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise BadRequestError("invalid message format")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise BadRequestError("invalid message format")
        return _message(role, text)
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str):
            raise BadRequestError("invalid message format")
        return {**_message(role, ""), "images": [_image_from_url(url)]}
    if kind == "input_audio":
        audio = part.get("input_audio")
        data = audio.get("data") if isinstance(audio, dict) else None
        if not isinstance(data, str):
            raise BadRequestError("invalid message format")
        return {**_message(role, ""), "images": [_checked_base64(data, "invalid message format")]}
    raise BadRequestError("invalid message format")


def _image_from_url(url: str) -> str:
    """The base64 payload of a data: URL; remote URLs are refused, never fetched."""
    if url.startswith(("http://", "https://")):
        raise BadRequestError("image URLs are not currently supported, please use base64 encoded data instead")
    if url.startswith(_BLANK_IMAGE_PREFIX):  # bare base64, as /api/chat takes it
        payload = url[len(_BLANK_IMAGE_PREFIX) :]
    else:
        prefix = next((p for p in _IMAGE_PREFIXES if url.startswith(p)), None)
        if prefix is None:
            raise BadRequestError("invalid image input")
        payload = url[len(prefix) :]
    return _checked_base64(payload, "invalid image input")


def _checked_base64(data: str, message: str) -> str:
    # Go's standard decoder wants padding and skips line breaks.
    data = data.replace("\r", "").replace("\n", "")
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError(message) from exc
    return data


def _native_tool_calls(calls: list[_Fields]) -> list[dict[str, Any]]:
    native = []
    for index, call in enumerate(calls):
        call_id = call.string("id") or ""
        function = call.nested("function", "ToolCall", _TOOL_CALL_FUNCTION) or _Fields({}, "")
        name = function.string("name") or ""
        arguments = function.raw("arguments")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError as exc:
                raise BadRequestError("invalid tool call arguments") from exc
            if arguments is None:
                arguments = {}
        if not isinstance(arguments, dict):
            raise BadRequestError("invalid tool call arguments")
        entry: dict[str, Any] = {"id": call_id} if call_id else {}
        entry["function"] = {"index": index, "name": name, "arguments": arguments}
        native.append(entry)
    return native


def _openai_tool_calls(calls: list[Any]) -> list[dict[str, Any]]:
    out = []
    for position, call in enumerate(calls):
        function = call.get("function") or {}
        arguments = function.get("arguments")
        out.append(
            {
                "id": call.get("id", ""),
                "index": function.get("index", position),
                "type": "function",
                "function": {
                    "name": function.get("name", ""),
                    "arguments": dumps({} if arguments is None else arguments),
                },
            }
        )
    return out


def _usage(native: Mapping[str, Any]) -> dict[str, int]:
    prompt = native.get("prompt_eval_count") or 0
    completion = native.get("eval_count") or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish_reason(done_reason: str | None, tool_calls: bool) -> str | None:
    # length outranks tool_calls, which outranks stop
    if done_reason == "length":
        return "length"
    if tool_calls:
        return "tool_calls"
    return done_reason or None


def chat_response(native: dict[str, Any], *, model: str, id: str, created: int) -> dict[str, Any]:
    """A finished native /api/chat reply as a ``chat.completion``."""
    message = native.get("message") or {}
    tool_calls = _openai_tool_calls(message.get("tool_calls") or [])
    out_message: dict[str, Any] = {
        "role": message.get("role") or "assistant",
        "content": message.get("content") or "",
    }
    if message.get("thinking"):
        out_message["reasoning"] = message["thinking"]
    if tool_calls:
        out_message["tool_calls"] = tool_calls
    choice: dict[str, Any] = {
        "index": 0,
        "message": out_message,
        "finish_reason": _finish_reason(native.get("done_reason"), bool(tool_calls)),
    }
    if native.get("logprobs"):
        choice["logprobs"] = {"content": native["logprobs"]}
    reply: dict[str, Any] = {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [choice],
        "usage": _usage(native),
    }
    if "_debug_info" in native:
        reply["_debug_info"] = native["_debug_info"]
    return reply


def error_event(message: str) -> bytes:
    """A /v1 stream's last event when it failed after it began."""
    return sse_event(openai_error_body(500, message))


class _SSEStream(SSEStream):
    """What both /v1 completion streams share: their identity, and OpenAI's error event."""

    def __init__(self, *, model: str, id: str, created: int, include_usage: bool) -> None:
        super().__init__()
        self._model = model
        self._id = id
        self._created = created
        self._include_usage = include_usage

    def _error_event(self, message: str) -> bytes:
        return error_event(message)


class ChatStream(_SSEStream):
    """Native /api/chat chunks in, ``chat.completion.chunk`` SSE events out.

    The v0.32.6+ shape: ``role`` only in the first delta, reasoning and content
    in separate deltas, each tool call whole, then a finish chunk with an empty
    delta, the usage chunk when asked for, and ``[DONE]``.
    """

    def __init__(self, *, model: str, id: str, created: int, include_usage: bool) -> None:
        super().__init__(model=model, id=id, created=created, include_usage=include_usage)
        self._role_sent = False
        self._tool_calls_sent = False

    def _events(self, native_chunk: dict[str, Any]) -> list[bytes]:
        message = native_chunk.get("message") or {}
        thinking = message.get("thinking") or ""
        content = message.get("content") or ""
        tool_calls = message.get("tool_calls") or []
        logprobs = native_chunk.get("logprobs") or None

        events = []
        if thinking:
            events.append(self._delta({"reasoning": thinking}, None if content else logprobs))
        if content or (logprobs and not thinking):
            events.append(self._delta({"content": content}, logprobs))
        if tool_calls:
            events.append(self._delta({"tool_calls": _openai_tool_calls(tool_calls)}))
            self._tool_calls_sent = True

        if native_chunk.get("done"):
            self._finished = True
            if not self._role_sent:
                events.append(self._delta({"content": ""}))
            reason = _finish_reason(native_chunk.get("done_reason"), self._tool_calls_sent)
            finish = {"index": 0, "delta": {}, "finish_reason": reason or "stop"}
            events.append(sse_event(self._chunk([finish])))
            if self._include_usage:
                events.append(sse_event(self._chunk([], usage=_usage(native_chunk))))
            events.append(SSE_DONE)
        return events

    def _delta(self, delta: dict[str, Any], logprobs: list[Any] | None = None) -> bytes:
        if not self._role_sent:
            delta = {"role": "assistant", **delta}
            self._role_sent = True
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": None}
        if logprobs:
            choice["logprobs"] = {"content": logprobs}
        return sse_event(self._chunk([choice]))

    def _chunk(self, choices: list[Any], usage: dict[str, int] | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if usage is not None:
            chunk["usage"] = usage
        return chunk


# -- /v1/completions ----------------------------------------------------------


def completion_request(body: Any) -> dict[str, Any]:
    """A /v1/completions body as a native /api/generate request."""
    req = _body(body, "openai.CompletionRequest")
    model = req.string("model") or ""
    prompt = req.string("prompt") or ""
    frequency_penalty = req.number("frequency_penalty", "float32") or 0.0
    max_tokens = req.integer("max_tokens")
    presence_penalty = req.number("presence_penalty", "float32") or 0.0
    seed = req.integer("seed")
    stop = req.raw("stop")
    stream = req.boolean("stream") or False
    stream_options = req.nested("stream_options", "StreamOptions", "openai.StreamOptions")
    if stream_options is not None:
        stream_options.boolean("include_usage")
    temperature = req.number("temperature", "float32")
    top_p = req.number("top_p", "float32")
    suffix = req.string("suffix") or ""
    logprobs = req.integer("logprobs")
    debug_render_only = req.boolean("_debug_render_only")

    options: dict[str, Any] = {}
    if isinstance(stop, str):
        options["stop"] = [stop]
    elif isinstance(stop, list):
        for s in stop:
            if not isinstance(s, str):
                raise BadRequestError(f"invalid type for 'stop' field: {type_name(s)}")
        options["stop"] = list(stop)
    if max_tokens is not None:
        options["num_predict"] = max_tokens
    options["temperature"] = 1.0 if temperature is None else temperature
    if seed is not None:
        options["seed"] = seed
    options["frequency_penalty"] = frequency_penalty
    options["presence_penalty"] = presence_penalty
    options["top_p"] = top_p if top_p else 1.0  # 0 counts as unset

    native: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "options": options,
        "stream": stream,
    }
    if suffix:
        native["suffix"] = suffix
    if logprobs is not None and logprobs > 0:
        native["logprobs"] = True
        native["top_logprobs"] = logprobs
    if debug_render_only:
        native["_debug_render_only"] = True
    return native


def _completion_choice(native: Mapping[str, Any], finish_reason: str | None) -> dict[str, Any]:
    choice: dict[str, Any] = {
        "text": native.get("response") or "",
        "index": 0,
        "finish_reason": finish_reason,
    }
    if native.get("logprobs"):
        choice["logprobs"] = {"content": native["logprobs"]}
    return choice


def completion_response(native: dict[str, Any], *, model: str, id: str, created: int) -> dict[str, Any]:
    """A finished native /api/generate reply as a ``text_completion``."""
    return {
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [_completion_choice(native, native.get("done_reason") or None)],
        "usage": _usage(native),
    }


class CompletionStream(_SSEStream):
    """Native /api/generate chunks in, ``text_completion`` SSE events out.

    One event per native chunk, the finish reason on the last. With
    ``include_usage`` every chunk carries a zeroed ``usage`` and an extra chunk
    with no choices carries the real one, as Ollama does.
    """

    def _events(self, native_chunk: dict[str, Any]) -> list[bytes]:
        done = bool(native_chunk.get("done"))
        reason = native_chunk.get("done_reason") or ("stop" if done else None)
        zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        events = [sse_event(self._chunk([_completion_choice(native_chunk, reason)], zero))]
        if done:
            self._finished = True
            if self._include_usage:
                events.append(sse_event(self._chunk([], _usage(native_chunk))))
            events.append(SSE_DONE)
        return events

    def _chunk(self, choices: list[Any], usage: dict[str, int]) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "text_completion",
            "created": self._created,
            "choices": choices,
            "model": self._model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        if self._include_usage:
            chunk["usage"] = usage
        return chunk


# -- /v1/embeddings -----------------------------------------------------------


def embedding_request(body: Any) -> tuple[dict[str, Any], str]:
    """A /v1/embeddings body as ``(native /api/embed request, encoding_format)``.

    ``encoding_format`` is ``"float"`` or ``"base64"``, for ``embedding_response``;
    it is not part of the native request.
    """
    req = _body(body, "openai.EmbedRequest")
    model = req.string("model") or ""
    dimensions = req.integer("dimensions")
    encoding_format = req.string("encoding_format") or ""
    data = req.raw("input")

    if encoding_format and encoding_format.lower() not in ("float", "base64"):
        raise BadRequestError(
            f"Invalid value for 'encoding_format' = {encoding_format}. Supported values: ['float', 'base64']."
        )
    if data == "":
        data = [""]
    if data is None or data == []:
        raise BadRequestError("invalid input")
    if not isinstance(data, (str, list)) or (isinstance(data, list) and not all(isinstance(s, str) for s in data)):
        raise BadRequestError("invalid input type")  # what native /api/embed says

    native: dict[str, Any] = {"model": model, "input": data}
    if dimensions:
        native["dimensions"] = dimensions
    return native, "base64" if encoding_format.lower() == "base64" else "float"


def embedding_response(native: dict[str, Any], *, model: str, encoding_format: str) -> dict[str, Any]:
    """A native /api/embed reply as an OpenAI embedding list."""
    as_base64 = encoding_format.lower() == "base64"
    data = [
        {
            "object": "embedding",
            "embedding": _float32_base64(vector) if as_base64 else vector,
            "index": i,
        }
        for i, vector in enumerate(native.get("embeddings") or [])
    ]
    tokens = native.get("prompt_eval_count") or 0
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _float32_base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


# -- /v1/models ---------------------------------------------------------------


def model_list(tags: list[dict[str, Any]]) -> dict[str, Any]:
    """/api/tags ``models`` entries as an OpenAI model list.

    With no models ``data`` is null, not ``[]``: Ollama's quirk, kept because
    clients already cope with it.
    """
    data = [model_object(tag, id=tag["name"]) for tag in tags]
    return {"object": "list", "data": data or None}


def model_object(tag_entry: dict[str, Any], *, id: str) -> dict[str, Any]:
    return {
        "id": id,
        "object": "model",
        "created": _unix(tag_entry.get("modified_at")),
        "owned_by": _namespace(id),
    }


def _unix(when: Any) -> int:
    if isinstance(when, str) and when:
        when = parse_time(when)
    if isinstance(when, datetime):
        return math.floor(when.timestamp())
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        return math.floor(when)
    return 0


def _namespace(name: str) -> str:
    """The namespace of a model name (``host/namespace/model:tag``), as Go parses it."""
    name = name.partition("@")[0]
    slash, colon = name.rfind("/"), name.rfind(":")
    if colon > slash:
        name = name[:colon]
    parts = name.split("/")
    if len(parts) > 3:
        return ""
    namespace = parts[-2] if len(parts) >= 2 else ""
    return namespace or "library"
