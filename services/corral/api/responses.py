"""OpenAI's Responses API (``POST /v1/responses``) over native /api/chat.

Pure translation, no I/O, in the style of ``corral.api.openai``: a route calls
``responses_request`` to get the native chat request, then either folds the
native stream and calls ``response_object``, or feeds each native chunk to a
``ResponsesStream`` that writes the Responses SSE events.

Non-stateful, as Ollama: ``previous_response_id`` and ``conversation`` are
refused, nothing is stored. See docs/api-coverage.md, "/v1/responses".

Where this differs from Ollama or OpenAI:
- a message's text parts are joined into one native message (images ride on it);
- ``reasoning`` input items become the ``thinking`` of the next assistant
  message (or function call); a reasoning item with nothing after it is dropped;
- ``input_file`` parts, built-in tools and ``truncation: "auto"`` are refused;
- a stream always ends with ``response.completed``, even when the response's
  ``status`` is ``incomplete`` (max_output_tokens reached); a failure after the
  stream started ends it with ``response.failed``.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections.abc import Mapping
from typing import Any

from corral.api.errors import BadRequestError
from corral.api.openai import _body, _Fields, _image_from_url, think_for_effort
from corral.api.streams import SSEStream, dumps, sse_event

_TEXT_PARTS = ("input_text", "output_text", "text")
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


# -- ids ---------------------------------------------------------------------


def new_response_id() -> str:
    return f"resp_{random.randrange(1_000_000)}"


def _item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# -- request -----------------------------------------------------------------


def responses_request(body: Any) -> dict[str, Any]:
    """A /v1/responses body as a native /api/chat request."""
    req = _body(body, "openai.ResponsesRequest")
    if req.raw("previous_response_id") is not None:
        raise BadRequestError(
            "previous_response_id is not supported: this server keeps no response state, "
            "send the whole conversation in input"
        )
    if req.raw("conversation") is not None:
        raise BadRequestError(
            "conversation is not supported: this server keeps no response state, send the whole conversation in input"
        )
    truncation = req.string("truncation")
    if truncation not in (None, "disabled"):
        raise BadRequestError(f"truncation '{truncation}' is not supported")

    model = req.string("model") or ""
    instructions = req.string("instructions")
    stream = req.boolean("stream") or False
    temperature = req.number("temperature")
    top_p = req.number("top_p")
    max_output_tokens = req.integer("max_output_tokens")
    reasoning = req.nested("reasoning", "Reasoning", "openai.ResponsesReasoning")
    text = req.nested("text", "ResponsesText", "openai.ResponsesText")
    tools = req.objects("tools", "ResponsesTool", "openai.ResponsesTool") or []

    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    messages.extend(_input_messages(req.raw("input")))

    options: dict[str, Any] = {"temperature": 1.0 if temperature is None else temperature}
    options["top_p"] = 1.0 if top_p is None else top_p
    if max_output_tokens is not None:
        if max_output_tokens < 1:
            raise BadRequestError("max_output_tokens must be at least 1")
        options["num_predict"] = max_output_tokens

    native: dict[str, Any] = {"model": model, "messages": messages, "options": options, "stream": stream}
    if tools:
        native["tools"] = [_native_tool(t) for t in tools]
    if text is not None:
        fmt = text.nested("format", "ResponsesTextFormat", "openai.ResponsesTextFormat")
        if fmt is not None:
            kind = fmt.string("type") or "text"
            if kind == "json_schema":
                schema = fmt.raw("schema")
                if not isinstance(schema, dict):
                    raise BadRequestError("text.format.schema is required for json_schema")
                native["format"] = schema
            elif kind == "json_object":
                native["format"] = "json"
            elif kind != "text":
                raise BadRequestError(f"unsupported text.format type: '{kind}'")
    effort = reasoning.string("effort") if reasoning is not None else None
    if effort:
        native["think"] = think_for_effort(effort)
    return native


def _native_tool(tool: _Fields) -> dict[str, Any]:
    kind = tool.string("type") or ""
    if kind != "function":
        raise BadRequestError(f"unsupported tool type: '{kind}' (only 'function' tools are supported)")
    name = tool.string("name") or ""
    if not name:
        raise BadRequestError("tool name is required")
    function: dict[str, Any] = {"name": name}
    description = tool.string("description")
    if description is not None:
        function["description"] = description
    parameters = tool.raw("parameters")
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise BadRequestError(f"tool '{name}' parameters must be an object")
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def _input_messages(data: Any) -> list[dict[str, Any]]:
    if data is None:
        raise BadRequestError("input is required")
    if isinstance(data, str):
        return [{"role": "user", "content": data}]
    if not isinstance(data, list):
        raise BadRequestError("input must be a string or an array of input items")

    messages: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    thinking = ""  # from a reasoning item, waiting for the next assistant turn
    for item in data:
        if not isinstance(item, dict):
            raise BadRequestError("invalid input item: each item must be an object")
        kind = item.get("type") or ("message" if "role" in item else "")
        if kind == "message":
            message = _message_item(item)
            if message["role"] == "assistant" and thinking:
                message["thinking"], thinking = thinking, ""
            messages.append(message)
        elif kind == "reasoning":
            thinking += _reasoning_text(item)
        elif kind == "function_call":
            call = _function_call_item(item)
            call_names[call.get("id", "")] = call["function"]["name"]
            last = messages[-1] if messages else None
            if last is None or last["role"] != "assistant" or thinking:
                last = {"role": "assistant", "content": ""}
                messages.append(last)
            if thinking:
                last["thinking"], thinking = thinking, ""
            calls = last.setdefault("tool_calls", [])
            call["function"]["index"] = len(calls)
            calls.append(call)
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise BadRequestError("function_call_output requires a call_id")
            message = {"role": "tool", "content": _output_text(item.get("output")), "tool_call_id": call_id}
            if call_names.get(call_id):
                message["tool_name"] = call_names[call_id]
            messages.append(message)
        else:
            raise BadRequestError(f"unsupported input item type: '{kind}'")
    return messages


def _message_item(item: Mapping[str, Any]) -> dict[str, Any]:
    role = item.get("role")
    if role not in _ROLES:
        raise BadRequestError(f"invalid message role: '{role}'")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": _ROLES[role], "content": content}
    if not isinstance(content, list):
        raise BadRequestError("message content must be a string or an array of content parts")
    texts: list[str] = []
    images: list[str] = []
    for part in content:
        if not isinstance(part, dict):
            raise BadRequestError("invalid content part: each part must be an object")
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRequestError(f"{kind} part requires text")
            texts.append(text)
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise BadRequestError("input_image requires an image_url (file_id is not supported)")
            images.append(_image_from_url(url))
        elif kind == "refusal":
            texts.append(part.get("refusal") or "")
        else:
            raise BadRequestError(f"unsupported content part type: '{kind}'")
    message: dict[str, Any] = {"role": _ROLES[role], "content": "".join(texts)}
    if images:
        message["images"] = images
    return message


def _reasoning_text(item: Mapping[str, Any]) -> str:
    parts = [p.get("text") for p in (item.get("summary") or []) if isinstance(p, dict)]
    parts += [p.get("text") for p in (item.get("content") or []) if isinstance(p, dict)]
    return "".join(p for p in parts if isinstance(p, str))


def _function_call_item(item: Mapping[str, Any]) -> dict[str, Any]:
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequestError("function_call requires a name")
    arguments = item.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            raise BadRequestError("invalid function_call arguments: not valid JSON") from exc
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise BadRequestError("invalid function_call arguments: must be a JSON object")
    call: dict[str, Any] = {}
    call_id = item.get("call_id")
    if isinstance(call_id, str) and call_id:
        call["id"] = call_id
    call["function"] = {"index": 0, "name": name, "arguments": arguments}
    return call


def _output_text(output: Any) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "".join(p["text"] for p in output if isinstance(p, dict) and isinstance(p.get("text"), str))
    if output is None:
        return ""
    return dumps(output)


# -- response ----------------------------------------------------------------


def _echo(body: Any) -> dict[str, Any]:
    """The request fields a Response object repeats back."""
    body = body if isinstance(body, dict) else {}
    tools = []
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            tools.append(
                {
                    "type": "function",
                    "name": tool.get("name") or "",
                    "description": tool.get("description"),
                    "parameters": tool.get("parameters"),
                    "strict": tool.get("strict"),
                }
            )
    text = body.get("text") if isinstance(body.get("text"), dict) else {}
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}

    def number(key: str, default: float) -> Any:
        value = body.get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default

    return {
        "instructions": body.get("instructions") if isinstance(body.get("instructions"), str) else None,
        "max_output_tokens": body.get("max_output_tokens") if isinstance(body.get("max_output_tokens"), int) else None,
        "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": False,
        "temperature": number("temperature", 1.0),
        "text": {"format": text.get("format") if isinstance(text.get("format"), dict) else {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": tools,
        "top_p": number("top_p", 1.0),
        "truncation": "disabled",
        "user": None,
    }


def _usage(native: Mapping[str, Any]) -> dict[str, Any]:
    prompt = native.get("prompt_eval_count") or 0
    completion = native.get("eval_count") or 0
    return {
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": prompt + completion,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }


def _envelope(
    *,
    id: str,
    created_at: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    body: Any,
    error: dict[str, Any] | None = None,
    incomplete: bool = False,
) -> dict[str, Any]:
    return {
        "id": id,
        "object": "response",
        "created_at": created_at,
        "completed_at": int(time.time()) if status == "completed" else None,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "model": model,
        "output": output,
        **_echo(body),
        "usage": usage,
    }


def _reasoning_item(id: str, text: str, status: str = "completed") -> dict[str, Any]:
    summary = [{"type": "summary_text", "text": text}] if text else []
    return {"type": "reasoning", "id": id, "summary": summary, "status": status}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_output(id: str, text: str | None, status: str = "completed") -> dict[str, Any]:
    content = [] if text is None else [_text_part(text)]
    return {"type": "message", "id": id, "status": status, "role": "assistant", "content": content}


def _function_call_output(call: Mapping[str, Any], status: str = "completed") -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    return {
        "type": "function_call",
        "id": _item_id("fc"),
        "call_id": call.get("id") or _item_id("call"),
        "name": function.get("name") or "",
        "arguments": arguments if isinstance(arguments, str) else dumps(arguments or {}),
        "status": status,
    }


def response_object(
    native_final: dict[str, Any], *, model: str, id: str, created_at: int, body: Any = None
) -> dict[str, Any]:
    """A folded native /api/chat reply as a Responses ``response`` object.

    ``body`` is the original /v1/responses request, whose tools, instructions and
    sampling settings the object repeats back.
    """
    message = native_final.get("message") or {}
    output: list[dict[str, Any]] = []
    if message.get("thinking"):
        output.append(_reasoning_item(_item_id("rs"), message["thinking"]))
    tool_calls = message.get("tool_calls") or []
    content = message.get("content") or ""
    if content or not tool_calls:
        output.append(_message_output(_item_id("msg"), content))
    output.extend(_function_call_output(call) for call in tool_calls)
    incomplete = native_final.get("done_reason") == "length"
    return _envelope(
        id=id,
        created_at=created_at,
        model=model,
        status="incomplete" if incomplete else "completed",
        output=output,
        usage=_usage(native_final),
        body=body,
        incomplete=incomplete,
    )


# -- stream ------------------------------------------------------------------


class ResponsesStream(SSEStream):
    """Native /api/chat chunks in, Responses SSE events out.

    At most one output item is open at a time: a reasoning item while thinking
    arrives, then a message item while content arrives; tool calls are whole
    items, emitted at once. Every event carries ``type`` and an increasing
    ``sequence_number``.
    """

    def __init__(self, *, model: str, id: str, created_at: int, body: Any = None) -> None:
        self._model = model
        self._id = id
        self._created_at = created_at
        self._body = body
        super().__init__()
        self._seq = 0
        self._started = False
        self._output: list[dict[str, Any]] = []  # finished items
        self._open: dict[str, Any] | None = None  # the item being streamed
        self._open_text: list[str] = []

    # -- public

    def _events(self, native_chunk: dict[str, Any]) -> list[bytes]:
        events = self._start()
        message = native_chunk.get("message") or {}
        thinking = message.get("thinking") or ""
        content = message.get("content") or ""
        if thinking:
            events += self._delta("reasoning", thinking)
        if content:
            events += self._delta("message", content)
        for call in message.get("tool_calls") or []:
            events += self._function_call(call)
        if native_chunk.get("done"):
            events += self._close()
            if not self._output:
                events += self._open_item("message") + self._close()
            self._finished = True
            incomplete = native_chunk.get("done_reason") == "length"
            response = self._response(
                "incomplete" if incomplete else "completed", _usage(native_chunk), incomplete=incomplete
            )
            events.append(self._event("response.completed", response=response))
        return events

    def _error_event(self, message: str) -> bytes:
        error = {"code": "server_error", "message": message}
        return self._event("response.failed", response=self._response("failed", None, error=error))

    # -- events

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return sse_event(data, kind)

    def _response(
        self, status: str, usage: dict[str, Any] | None, *, error: Any = None, incomplete: bool = False
    ) -> dict[str, Any]:
        return _envelope(
            id=self._id,
            created_at=self._created_at,
            model=self._model,
            status=status,
            output=list(self._output),
            usage=usage,
            body=self._body,
            error=error,
            incomplete=incomplete,
        )

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        response = self._response("in_progress", None)
        return [
            self._event("response.created", response=response),
            self._event("response.in_progress", response=response),
        ]

    def _where(self) -> dict[str, Any]:
        assert self._open is not None
        return {"item_id": self._open["id"], "output_index": len(self._output)}

    def _open_item(self, kind: str) -> list[bytes]:
        if kind == "reasoning":
            self._open = _reasoning_item(_item_id("rs"), "", "in_progress")
            part_event = "response.reasoning_summary_part.added"
            part = {"part": {"type": "summary_text", "text": ""}, "summary_index": 0}
        else:
            self._open = _message_output(_item_id("msg"), None, "in_progress")
            part_event = "response.content_part.added"
            part = {"part": _text_part(""), "content_index": 0}
        self._open_text = []
        return [
            self._event("response.output_item.added", output_index=len(self._output), item=self._open),
            self._event(part_event, **self._where(), **part),
        ]

    def _delta(self, kind: str, text: str) -> list[bytes]:
        events: list[bytes] = []
        if self._open is None or self._open["type"] != kind:
            events += self._close() + self._open_item(kind)
        self._open_text.append(text)
        if kind == "reasoning":
            events.append(
                self._event("response.reasoning_summary_text.delta", **self._where(), summary_index=0, delta=text)
            )
        else:
            events.append(
                self._event("response.output_text.delta", **self._where(), content_index=0, delta=text, logprobs=[])
            )
        return events

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        text, where = "".join(self._open_text), self._where()
        if self._open["type"] == "reasoning":
            item = _reasoning_item(self._open["id"], text)
            events = [
                self._event("response.reasoning_summary_text.done", **where, summary_index=0, text=text),
                self._event(
                    "response.reasoning_summary_part.done",
                    **where,
                    summary_index=0,
                    part={"type": "summary_text", "text": text},
                ),
            ]
        else:
            item = _message_output(self._open["id"], text)
            events = [
                self._event("response.output_text.done", **where, content_index=0, text=text, logprobs=[]),
                self._event("response.content_part.done", **where, content_index=0, part=_text_part(text)),
            ]
        events.append(self._event("response.output_item.done", output_index=where["output_index"], item=item))
        self._output.append(item)
        self._open, self._open_text = None, []
        return events

    def _function_call(self, call: Mapping[str, Any]) -> list[bytes]:
        events = self._close()
        item = _function_call_output(call)
        index = len(self._output)
        where = {"item_id": item["id"], "output_index": index}
        events += [
            self._event(
                "response.output_item.added",
                output_index=index,
                item={**item, "arguments": "", "status": "in_progress"},
            ),
            self._event("response.function_call_arguments.delta", **where, delta=item["arguments"]),
            self._event("response.function_call_arguments.done", **where, arguments=item["arguments"]),
            self._event("response.output_item.done", output_index=index, item=item),
        ]
        self._output.append(item)
        return events
