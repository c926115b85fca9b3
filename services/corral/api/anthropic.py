"""Anthropic's Messages API (``POST /v1/messages``) on the native chat, mapped as Ollama maps it
(its ``anthropic`` package), so that the Anthropic SDKs and tools built on them run unchanged:

- ``messages_request``: the body as a native ``/api/chat`` request. The system prompt comes
  first; each message's content blocks fold into one native message (texts joined, images,
  tool calls, thinking), with its ``tool_result`` blocks as ``tool`` messages; ``max_tokens``
  is ``num_predict``; ``thinking`` (or ``output_config.effort``) is ``think``.
- ``message_object``: a finished native reply as one ``message``: a thinking block, a text
  block, then a ``tool_use`` block per call.
- ``MessagesStream``: native chunks in, Anthropic's SSE events out.

Errors take Anthropic's envelope (``corral.api.errors``). Where Ollama and Anthropic differ,
Ollama is followed: no ``ping`` events, thinking blocks without a signature, no
``stop_sequence``, ``tool_choice`` and ``metadata`` read but not acted on. One addition: an
error after the stream began ends it with Anthropic's ``error`` event (Ollama's stream just
stops, which the SDKs cannot tell from a cut connection).
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Any

from corral.api.errors import BadRequestError, ForbiddenError, anthropic_error_body
from corral.api.gojson import base64_error_at, json_kind
from corral.api.openai import _body, _Fields
from corral.api.streams import SSEStream, dumps, sse_event

REQUEST = "anthropic.MessagesRequest"
_BLOCK = "anthropic.ContentBlock"
# output_config.effort -> think (used when ``thinking`` neither enables nor disables it).
_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "max": "max", "xhigh": "high"}
# Go's ``[]byte`` decoder reports where standard base64 stops being valid.
_BASE64_WHERE = "illegal base64 data at input byte"


def new_message_id() -> str:
    return f"msg_{secrets.token_hex(12)}"


# -- the request ----------------------------------------------------------------------------


def messages_request(body: Any) -> dict[str, Any]:
    """A /v1/messages body as a native /api/chat request (raises Ollama's 400s)."""
    req = _body(body, REQUEST)
    # Go decodes the whole body first: its type errors come before any other check.
    model = req.string("model") or ""
    max_tokens = req.integer("max_tokens")
    messages = [_message_param(m) for m in req.objects("messages", "MessageParam", "anthropic.MessageParam") or []]
    system = req.raw("system")
    stream = req.boolean("stream") or False
    temperature = req.number("temperature")
    top_p = req.number("top_p")
    top_k = req.integer("top_k")
    stop = _strings(req, "stop_sequences")
    tools = [_tool_fields(t) for t in req.objects("tools", "Tool", "anthropic.Tool") or []]
    choice = req.nested("tool_choice", "ToolChoice", "anthropic.ToolChoice")  # read for its type errors only
    if choice is not None:
        choice.string("type")
        choice.string("name")
        choice.boolean("disable_parallel_tool_use")
    thinking = req.nested("thinking", "ThinkingConfig", "anthropic.ThinkingConfig")
    thinking_type = None
    if thinking is not None:
        thinking_type = thinking.string("type")
        thinking.integer("budget_tokens")  # accepted, not enforced (as in Ollama)
    metadata = req.nested("metadata", "Metadata", "anthropic.Metadata")
    if metadata is not None:
        metadata.string("user_id")
    output = req.nested("output_config", "OutputConfig", "anthropic.OutputConfig")
    effort = output.string("effort") if output is not None else None

    if not model:
        raise BadRequestError("model is required")
    if max_tokens is None or max_tokens <= 0:
        raise BadRequestError("max_tokens is required and must be positive")
    if not messages:
        raise BadRequestError("messages is required")

    native_messages: list[dict[str, Any]] = []
    system_text = _system_text(system)
    if system_text:
        native_messages.append({"role": "system", "content": system_text})
    for role, blocks in messages:
        native_messages.extend(_native_messages(role, blocks))

    options: dict[str, Any] = {"num_predict": max_tokens}
    if temperature is not None:
        options["temperature"] = temperature
    if top_p is not None:
        options["top_p"] = top_p
    if top_k is not None:
        options["top_k"] = top_k
    if stop:
        options["stop"] = stop
    native: dict[str, Any] = {"model": model, "messages": native_messages, "options": options, "stream": stream}
    if tools:
        native["tools"] = [_native_tool(t) for t in tools]
    if thinking_type == "enabled":
        native["think"] = True
    elif thinking_type == "disabled":
        native["think"] = False
    elif effort and effort.strip().lower() in _EFFORTS:
        native["think"] = _EFFORTS[effort.strip().lower()]
    return native


def _strings(req: _Fields, key: str) -> list[str]:
    items = req.array(key, "[]string") or []
    for item in items:
        if not isinstance(item, str):
            raise BadRequestError(
                f"json: cannot unmarshal {json_kind(item)} into Go struct field MessagesRequest.{key} of type string"
            )
    return items


def _message_param(msg: _Fields) -> tuple[str, list[_Fields]]:
    """A message's role and content blocks; a string content is one text block, as Go reads it."""
    role = msg.string("role") or ""
    if "content" not in msg.value:
        raise BadRequestError("unexpected end of JSON input")
    content = msg.raw("content")
    if content is None or isinstance(content, str):
        return role, [_Fields({"type": "text", "text": content or ""}, "ContentBlock")]
    if not isinstance(content, list):
        raise BadRequestError(f"json: cannot unmarshal {json_kind(content)} into Go value of type []{_BLOCK}")
    blocks = []
    for item in content:
        if not isinstance(item, dict):
            raise BadRequestError(f"json: cannot unmarshal {json_kind(item)} into Go value of type {_BLOCK}")
        block = _Fields(item, "ContentBlock")
        for key in ("type", "text", "id", "name", "tool_use_id", "thinking", "signature"):
            block.string(key)
        block.boolean("is_error")
        block.nested("input", "ToolCallFunctionArguments", "api.ToolCallFunctionArguments")
        source = block.nested("source", "ImageSource", "anthropic.ImageSource")
        if source is not None:
            for key in ("type", "media_type", "data", "url"):
                source.string(key)
        blocks.append(block)
    return role, blocks


def _system_text(system: Any) -> str:
    """``system``: a string, or text blocks joined with nothing between them; else nothing."""
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        return "".join(_text_of(block) for block in system)
    return ""


def _text_of(block: Any) -> str:
    """A text block's text; '' for any other block or value."""
    if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
        return block["text"]
    return ""


def _native_messages(role: str, blocks: list[_Fields]) -> list[dict[str, Any]]:
    """One Anthropic message as native messages: itself (unless empty) and its tool results,
    the results first when a user sends them (they answer the assistant's calls before it)."""
    role = role.lower()
    text: list[str] = []
    images: list[str] = []
    calls: list[dict[str, Any]] = []
    thinking = ""
    results: list[dict[str, Any]] = []
    for block in blocks:
        kind = block.string("type")
        if kind == "text":
            text.append(block.string("text") or "")
        elif kind == "image":
            source = block.raw("source")
            if source is None:
                raise BadRequestError("invalid image source")
            images.append(_image(source))
        elif kind == "tool_use":
            if not block.string("id"):
                raise BadRequestError("tool_use block missing required 'id' field")
            if not block.string("name"):
                raise BadRequestError("tool_use block missing required 'name' field")
            function = {"name": block.string("name"), "arguments": block.raw("input") or {}}
            calls.append({"id": block.string("id"), "function": function})
        elif kind == "tool_result":
            content, result_images = _tool_result(block.raw("content"))
            ident = block.string("tool_use_id") or ""
            result: dict[str, Any] = {"role": "tool", "content": content, "tool_call_id": ident}
            if result_images:
                result["images"] = result_images
            results.append(result)
        elif kind == "thinking" and block.string("thinking") is not None:
            thinking = block.string("thinking") or ""  # the last one, as Ollama keeps
        # redacted_thinking, document, a web search's own blocks and anything else: ignored

    main: dict[str, Any] = {"role": role, "content": "".join(text)}
    if images:
        main["images"] = images
    if calls:
        main["tool_calls"] = calls
    if thinking:
        main["thinking"] = thinking
    kept = [main] if main["content"] or images or calls or thinking else []
    return results + kept if role == "user" and results else kept + results


def _image(source: dict[str, Any]) -> str:
    """An image block's base64 source, checked as Go decodes it (native messages carry base64)."""
    kind = source.get("type") or ""
    if kind != "base64":
        raise BadRequestError(f"invalid image source type: {kind}. Only base64 images are supported.")
    data = source.get("data") or ""
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequestError(f"invalid base64 image data: {_BASE64_WHERE} {base64_error_at(data)}") from None
    return data


def _tool_result(content: Any) -> tuple[str, list[str]]:
    """A ``tool_result``'s content: a string, or text and image blocks; anything else is empty."""
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        return "", []
    text: list[str] = []
    images: list[str] = []
    for item in content:
        if not isinstance(item, dict):
            continue
        text.append(_text_of(item))
        if item.get("type") == "image":
            source = item.get("source")
            if not isinstance(source, dict):
                raise BadRequestError("invalid tool_result image source")
            images.append(_image({k: v for k, v in source.items() if isinstance(v, str)}))
    return "".join(text), images


def _tool_fields(tool: _Fields) -> _Fields:
    for key in ("type", "name", "description"):
        tool.string(key)
    tool.integer("max_uses")
    return tool


def _native_tool(tool: _Fields) -> dict[str, Any]:
    name = tool.string("name") or ""
    if (tool.string("type") or "").startswith("web_search"):
        # Ollama runs these searches on ollama.com; Corral, like an Ollama with its cloud off, cannot.
        raise _web_search_unavailable()
    function: dict[str, Any] = {"name": name, "description": tool.string("description") or ""}
    schema = tool.raw("input_schema")
    if schema is not None:
        if not isinstance(schema, dict):
            raise BadRequestError(
                f'invalid input_schema for tool "{name}": json: cannot unmarshal {json_kind(schema)} '
                "into Go value of type api.ToolFunctionParameters"
            )
        function["parameters"] = schema
    return {"type": "function", "function": function}


def _web_search_unavailable() -> ForbiddenError:
    return ForbiddenError("ollama cloud is disabled: web search is unavailable")


def estimate_input_tokens(native: dict[str, Any]) -> int:
    """``message_start``'s input tokens before the prompt is counted (the worker counts it as
    it runs): a quarter of the characters of the request's messages and tools, as Ollama
    estimates them."""
    chars = sum(
        len(m["role"]) + len(m["content"]) + len(m.get("thinking", "")) + len(dumps(m.get("tool_calls") or ""))
        for m in native["messages"]
    )
    chars += sum(len(dumps(tool["function"])) for tool in native.get("tools", []))
    return max(chars // 4, 1) if native["messages"] else 0


# -- the answer -----------------------------------------------------------------------------


def _stop_reason(done_reason: str | None, tool_calls: bool) -> str | None:
    if tool_calls:
        return "tool_use"
    if not done_reason:
        return None
    return {"stop": "end_turn", "length": "max_tokens"}.get(done_reason, "stop_sequence")


def _usage(native: dict[str, Any]) -> dict[str, int]:
    return {"input_tokens": native.get("prompt_eval_count") or 0, "output_tokens": native.get("eval_count") or 0}


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    return {
        "type": "tool_use",
        "id": call.get("id") or "",
        "name": function.get("name") or "",
        "input": function.get("arguments") or {},
    }


def message_object(native: dict[str, Any], *, model: str, id: str) -> dict[str, Any]:
    """A finished native /api/chat reply as a ``message``."""
    message = native.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("thinking"):
        content.append({"type": "thinking", "thinking": message["thinking"]})
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    calls = message.get("tool_calls") or []
    content.extend(_tool_use(call) for call in calls)
    reply: dict[str, Any] = {"id": id, "type": "message", "role": "assistant", "model": model, "content": content}
    stop = _stop_reason(native.get("done_reason"), bool(calls))
    if stop:
        reply["stop_reason"] = stop
    reply["usage"] = _usage(native)
    return reply


def error_event(message: str) -> bytes:
    """Anthropic's ``error`` event: how a stream that failed after it began ends."""
    return sse_event({"type": "error", "error": anthropic_error_body(500, message)["error"]}, "error")


class MessagesStream(SSEStream):
    """Native /api/chat chunks in, Anthropic's SSE events out: ``message_start``, then content
    blocks (``content_block_start``, deltas, ``content_block_stop``) at rising indexes, a
    thinking block closing when text or a tool call follows it, each tool call whole (one
    ``input_json_delta``), then ``message_delta`` (stop reason, usage) and ``message_stop``."""

    def __init__(self, *, model: str, id: str, input_tokens: int) -> None:
        super().__init__()
        self._model = model
        self._id = id
        self._input_tokens = input_tokens
        self._started = False
        self._index = 0
        self._open = ""  # the open block's type: "thinking", "text" or ""
        self._thinking_done = False
        self._tool_ids: set[str] = set()
        self._tool_calls = False

    def _events(self, chunk: dict[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        if not self._started:
            self._started = True
            usage = {"input_tokens": chunk.get("prompt_eval_count") or self._input_tokens, "output_tokens": 0}
            head = {
                "id": self._id,
                "type": "message",
                "role": "assistant",
                "model": self._model,
                "content": [],
                "usage": usage,
            }
            events.append(self._event("message_start", message=head))
        message = chunk.get("message") or {}
        thinking = message.get("thinking") or ""
        if thinking and not self._thinking_done:
            if self._open == "text":
                events.append(self._close())
            if self._open != "thinking":
                events.append(self._start({"type": "thinking", "thinking": ""}, "thinking"))
            events.append(self._delta({"type": "thinking_delta", "thinking": thinking}))
        text = message.get("content") or ""
        if text:
            if self._open == "thinking":
                events.append(self._close())
            if self._open != "text":
                events.append(self._start({"type": "text", "text": ""}, "text"))
            events.append(self._delta({"type": "text_delta", "text": text}))
        for call in message.get("tool_calls") or []:
            ident = call.get("id") or ""
            if ident in self._tool_ids:
                continue
            self._tool_ids.add(ident)
            self._tool_calls = True
            if self._open:
                events.append(self._close())
            block = _tool_use(call)
            events.append(self._start({**block, "input": {}}, "tool_use"))
            events.append(self._delta({"type": "input_json_delta", "partial_json": dumps(block["input"])}))
            events.append(self._close())
        if chunk.get("done"):
            self._finished = True
            if self._open:
                events.append(self._close())
            stop = _stop_reason(chunk.get("done_reason"), self._tool_calls)
            delta = {"stop_reason": stop} if stop else {}
            events.append(self._event("message_delta", delta=delta, usage=_usage(chunk)))
            events.append(self._event("message_stop"))
        return events

    def _error_event(self, message: str) -> bytes:
        return error_event(message)

    def _event(self, kind: str, **fields: Any) -> bytes:
        return sse_event({"type": kind, **fields}, kind)

    def _start(self, block: dict[str, Any], kind: str) -> bytes:
        self._open = kind
        return self._event("content_block_start", index=self._index, content_block=block)

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return self._event("content_block_delta", index=self._index, delta=delta)

    def _close(self) -> bytes:
        """Close the open block; the next one takes the next index."""
        if self._open == "thinking":
            self._thinking_done = True
        event = self._event("content_block_stop", index=self._index)
        self._index += 1
        self._open = ""
        return event
