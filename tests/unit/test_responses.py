"""/v1/responses translation: request bodies to native chat, native chunks to Response objects and SSE events."""

from __future__ import annotations

import base64
import json

import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from corral.api.errors import BadRequestError
from corral.api.responses import ResponsesStream, new_response_id, response_object, responses_request

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
DEFAULT_OPTIONS = {"temperature": 1.0, "top_p": 1.0}


# -- requests -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            {"model": "m", "input": "hi"},
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "options": DEFAULT_OPTIONS, "stream": False},
            id="string-input",
        ),
        pytest.param(
            {"model": "m", "input": "hi", "instructions": "be terse", "stream": True},
            {
                "model": "m",
                "messages": [{"role": "system", "content": "be terse"}, {"role": "user", "content": "hi"}],
                "options": DEFAULT_OPTIONS,
                "stream": True,
            },
            id="instructions",
        ),
        pytest.param(
            {"model": "m", "input": "hi", "temperature": 0, "top_p": 0.5, "max_output_tokens": 8},
            {
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
                "options": {"temperature": 0, "top_p": 0.5, "num_predict": 8},
                "stream": False,
            },
            id="sampling",
        ),
    ],
)
def test_request_whole(body, expected):
    assert responses_request(body) == expected


@pytest.mark.parametrize(
    ("items", "messages"),
    [
        pytest.param(
            [{"role": "user", "content": "a"}],
            [{"role": "user", "content": "a"}],
            id="easy-message-without-type",
        ),
        pytest.param(
            [{"type": "message", "role": "developer", "content": "rules"}],
            [{"role": "system", "content": "rules"}],
            id="developer-is-system",
        ),
        pytest.param(
            [
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is "},
                        {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"},
                        {"type": "input_text", "text": "this?"},
                    ],
                }
            ],
            [{"role": "user", "content": "what is this?", "images": [PNG]}],
            id="text-and-image-parts",
        ),
        pytest.param(
            [
                {"type": "message", "role": "user", "content": "q"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a"}]},
            ],
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            id="assistant-output-text",
        ),
        pytest.param(
            [
                {"type": "message", "role": "user", "content": "weather?"},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
                {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": ""},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "noon"}]},
            ],
            [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"id": "c1", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}}},
                        {"id": "c2", "function": {"index": 1, "name": "get_time", "arguments": {}}},
                    ],
                },
                {"role": "tool", "content": "sunny", "tool_call_id": "c1", "tool_name": "get_weather"},
                {"role": "tool", "content": "noon", "tool_call_id": "c2", "tool_name": "get_time"},
            ],
            id="function-calls-and-outputs",
        ),
        pytest.param(
            [
                {"type": "message", "role": "user", "content": "q"},
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "think"}]},
                {"type": "message", "role": "assistant", "content": "a"},
            ],
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "thinking": "think"}],
            id="reasoning-becomes-thinking",
        ),
        pytest.param(
            [
                {"type": "message", "role": "user", "content": "q"},
                {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "hmm"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            ],
            [
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": "",
                    "thinking": "hmm",
                    "tool_calls": [{"id": "c1", "function": {"index": 0, "name": "f", "arguments": {}}}],
                },
            ],
            id="reasoning-before-function-call",
        ),
        pytest.param(
            [{"type": "reasoning", "summary": []}, {"type": "message", "role": "user", "content": "q"}],
            [{"role": "user", "content": "q"}],
            id="stray-reasoning-ignored",
        ),
        pytest.param(
            [{"type": "function_call_output", "call_id": "unknown", "output": "x"}],
            [{"role": "tool", "content": "x", "tool_call_id": "unknown"}],
            id="output-without-call",
        ),
    ],
)
def test_request_input_items(items, messages):
    assert responses_request({"model": "m", "input": items})["messages"] == messages


@pytest.mark.parametrize(
    ("extra", "key", "value"),
    [
        pytest.param({"reasoning": {"effort": "high"}}, "think", "high", id="effort-high"),
        pytest.param({"reasoning": {"effort": "none"}}, "think", False, id="effort-none"),
        pytest.param({"reasoning": {"effort": "minimal"}}, "think", "low", id="effort-minimal"),
        pytest.param({"text": {"format": {"type": "json_object"}}}, "format", "json", id="json-object"),
        pytest.param(
            {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}},
            "format",
            {"type": "object"},
            id="json-schema",
        ),
        pytest.param(
            {
                "tools": [
                    {
                        "type": "function",
                        "name": "f",
                        "description": "does f",
                        "parameters": {"type": "object", "properties": {}},
                        "strict": True,
                    }
                ]
            },
            "tools",
            [
                {
                    "type": "function",
                    "function": {"name": "f", "description": "does f", "parameters": {"type": "object", "properties": {}}},
                }
            ],
            id="function-tool",
        ),
    ],
)
def test_request_features(extra, key, value):
    assert responses_request({"model": "m", "input": "hi", **extra})[key] == value


