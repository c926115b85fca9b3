"""Anthropic's Messages API (``POST /v1/messages``) with the ``anthropic`` SDK, against a worker and
through the cluster (docs/api-coverage.md, "/v1/messages").

The examples of Ollama's Anthropic-compatibility page run as written (basic, streaming, tools),
except for the model and the endpoint. Answers are compared with the native /api/chat at
temperature 0, so each check says that the request was mapped as a native request would be.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable, Iterator

import anthropic
import httpx
import pytest

from tests.support.model import MODEL_NAME

MODEL = MODEL_NAME
# The SDK (2.x) has no temperature argument any more; the body field is still Anthropic's (and Ollama's).
GREEDY = {"extra_body": {"temperature": 0.0}}

# A variant that calls tools: its template opens with a few turns that answer weather questions
# with a call, which the tiny test model copies at temperature 0 (Corral parses <tool_call>
# output as Ollama does).
_SHOT = ("<|im_start|>user\nWhat's the weather in {0}?<|im_end|>\n<|im_start|>assistant\n"
         '<tool_call>\n{{"name": "get_weather", "arguments": {{"location": "{0}"}}}}\n</tool_call><|im_end|>\n')
TOOL_CALLER = {
    "template": (
        "{{- if .Tools }}<|im_start|>system\nYou may call these functions:\n"
        "{{- range .Tools }}\n{{ json .Function }}{{- end }}<|im_end|>\n{{ end }}"
        + "".join(_SHOT.format(city) for city in ("Rome", "Oslo", "Lima"))
        + "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}"
        "{{- range .ToolCalls }}<tool_call>\n{{ json .Function }}\n</tool_call>{{ end }}<|im_end|>\n{{ end }}"
        "<|im_start|>assistant\n"
    ),
}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather in a location",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string", "description": "The city and state"}},
        "required": ["location"],
    },
}


@pytest.fixture
def claude(worker) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=worker.url, api_key="ollama", timeout=120, max_retries=0) as c:
        yield c


@pytest.fixture
def make_model(http: httpx.Client) -> Iterator[Callable[..., str]]:
    created: list[str] = []

    def make(**fields: object) -> str:
        name = f"claude-{uuid.uuid4().hex[:8]}:latest"
        r = http.post("/api/create", json={"model": name, "from": MODEL, "stream": False, **fields})
        assert r.status_code == 200, r.text
        created.append(name)
        return name

    yield make
    for name in created:
        http.request("DELETE", "/api/delete", json={"model": name})


def native_chat(http: httpx.Client, model: str, messages: list[dict], num_predict: int, **extra: object) -> dict:
    r = http.post("/api/chat", json={"model": model, "messages": messages, "stream": False,
                                     "options": {"num_predict": num_predict, "temperature": 0.0}, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def sse_events(response: httpx.Response) -> list[tuple[str, dict]]:
    """(event name, data) pairs, checking each event names its own type."""
    events = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"], block
        events.append((lines["event"], data))
    return events


# -- the examples of Ollama's Anthropic page --------------------------------------------------


def test_basic_example(claude, http):
    message = claude.messages.create(model=MODEL, max_tokens=12, messages=[{"role": "user", "content": "Hello, how are you?"}],
                                     **GREEDY)
    assert message.content[0].type == "text" and message.content[0].text
    assert re.fullmatch(r"msg_[0-9a-f]{24}", message.id)
    assert (message.type, message.role, message.model) == ("message", "assistant", MODEL)
    assert message.stop_reason in ("end_turn", "max_tokens")
    native = native_chat(http, MODEL, [{"role": "user", "content": "Hello, how are you?"}], 12)
    assert message.content[0].text == native["message"]["content"]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (native["prompt_eval_count"], native["eval_count"])


def test_streaming_example(claude):
    request = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "Count from 1 to 10"}], **GREEDY}
    with claude.messages.stream(**request) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.content[0].text == text
    assert final.usage.output_tokens > 0 and final.stop_reason in ("end_turn", "max_tokens")
    assert claude.messages.create(**request).content[0].text == text


def test_tools_example(claude, make_model):
    model = make_model(**TOOL_CALLER)
    message = claude.messages.create(
        model=model, max_tokens=60, tools=[WEATHER_TOOL], **GREEDY,
        messages=[{"role": "user", "content": "What's the weather in San Francisco?"}],
    )
    assert message.stop_reason == "tool_use"
    calls = [block for block in message.content if block.type == "tool_use"]
    assert [c.name for c in calls] == ["get_weather"]
    assert isinstance(calls[0].input, dict) and isinstance(calls[0].input["location"], str)
    assert re.fullmatch(r"call_[a-z0-9]{8}", calls[0].id)
    # Streamed, the call comes whole (one input_json_delta), and the SDK assembles the same block.
    with claude.messages.stream(model=model, max_tokens=60, tools=[WEATHER_TOOL], **GREEDY,
                                messages=[{"role": "user", "content": "What's the weather in San Francisco?"}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in final.content if b.type == "tool_use"] == [(calls[0].name, calls[0].input)]


# -- the request, mapped as the native chat reads it ----------------------------------------------


def test_system_and_blocks_are_the_native_conversation(claude, http):
    """A system prompt (string or blocks) and content blocks give the native chat's answer."""
    native = native_chat(http, MODEL, [{"role": "system", "content": "You are a pirate. Speak like one."},
                                       {"role": "user", "content": "Say hello to the crew."}], 10)
    as_string = claude.messages.create(model=MODEL, max_tokens=10, system="You are a pirate. Speak like one.",
                                       messages=[{"role": "user", "content": "Say hello to the crew."}], **GREEDY)
    as_blocks = claude.messages.create(
        model=MODEL, max_tokens=10, **GREEDY,
        system=[{"type": "text", "text": "You are a pirate. "}, {"type": "text", "text": "Speak like one."}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "Say hello "}, {"type": "text", "text": "to the crew."}]}],
    )
    assert as_string.content[0].text == as_blocks.content[0].text == native["message"]["content"]


