"""api/anthropic.py's conversions, on native chunks as a worker writes them: the block indexes
and events of streams the test model cannot be made to produce (thinking, then text, then a tool
call), and request mappings checked field by field."""

from __future__ import annotations

import json

import pytest

from corral.api import anthropic
from corral.api.errors import BadRequestError


def events(chunks: list[dict]) -> list[tuple[str, dict]]:
    stream = anthropic.MessagesStream(model="m", id="msg_1", input_tokens=7)
    out = []
    for chunk in chunks:
        for raw in stream.feed(chunk):
            name, data = raw.decode().removesuffix("\n\n").split("\n")
            out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def chunk(content: str = "", thinking: str = "", tool_calls: list | None = None, **final: object) -> dict:
    message: dict = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"model": "m", "message": message, "done": bool(final), **final}


CALL = {"id": "call_abc12345", "function": {"index": 0, "name": "get_weather", "arguments": {"location": "Paris"}}}


def test_text_then_thinking_then_text_opens_three_blocks():
    got = events([chunk("Hi"), chunk(thinking="hmm"), chunk(" there"),
                  chunk(done_reason="stop", prompt_eval_count=5, eval_count=3)])
    assert [(n, e.get("index")) for n, e in got] == [
        ("message_start", None),
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_stop", 1),
        ("content_block_start", 2), ("content_block_delta", 2), ("content_block_stop", 2),
        ("message_delta", None), ("message_stop", None),
    ]
    assert got[0][1]["message"] == {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                                    "content": [], "usage": {"input_tokens": 7, "output_tokens": 0}}
    assert got[4][1]["content_block"] == {"type": "thinking", "thinking": ""}
    assert got[5][1]["delta"] == {"type": "thinking_delta", "thinking": "hmm"}
    assert got[-2][1] == {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                          "usage": {"input_tokens": 5, "output_tokens": 3}}


def test_thinking_then_a_tool_call_closes_the_thinking_block_and_sends_the_call_whole():
    got = events([chunk(thinking="let me look"), chunk(tool_calls=[CALL]), chunk(tool_calls=[CALL]),
                  chunk(done_reason="stop", eval_count=9)])
    names = [(n, e.get("index")) for n, e in got]
    assert names == [
        ("message_start", None),
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_stop", 1),
        ("message_delta", None), ("message_stop", None),
    ]  # the same call again (by id) is not sent twice
    assert got[4][1]["content_block"] == {"type": "tool_use", "id": "call_abc12345", "name": "get_weather", "input": {}}
    assert got[5][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"location":"Paris"}'}
    assert got[-2][1]["delta"] == {"stop_reason": "tool_use"}


def test_thinking_after_its_block_closed_is_dropped_and_length_is_max_tokens():
    got = events([chunk(thinking="a"), chunk("b"), chunk(thinking="late"), chunk(done_reason="length")])
    assert [e["delta"] for n, e in got if n == "content_block_delta"] == [
        {"type": "thinking_delta", "thinking": "a"}, {"type": "text_delta", "text": "b"}]
    assert got[-2][1]["delta"] == {"stop_reason": "max_tokens"}


def test_an_empty_answer_and_an_error_mid_stream():
    assert [n for n, _ in events([chunk(done_reason="stop")])] == ["message_start", "message_delta", "message_stop"]
    got = events([chunk("x"), {"error": "worker failed"}, chunk("never")])
    assert got[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": "worker failed"}})


def test_message_object_orders_thinking_text_then_tool_use():
    native = {"message": {"role": "assistant", "content": "ok", "thinking": "t", "tool_calls": [CALL]},
              "done_reason": "stop", "prompt_eval_count": 4, "eval_count": 2}
    assert anthropic.message_object(native, model="m", id="msg_1") == {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
        "content": [{"type": "thinking", "thinking": "t"}, {"type": "text", "text": "ok"},
                    {"type": "tool_use", "id": "call_abc12345", "name": "get_weather", "input": {"location": "Paris"}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 4, "output_tokens": 2},
    }


def test_a_request_maps_onto_native_chat():
    native = anthropic.messages_request({
        "model": "m", "max_tokens": 50, "stream": True, "system": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
        "temperature": 0.2, "top_k": 5, "stop_sequences": ["END"], "output_config": {"effort": " XHigh "},
        "tools": [{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image",
                                          "source": {"type": "base64", "media_type": "image/png", "data": "aGk="}}]},
            {"role": "Assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"},
                                              {"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"x": 1}}]},
            {"role": "user", "content": [{"type": "text", "text": "thanks"},
                                         {"type": "tool_result", "tool_use_id": "c1", "content": [{"type": "text", "text": "sun"}]},
                                         {"type": "redacted_thinking", "data": "x"}]},
            {"role": "user", "content": None},
        ],
    })
    assert native == {
        "model": "m", "stream": True, "think": "high",
        "options": {"num_predict": 50, "temperature": 0.2, "top_k": 5, "stop": ["END"]},
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d",
                                                    "parameters": {"type": "object"}}}],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "A", "images": ["aGk="]},
            {"role": "assistant", "content": "", "thinking": "t",
             "tool_calls": [{"id": "c1", "function": {"name": "get_weather", "arguments": {"x": 1}}}]},
            {"role": "tool", "content": "sun", "tool_call_id": "c1"},  # a user's tool results come first
            {"role": "user", "content": "thanks"},
        ],
    }
    assert anthropic.estimate_input_tokens(native) > 0


@pytest.mark.parametrize(("thinking", "think"), [({"type": "enabled", "budget_tokens": 10}, True),
                                                 ({"type": "disabled"}, False), ({"type": "adaptive"}, None)])
def test_thinking_maps_onto_think(thinking, think):
    native = anthropic.messages_request({"model": "m", "max_tokens": 1, "thinking": thinking,
                                         "messages": [{"role": "user", "content": "hi"}]})
    assert native.get("think") is think


def test_type_errors_name_go_s_fields():
    with pytest.raises(BadRequestError, match="Go struct field MessagesRequest.stop_sequences of type string"):
        anthropic.messages_request({"model": "m", "max_tokens": 1, "stop_sequences": [1], "messages": []})
    with pytest.raises(BadRequestError, match="Go struct field ContentBlock.text of type string"):
        anthropic.messages_request({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]})