def test_request_text_format_text_adds_nothing():
    assert "format" not in responses_request({"model": "m", "input": "hi", "text": {"format": {"type": "text"}}})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m", "input": "hi", "previous_response_id": "resp_1"}, "previous_response_id is not supported"),
        ({"model": "m", "input": "hi", "conversation": "conv_1"}, "conversation is not supported"),
        ({"model": "m", "input": "hi", "truncation": "auto"}, "truncation 'auto' is not supported"),
        ({"model": "m"}, "input is required"),
        ({"model": "m", "input": 3}, "input must be a string or an array"),
        ({"model": "m", "input": [3]}, "invalid input item"),
        ({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}, "unsupported input item type: 'item_reference'"),
        ({"model": "m", "input": [{"type": "message", "role": "robot", "content": "x"}]}, "invalid message role"),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "unsupported content part type: 'input_file'",
        ),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input_image requires an image_url",
        ),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
            "image URLs are not currently supported",
        ),
        (
            {"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{bad"}]},
            "invalid function_call arguments",
        ),
        ({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]}, "requires a call_id"),
        ({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}, "unsupported tool type: 'web_search'"),
        ({"model": "m", "input": "hi", "tools": [{"type": "function"}]}, "tool name is required"),
        ({"model": "m", "input": "hi", "reasoning": {"effort": "huge"}}, "invalid reasoning value: 'huge'"),
        ({"model": "m", "input": "hi", "text": {"format": {"type": "json_schema"}}}, "text.format.schema is required"),
        ({"model": "m", "input": "hi", "temperature": "hot"}, "json: cannot unmarshal string"),
        ({"model": "m", "input": "hi", "max_output_tokens": 0}, "max_output_tokens must be at least 1"),
        ({"model": "m", "input": "hi", "stream": "yes"}, "json: cannot unmarshal string"),
    ],
)
def test_request_errors(body, message):
    with pytest.raises(BadRequestError) as info:
        responses_request(body)
    assert message in info.value.message


def test_new_response_id():
    assert new_response_id().startswith("resp_")


# -- non-stream responses ---------------------------------------------------------


def _final(message, done_reason="stop"):
    return {
        "model": "m",
        "message": {"role": "assistant", **message},
        "done": True,
        "done_reason": done_reason,
        "prompt_eval_count": 5,
        "eval_count": 3,
    }


def test_response_object_text():
    obj = response_object(_final({"content": "hello"}), model="m", id="resp_1", created_at=10)
    assert obj["id"] == "resp_1" and obj["object"] == "response" and obj["status"] == "completed"
    assert obj["completed_at"] >= 10 and obj["error"] is None and obj["incomplete_details"] is None
    assert [item["type"] for item in obj["output"]] == ["message"]
    message = obj["output"][0]
    assert message["id"].startswith("msg_") and message["status"] == "completed" and message["role"] == "assistant"
    assert message["content"] == [{"type": "output_text", "text": "hello", "annotations": [], "logprobs": []}]
    assert obj["usage"] == {
        "input_tokens": 5,
        "output_tokens": 3,
        "total_tokens": 8,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    parsed = Response.model_validate(obj)
    assert parsed.output_text == "hello"


def test_response_object_thinking_and_length():
    obj = response_object(_final({"content": "x", "thinking": "why"}, "length"), model="m", id="r", created_at=1)
    assert obj["status"] == "incomplete" and obj["incomplete_details"] == {"reason": "max_output_tokens"}
    assert obj["completed_at"] is None
    assert [item["type"] for item in obj["output"]] == ["reasoning", "message"]
    assert obj["output"][0]["summary"] == [{"type": "summary_text", "text": "why"}]
    assert Response.model_validate(obj).output_text == "x"


def test_response_object_tool_calls_and_echo():
    calls = [{"id": "call_1", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}}, {"function": {"name": "g"}}]
    body = {
        "model": "m",
        "input": "hi",
        "instructions": "be nice",
        "temperature": 0,
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": False}],
    }
    obj = response_object(_final({"content": "", "tool_calls": calls}), model="m", id="r", created_at=1, body=body)
    assert [item["type"] for item in obj["output"]] == ["function_call", "function_call"]
    first, second = obj["output"]
    assert first["call_id"] == "call_1" and first["name"] == "f" and json.loads(first["arguments"]) == {"a": 1}
    assert first["id"].startswith("fc_") and first["status"] == "completed"
    assert second["call_id"] and second["arguments"] == "{}"
    assert obj["instructions"] == "be nice" and obj["temperature"] == 0 and obj["tools"][0]["name"] == "f"
    parsed = Response.model_validate(obj)
    assert parsed.output_text == "" and parsed.output[0].type == "function_call"