def test_a_tool_round_trip_is_the_native_conversation(claude, http, make_model):
    """tool_use in an assistant turn and tool_result in the user's become native tool calls and a tool message."""
    model = make_model(**TOOL_CALLER)
    native = native_chat(http, model, [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_123", "function": {"name": "get_weather", "arguments": {"location": "Paris"}}}]},
        {"role": "tool", "content": "Sunny, 22 degrees", "tool_call_id": "call_123"},
    ], 12, tools=[{"type": "function", "function": {"name": WEATHER_TOOL["name"], "description": WEATHER_TOOL["description"],
                                                  "parameters": WEATHER_TOOL["input_schema"]}}])
    message = claude.messages.create(model=model, max_tokens=12, tools=[WEATHER_TOOL], **GREEDY, messages=[
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_123", "name": "get_weather",
                                           "input": {"location": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_123", "content": "Sunny, 22 degrees"}]},
    ])
    answer = "".join(b.text for b in message.content if b.type == "text")
    calls = [{"name": b.name, "input": b.input} for b in message.content if b.type == "tool_use"]
    expected_calls = [{"name": c["function"]["name"], "input": c["function"]["arguments"]}
                      for c in native["message"].get("tool_calls", [])]
    assert (answer, calls) == (native["message"]["content"], expected_calls)


def test_max_tokens_and_stop_sequences(claude, http):
    story = [{"role": "user", "content": "Tell me a long story about a dragon."}]
    cut = claude.messages.create(model=MODEL, max_tokens=3, messages=story, **GREEDY)
    assert (cut.stop_reason, cut.usage.output_tokens) == ("max_tokens", 3)
    full = native_chat(http, MODEL, story, 24)["message"]["content"]
    word = full.split()[3]
    stopped = claude.messages.create(model=MODEL, max_tokens=24, messages=story, stop_sequences=[word], **GREEDY)
    assert word not in stopped.content[0].text and full.startswith(stopped.content[0].text.rstrip())
    assert stopped.stop_reason == "end_turn"  # as in Ollama: a stop sequence ends the turn


def test_thinking_is_a_thinking_block(claude, make_model):
    model = make_model(template="{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                                "<|im_start|>assistant\n{{ if .Think }}<think>\n{{ end }}")
    ask = {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "Why is the sea salty?"}], **GREEDY}
    thought = claude.messages.create(**ask, thinking={"type": "enabled", "budget_tokens": 1024})
    assert thought.content[0].type == "thinking" and thought.content[0].thinking.strip()
    with claude.messages.stream(**ask, thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        streamed = stream.get_final_message()
    assert streamed.content[0].type == "thinking" and streamed.content[0].thinking == thought.content[0].thinking
    plain = claude.messages.create(**ask, thinking={"type": "disabled"})
    assert [b.type for b in plain.content] == ["text"]
    # A model that cannot think answers plainly when asked to (Ollama relaxes it here, not a 400).
    relaxed = claude.messages.create(**{**ask, "model": MODEL}, thinking={"type": "enabled", "budget_tokens": 1024})
    assert [b.type for b in relaxed.content] == ["text"]


def test_stream_events_in_order(http):
    r = http.post("/v1/messages", headers={"anthropic-version": "2023-06-01", "x-api-key": "anything"}, json={
        "model": MODEL, "max_tokens": 6, "stream": True, "temperature": 0,
        "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "content_block_start"] and names[-3:] == [
        "content_block_stop", "message_delta", "message_stop"]
    assert set(names[2:-3]) == {"content_block_delta"}
    start = events[0][1]["message"]
    assert start["content"] == [] and start["usage"]["output_tokens"] == 0 and start["usage"]["input_tokens"] > 0
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert {e["delta"]["type"] for _, e in events[2:-3]} == {"text_delta"}
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "max_tokens"} and delta["usage"]["output_tokens"] == 6


# -- errors, in Anthropic's envelope ----------------------------------------------------------------


def anthropic_error(r: httpx.Response, status: int, kind: str, message: str) -> None:
    body = r.json()
    assert r.status_code == status, r.text
    assert re.fullmatch(r"req_[0-9a-f]{24}", body.pop("request_id"))
    assert body == {"type": "error", "error": {"type": kind, "message": message}}


@pytest.mark.parametrize(("body", "message"), [
    (b"", "EOF"),
    (b"{", "unexpected EOF"),
    (b"[]", "json: cannot unmarshal array into Go value of type anthropic.MessagesRequest"),
    ({"model": MODEL, "max_tokens": "10", "messages": []},
     "json: cannot unmarshal string into Go struct field MessagesRequest.max_tokens of type int"),
    ({"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}, "model is required"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens is required and must be positive"),
    ({"model": MODEL, "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]},
     "max_tokens is required and must be positive"),
    ({"model": MODEL, "max_tokens": 10, "messages": []}, "messages is required"),
    ({"model": MODEL, "max_tokens": 10, "messages": [{"role": "user"}]}, "unexpected end of JSON input"),
    ({"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": 5}]},
     "json: cannot unmarshal number into Go value of type []anthropic.ContentBlock"),
    ({"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "image"}]}]},
     "invalid image source"),
    ({"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}]}]},
     "invalid image source type: url. Only base64 images are supported."),
    ({"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "not base64!"}}]}]},
     "invalid base64 image data: illegal base64 data at input byte 3"),
    ({"model": MODEL, "max_tokens": 10, "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "name": "f", "input": {}}]}]}, "tool_use block missing required 'id' field"),
    ({"model": MODEL, "max_tokens": 10, "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t1", "input": {}}]}]}, "tool_use block missing required 'name' field"),
    ({"model": MODEL, "max_tokens": 10, "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t1", "name": "f", "input": "x"}]}]},
     "json: cannot unmarshal string into Go struct field ContentBlock.input of type api.ToolCallFunctionArguments"),
    ({"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}],
      "tools": [{"name": "f", "input_schema": "x"}]},
     'invalid input_schema for tool "f": json: cannot unmarshal string into Go value of type api.ToolFunctionParameters'),
])
def test_bad_requests_are_400_invalid_request_error(http, body, message):
    sent = http.post("/v1/messages", content=body) if isinstance(body, bytes) else http.post("/v1/messages", json=body)
    anthropic_error(sent, 400, "invalid_request_error", message)


def test_an_image_for_a_model_without_vision_is_400(http):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()
    r = http.post("/v1/messages", json={"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
        {"type": "text", "text": "What is this?"}]}]})
    anthropic_error(r, 400, "invalid_request_error", f'"{MODEL}" does not support vision')


def test_web_search_is_refused_as_a_cloud_feature(http):
    r = http.post("/v1/messages", json={"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}],
                                        "tools": [{"type": "web_search_20250305", "name": "web_search"}]})
    anthropic_error(r, 403, "permission_error", "ollama cloud is disabled: web search is unavailable")


def test_sdk_errors(claude):
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="no-such-model", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert missing.value.status_code == 404
    assert missing.value.body["error"] == {"type": "not_found_error", "message": "model 'no-such-model' not found"}
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(model=MODEL, max_tokens=4, messages=[])
    assert bad.value.body["error"]["message"] == "messages is required"


def test_other_methods_and_paths(http):
    assert (http.get("/v1/messages").status_code, http.get("/v1/messages").text) == (405, "405 method not allowed")
    r = http.post("/v1/messages/count_tokens", json={"model": MODEL, "messages": []})
    assert (r.status_code, r.text) == (404, "404 page not found")