def test_response_object_empty_reply_has_empty_message():
    obj = response_object(_final({"content": ""}), model="m", id="r", created_at=1)
    assert obj["output"][0]["content"][0]["text"] == ""


# -- streams ------------------------------------------------------------------------

_EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)


def _parse(raw: list[bytes]) -> list[dict]:
    out = []
    for event in raw:
        text = event.decode()
        assert text.endswith("\n\n")
        head, data = text.rstrip("\n").split("\n")
        assert head.startswith("event: ") and data.startswith("data: ")
        obj = json.loads(data[len("data: ") :])
        assert obj["type"] == head[len("event: ") :]
        _EVENTS.validate_python(obj)  # the SDK knows every event and field
        out.append(obj)
    return out


def _run(chunks: list[dict]) -> list[dict]:
    stream = ResponsesStream(model="m", id="resp_1", created_at=1)
    return _parse([event for chunk in chunks for event in stream.feed(chunk)])


def _chunk(done=False, **message):
    chunk = {"model": "m", "message": {"role": "assistant", "content": "", **message}, "done": done}
    if done:
        chunk.update(done_reason="stop", prompt_eval_count=4, eval_count=2)
    return chunk


@pytest.mark.parametrize(
    ("chunks", "types"),
    [
        pytest.param(
            [_chunk(content="He"), _chunk(content="llo"), _chunk(done=True)],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ],
            id="text",
        ),
        pytest.param(
            [_chunk(thinking="hm"), _chunk(thinking="m"), _chunk(content="ok"), _chunk(done=True)],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ],
            id="reasoning-then-text",
        ),
        pytest.param(
            [
                _chunk(tool_calls=[{"id": "c1", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}}]),
                _chunk(done=True),
            ],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ],
            id="function-call",
        ),
        pytest.param(
            [_chunk(done=True)],
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ],
            id="empty",
        ),
    ],
)
def test_stream_event_order(chunks, types):
    events = _run(chunks)
    assert [e["type"] for e in events] == types
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_stream_text_and_completed_response():
    events = _run([_chunk(content="He"), _chunk(content="llo"), _chunk(done=True)])
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == "Hello"
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert done["text"] == "Hello"
    added = next(e for e in events if e["type"] == "response.output_item.added")
    assert done["item_id"] == added["item"]["id"] and done["output_index"] == 0
    completed = Response.model_validate(events[-1]["response"])
    assert completed.status == "completed" and completed.output_text == "Hello"
    assert completed.usage.input_tokens == 4 and completed.usage.output_tokens == 2
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []


def test_stream_function_call_and_reasoning_indexes():
    call = {"id": "c1", "function": {"index": 0, "name": "f", "arguments": {"x": 1}}}
    events = _run([_chunk(thinking="t"), _chunk(tool_calls=[call]), _chunk(done=True)])
    args = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert json.loads(args["arguments"]) == {"x": 1} and args["output_index"] == 1
    final = events[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "function_call"]
    assert final["output"][1]["call_id"] == "c1" and final["output"][0]["summary"][0]["text"] == "t"


def test_stream_length_is_incomplete():
    last = _chunk(done=True)
    last["done_reason"] = "length"
    completed = _run([_chunk(content="a"), last])[-1]
    assert completed["type"] == "response.completed"
    assert completed["response"]["status"] == "incomplete"
    assert completed["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_stream_error_chunk_and_after_finish():
    stream = ResponsesStream(model="m", id="resp_1", created_at=1)
    events = _parse(stream.feed(_chunk(content="a")) + stream.feed({"error": "boom"}))
    failed = events[-1]
    assert failed["type"] == "response.failed" and failed["response"]["status"] == "failed"
    assert failed["response"]["error"]["message"] == "boom"
    assert failed["sequence_number"] == len(events) - 1
    assert stream.feed(_chunk(done=True)) == []


def test_stream_error_method():
    stream = ResponsesStream(model="m", id="resp_1", created_at=1)
    (failed,) = _parse([stream.error("model is overloaded")])
    assert failed["response"]["error"]["message"] == "model is overloaded"
