"""The /v1 translation layer against hand-written native chunks, no server."""

import base64
import json
import struct
from datetime import UTC, datetime

import pytest

from corral.api import openai
from corral.api.errors import BadRequestError

PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
USER = {"role": "user", "content": "hi"}


def chat(**fields):
    return openai.chat_request({"model": "llama3.2", "messages": [USER], **fields})


def events(raw: list[bytes]) -> list:
    """SSE bytes back into JSON objects ("[DONE]" stays a string)."""
    out = []
    for event in raw:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n"), event
        body = event[len(b"data: ") : -2].decode()
        out.append(body if body == "[DONE]" else json.loads(body))
    return out


def native_chat(content="", *, thinking="", tool_calls=None, done=False, **final):
    message = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if tool_calls:
        message["tool_calls"] = tool_calls
    chunk = {
        "model": "llama3.2",
        "created_at": "2025-10-26T17:21:21.196249Z",
        "message": message,
        "done": done,
    }
    chunk.update(final)
    return chunk


FINAL = {"done_reason": "stop", "prompt_eval_count": 11, "eval_count": 7, "total_duration": 123}


# -- chat requests ------------------------------------------------------------


def test_chat_request_defaults():
    native = chat()
    assert native == {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"temperature": 1.0, "top_p": 1.0},
        "stream": False,
    }


def test_chat_request_maps_sampling_fields_into_options():
    native = chat(
        stop="\n",
        seed=42,
        frequency_penalty=0.5,
        presence_penalty=0.25,
        max_tokens=64,
        max_completion_tokens=999,  # not mapped, as in Ollama
        temperature=0.2,
        top_p=0.9,
        stream=True,
        n=3,
        user="someone",
        tool_choice="auto",
    )
    assert native["options"] == {
        "stop": ["\n"],
        "seed": 42,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.25,
        "num_predict": 64,
        "temperature": 0.2,
        "top_p": 0.9,
    }
    assert native["stream"] is True


def test_chat_request_stop_list_keeps_only_strings():
    assert chat(stop=["a", 1, "b"])["options"]["stop"] == ["a", "b"]


@pytest.mark.parametrize(
    "response_format, expected",
    [
        ({"type": "json_object"}, "json"),
        ({"type": " JSON_OBJECT "}, "json"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            {"type": "object"},
        ),
        ({"type": "json_schema"}, None),
        ({"type": "text"}, None),
    ],
)
def test_chat_request_response_format(response_format, expected):
    native = chat(response_format=response_format)
    assert native.get("format") == expected


@pytest.mark.parametrize(
    "fields, think",
    [
        ({"reasoning_effort": "none"}, False),
        ({"reasoning_effort": "minimal"}, "low"),
        ({"reasoning_effort": "low"}, "low"),
        ({"reasoning_effort": "medium"}, "medium"),
        ({"reasoning_effort": "high"}, "high"),
        ({"reasoning_effort": "max"}, "max"),
        ({"reasoning_effort": "xhigh"}, "max"),
        ({"reasoning_effort": "ultra"}, "max"),
        ({"reasoning": {"effort": "high"}}, "high"),
        ({"reasoning_effort": "low", "reasoning": {"effort": "xhigh"}}, "max"),
        # an empty nested effort still wins, and means "unset"
        ({"reasoning_effort": "low", "reasoning": {"effort": ""}}, None),
        ({}, None),
    ],
)
def test_chat_request_reasoning_effort(fields, think):
    assert chat(**fields).get("think") == think


def test_chat_request_passes_tools_logprobs_and_debug():
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    native = chat(tools=[tool], logprobs=True, top_logprobs=3, _debug_render_only=True)
    assert native["tools"] == [tool]
    assert native["logprobs"] is True
    assert native["top_logprobs"] == 3
    assert native["_debug_render_only"] is True
    assert "tools" not in chat(tools=[])


def test_chat_request_content_parts_become_separate_messages():
    native = chat(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                    {"type": "image_url", "image_url": f"data:;base64,{PNG_B64}"},
                    {"type": "input_audio", "input_audio": {"data": PNG_B64, "format": "wav"}},
                ],
            }
        ]
    )
    assert native["messages"] == [
        {"role": "user", "content": "what is this?"},
        {"role": "user", "content": "", "images": [PNG_B64]},
        {"role": "user", "content": "", "images": [PNG_B64]},
        {"role": "user", "content": "", "images": [PNG_B64]},
    ]


@pytest.mark.parametrize("mime", ["png", "jpeg", "jpg", "webp"])
def test_chat_request_strips_each_image_data_url_prefix(mime):
    part = {"type": "image_url", "image_url": {"url": f"data:image/{mime};base64,{PNG_B64}"}}
    native = chat(messages=[{"role": "user", "content": [part]}])
    assert native["messages"][0]["images"] == [PNG_B64]


def test_chat_request_assistant_tool_calls_and_tool_results():
    native = chat(
        messages=[
            USER,
            {
                "role": "assistant",
                "content": None,
                "reasoning": "I should look it up",
                "tool_calls": [
                    {
                        "id": "call_ab12cd34",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": '{"city":"Tokyo","days":2}',
                        },
                    },
                    {
                        "id": "call_zz",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": {"tz": "JST"}},
                    },
                ],
            },
            # found by tool_call_id
            {"role": "tool", "tool_call_id": "call_ab12cd34", "content": "sunny"},
            # named explicitly
            {"role": "tool", "name": "get_time", "tool_call_id": "call_zz", "content": "noon"},
            # an id nobody issued: no name
            {"role": "tool", "tool_call_id": "call_unknown", "content": "?"},
        ]
    )
    assistant, weather, clock, unknown = native["messages"][1:]
    assert assistant == {
        "role": "assistant",
        "content": "",
        "thinking": "I should look it up",
        "tool_calls": [
            {
                "id": "call_ab12cd34",
                "function": {
                    "index": 0,
                    "name": "get_weather",
                    "arguments": {"city": "Tokyo", "days": 2},
                },
            },
            {
                "id": "call_zz",
                "function": {"index": 1, "name": "get_time", "arguments": {"tz": "JST"}},
            },
        ],
    }
    assert list(assistant["tool_calls"][0]["function"]["arguments"]) == ["city", "days"]
    assert weather == {
        "role": "tool",
        "content": "sunny",
        "tool_name": "get_weather",
        "tool_call_id": "call_ab12cd34",
    }
    assert clock["tool_name"] == "get_time"
    assert unknown == {"role": "tool", "content": "?", "tool_call_id": "call_unknown"}


def test_chat_request_tool_lookup_prefers_the_latest_call_with_that_id():
    call = lambda name: {  # noqa: E731
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": name, "arguments": "{}"}}
        ],
    }
    native = chat(
        messages=[
            USER,
            call("old"),
            call("new"),
            {"role": "tool", "tool_call_id": "call_1", "content": "x"},
        ]
    )
    assert native["messages"][-1]["tool_name"] == "new"


def test_chat_request_tool_parts_keep_their_tool_name():
    native = chat(
        messages=[
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "result"}]},
        ]
    )
    assert native["messages"][-1] == {
        "role": "tool",
        "content": "result",
        "tool_name": "f",
        "tool_call_id": "c",
    }


def _msg(content=..., **extra):
    msg = {"role": "user", **extra}
    if content is not ...:
        msg["content"] = content
    return msg


@pytest.mark.parametrize(
    "body, message",
    [
        ({"model": "m"}, "[] is too short - 'messages'"),
        ({"model": "m", "messages": []}, "[] is too short - 'messages'"),
        ({"model": "m", "messages": None}, "[] is too short - 'messages'"),
        ({"messages": [_msg(1.5)]}, "invalid message content type: float64"),
        ({"messages": [_msg(7)]}, "invalid message content type: float64"),
        ({"messages": [_msg(True)]}, "invalid message content type: bool"),
        (
            {"messages": [_msg({"text": "x"})]},
            "invalid message content type: map[string]interface {}",
        ),
        ({"messages": [_msg(None)]}, "invalid message content type: <nil>"),
        ({"messages": [_msg()]}, "invalid message content type: <nil>"),
        ({"messages": [_msg(["plain string part"])]}, "invalid message format"),
        ({"messages": [_msg([{"type": "video", "video": "x"}])]}, "invalid message format"),
        ({"messages": [_msg([{"type": "text", "text": 3}])]}, "invalid message format"),
        (
            {"messages": [_msg([{"type": "image_url", "image_url": {"url": 3}}])]},
            "invalid message format",
        ),
        ({"messages": [_msg([{"type": "image_url"}])]}, "invalid message format"),
        (
            {"messages": [_msg([{"type": "input_audio", "input_audio": "x"}])]},
            "invalid message format",
        ),
        (
            {
                "messages": [
                    _msg([{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}])
                ]
            },
            "image URLs are not currently supported, please use base64 encoded data instead",
        ),
        (
            {"messages": [_msg([{"type": "image_url", "image_url": "http://example.com/a.png"}])]},
            "image URLs are not currently supported, please use base64 encoded data instead",
        ),
        (
            {
                "messages": [
                    _msg([{"type": "image_url", "image_url": "data:image/gif;base64," + PNG_B64}])
                ]
            },
            "invalid image input",
        ),
        (
            {
                "messages": [
                    _msg(
                        [{"type": "image_url", "image_url": "data:image/png;base64,@@not base64@@"}]
                    )
                ]
            },
            "invalid image input",
        ),
        (
            {"messages": [_msg([{"type": "image_url", "image_url": "file:///etc/passwd"}])]},
            "invalid image input",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [{"function": {"name": "f", "arguments": "{not json"}}],
                    }
                ]
            },
            "invalid tool call arguments",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"function": {"name": "f", "arguments": "[1, 2]"}}],
                    }
                ]
            },
            "invalid tool call arguments",
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]},
            "invalid tool call arguments",
        ),
        (
            {"messages": [USER], "reasoning_effort": "turbo"},
            """invalid reasoning value: 'turbo' """
            """(must be "high", "medium", "low", "max", or "none")""",
        ),
        (
            {"messages": [USER], "reasoning": {"effort": " HIGH "}},
            """invalid reasoning value: ' HIGH ' """
            """(must be "high", "medium", "low", "max", or "none")""",
        ),
        # wrong JSON types read as Go's encoding/json reports them
        ([], "json: cannot unmarshal array into Go value of type openai.ChatCompletionRequest"),
        (
            "hello",
            "json: cannot unmarshal string into Go value of type openai.ChatCompletionRequest",
        ),
        (
            {"messages": "hi"},
            "json: cannot unmarshal string "
            "into Go struct field ChatCompletionRequest.messages of type []openai.Message",
        ),
        (
            {"messages": ["hi"]},
            "json: cannot unmarshal string "
            "into Go struct field ChatCompletionRequest.messages of type openai.Message",
        ),
        (
            {"messages": [{"role": 1, "content": "x"}]},
            "json: cannot unmarshal number "
            "into Go struct field Message.messages.role of type string",
        ),
        (
            {"messages": [USER], "max_tokens": 1.5},
            "json: cannot unmarshal number 1.5 "
            "into Go struct field ChatCompletionRequest.max_tokens of type int",
        ),
        (
            {"messages": [USER], "temperature": "hot"},
            "json: cannot unmarshal string "
            "into Go struct field ChatCompletionRequest.temperature of type float64",
        ),
        (
            {"messages": [USER], "stream": "yes"},
            "json: cannot unmarshal string "
            "into Go struct field ChatCompletionRequest.stream of type bool",
        ),
    ],
)
def test_chat_request_errors(body, message):
    with pytest.raises(BadRequestError) as exc:
        openai.chat_request(body)
    assert exc.value.message == message
    assert exc.value.status == 400


def test_chat_request_null_content_is_fine_with_tool_calls():
    native = chat(messages=[{"role": "assistant", "content": None, "tool_calls": []}])
    assert native["messages"] == [{"role": "assistant", "content": ""}]


# -- chat responses -----------------------------------------------------------


WEATHER_CALL = {
    "id": "call_ab12cd34",
    "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Tokyo"}},
}


def test_chat_response():
    native = native_chat("Hello!", thinking="greet", done=True, **FINAL)
    reply = openai.chat_response(native, model="llama3.2", id="chatcmpl-7", created=1700000000)
    assert reply == {
        "id": "chatcmpl-7",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "llama3.2",
        "system_fingerprint": "fp_ollama",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!", "reasoning": "greet"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


@pytest.mark.parametrize(
    "done_reason, tool_calls, expected",
    [
        ("stop", None, "stop"),
        ("length", None, "length"),
        ("stop", [WEATHER_CALL], "tool_calls"),
        ("length", [WEATHER_CALL], "length"),
    ],
)
def test_chat_response_finish_reason(done_reason, tool_calls, expected):
    native = native_chat(tool_calls=tool_calls, done=True, done_reason=done_reason)
    reply = openai.chat_response(native, model="m", id="chatcmpl-1", created=1)
    assert reply["choices"][0]["finish_reason"] == expected


def test_chat_response_tool_calls_carry_json_string_arguments():
    call = {"id": "call_x", "function": {"index": 1, "name": "f", "arguments": {"b": 1, "a": "ü"}}}
    native = native_chat(tool_calls=[call], done=True, **FINAL)
    message = openai.chat_response(native, model="m", id="i", created=1)["choices"][0]["message"]
    assert message["tool_calls"] == [
        {
            "id": "call_x",
            "index": 1,
            "type": "function",
            "function": {"name": "f", "arguments": '{"b":1,"a":"ü"}'},
        }
    ]


def test_chat_response_logprobs_and_debug_info():
    logprobs = [{"token": "Hi", "logprob": -0.1}]
    native = native_chat(
        "Hi",
        done=True,
        logprobs=logprobs,
        _debug_info={"rendered_template": "x", "image_count": 0},
        **FINAL,
    )
    reply = openai.chat_response(native, model="m", id="i", created=1)
    assert reply["choices"][0]["logprobs"] == {"content": logprobs}
    assert reply["_debug_info"] == {"rendered_template": "x", "image_count": 0}


# -- chat streams -------------------------------------------------------------


def run_chat_stream(chunks, include_usage=False):
    stream = openai.ChatStream(
        model="llama3.2", id="chatcmpl-42", created=1700000000, include_usage=include_usage
    )
    out = []
    for chunk in chunks:
        out.extend(stream.feed(chunk))
    return events(out)


def deltas(evs):
    return [e["choices"][0]["delta"] for e in evs if isinstance(e, dict) and e["choices"]]


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_stream_content_then_done(include_usage):
    evs = run_chat_stream(
        [
            native_chat("Hel"),
            native_chat(""),
            native_chat("lo"),
            native_chat("", done=True, **FINAL),
        ],
        include_usage=include_usage,
    )
    assert evs[-1] == "[DONE]"
    chunks = evs[:-1]
    for chunk in chunks:
        assert chunk["id"] == "chatcmpl-42"
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["created"] == 1700000000
        assert chunk["model"] == "llama3.2"
        assert chunk["system_fingerprint"] == "fp_ollama"
    assert deltas(chunks) == [{"role": "assistant", "content": "Hel"}, {"content": "lo"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]] == [
        None,
        None,
        "stop",
    ]
    if include_usage:
        usage = chunks[-1]
        assert usage["choices"] == []
        assert usage["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
        assert all("usage" not in c for c in chunks[:-1])
    else:
        assert all("usage" not in c for c in chunks)
        assert len(chunks) == 3


def test_chat_stream_splits_reasoning_and_content():
    evs = run_chat_stream(
        [
            native_chat(thinking="Let me think"),
            native_chat("Answer", thinking=" more"),
            native_chat("", done=True, **FINAL),
        ]
    )
    assert deltas(evs) == [
        {"role": "assistant", "reasoning": "Let me think"},
        {"reasoning": " more"},
        {"content": "Answer"},
        {},
    ]


def test_chat_stream_tool_call():
    evs = run_chat_stream(
        [
            native_chat(tool_calls=[WEATHER_CALL]),
            native_chat("", done=True, **FINAL),
        ],
        include_usage=True,
    )
    assert deltas(evs) == [
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_ab12cd34",
                    "index": 0,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Tokyo"}'},
                }
            ],
        },
        {},
    ]
    finish = evs[-3]
    assert finish["choices"][0]["finish_reason"] == "tool_calls"
    assert evs[-2]["choices"] == [] and evs[-2]["usage"]["total_tokens"] == 18
    assert evs[-1] == "[DONE]"


def test_chat_stream_length_beats_tool_calls():
    evs = run_chat_stream(
        [native_chat(tool_calls=[WEATHER_CALL]), native_chat(done=True, done_reason="length")]
    )
    assert evs[-2]["choices"][0]["finish_reason"] == "length"


def test_chat_stream_content_on_the_final_chunk_and_nothing_after():
    stream = openai.ChatStream(model="m", id="chatcmpl-1", created=1, include_usage=False)
    evs = events(stream.feed(native_chat("all at once", done=True, **FINAL)))
    assert deltas(evs) == [{"role": "assistant", "content": "all at once"}, {}]
    assert stream.feed(native_chat("late")) == []


def test_chat_stream_empty_reply_still_sends_the_role():
    evs = run_chat_stream([native_chat(""), native_chat("", done=True, **FINAL)])
    assert deltas(evs) == [{"role": "assistant", "content": ""}, {}]
    assert evs[-1] == "[DONE]"


def test_chat_stream_logprobs_ride_on_the_content_delta():
    logprobs = [{"token": "Hi", "logprob": -0.5}]
    evs = run_chat_stream([native_chat("Hi", logprobs=logprobs)])
    assert evs[0]["choices"][0]["logprobs"] == {"content": logprobs}


@pytest.mark.parametrize("stream_class", [openai.ChatStream, openai.CompletionStream])
def test_stream_error_event_ends_the_stream(stream_class):
    stream = stream_class(model="m", id="x", created=1, include_usage=True)
    event = stream.error("llama runner process has terminated")
    assert events([event]) == [
        {
            "error": {
                "message": "llama runner process has terminated",
                "type": "api_error",
                "param": None,
                "code": None,
            }
        }
    ]
    assert stream.feed({"response": "x", "message": {"content": "x"}, "done": True}) == []


@pytest.mark.parametrize("stream_class", [openai.ChatStream, openai.CompletionStream])
def test_stream_native_error_line_becomes_error_event(stream_class):
    stream = stream_class(model="m", id="x", created=1, include_usage=False)
    evs = events(stream.feed({"error": "out of memory"}))
    assert evs == [
        {"error": {"message": "out of memory", "type": "api_error", "param": None, "code": None}}
    ]


# -- completions --------------------------------------------------------------


def test_completion_request_defaults():
    native = openai.completion_request({"model": "llama3.2", "prompt": "Once upon"})
    assert native == {
        "model": "llama3.2",
        "prompt": "Once upon",
        "options": {
            "temperature": 1.0,
            "frequency_penalty": 0.0,
            "presence_penalty": 0.0,
            "top_p": 1.0,
        },
        "stream": False,
    }


def test_completion_request_mapping():
    native = openai.completion_request(
        {
            "model": "m",
            "prompt": "def f(",
            "suffix": "return x",
            "stop": ["\n\n", "```"],
            "max_tokens": 10,
            "seed": 3,
            "temperature": 0,
            "top_p": 0,  # counts as unset
            "frequency_penalty": 0.1,
            "presence_penalty": 0.2,
            "logprobs": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert native == {
        "model": "m",
        "prompt": "def f(",
        "suffix": "return x",
        "options": {
            "stop": ["\n\n", "```"],
            "num_predict": 10,
            "seed": 3,
            "temperature": 0,
            "top_p": 1.0,
            "frequency_penalty": 0.1,
            "presence_penalty": 0.2,
        },
        "stream": True,
        "logprobs": True,
        "top_logprobs": 2,
    }
    assert openai.completion_request({"prompt": "x", "stop": "END"})["options"]["stop"] == ["END"]
    assert "logprobs" not in openai.completion_request({"prompt": "x", "logprobs": 0})


@pytest.mark.parametrize(
    "body, message",
    [
        ({"prompt": "x", "stop": ["ok", 1]}, "invalid type for 'stop' field: float64"),
        ({"prompt": "x", "stop": [True]}, "invalid type for 'stop' field: bool"),
        ({"prompt": "x", "stop": [None]}, "invalid type for 'stop' field: <nil>"),
        (
            {"prompt": ["a", "b"]},
            "json: cannot unmarshal array "
            "into Go struct field CompletionRequest.prompt of type string",
        ),
        (
            {"prompt": "x", "top_p": "high"},
            "json: cannot unmarshal string "
            "into Go struct field CompletionRequest.top_p of type float32",
        ),
        (7, "json: cannot unmarshal number into Go value of type openai.CompletionRequest"),
    ],
)
def test_completion_request_errors(body, message):
    with pytest.raises(BadRequestError) as exc:
        openai.completion_request(body)
    assert exc.value.message == message


def native_generate(response="", *, done=False, **final):
    chunk = {"model": "m", "created_at": "2025-10-26T17:21:21Z", "response": response, "done": done}
    chunk.update(final)
    return chunk


def test_completion_response():
    reply = openai.completion_response(
        native_generate(
            "Once upon a time", done=True, done_reason="length", prompt_eval_count=3, eval_count=4
        ),
        model="llama3.2",
        id="cmpl-5",
        created=1700000000,
    )
    assert reply == {
        "id": "cmpl-5",
        "object": "text_completion",
        "created": 1700000000,
        "model": "llama3.2",
        "system_fingerprint": "fp_ollama",
        "choices": [{"text": "Once upon a time", "index": 0, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }


@pytest.mark.parametrize("include_usage", [False, True])
def test_completion_stream(include_usage):
    stream = openai.CompletionStream(
        model="llama3.2", id="cmpl-9", created=1700000000, include_usage=include_usage
    )
    raw = []
    for chunk in [
        native_generate("Once"),
        native_generate(" upon"),
        native_generate("", done=True, done_reason="stop", prompt_eval_count=5, eval_count=2),
    ]:
        raw.extend(stream.feed(chunk))
    evs = events(raw)
    assert evs[-1] == "[DONE]"
    text_chunks = [e for e in evs[:-1] if e["choices"]]
    assert [c["choices"][0]["text"] for c in text_chunks] == ["Once", " upon", ""]
    assert [c["choices"][0]["finish_reason"] for c in text_chunks] == [None, None, "stop"]
    for chunk in evs[:-1]:
        assert chunk["object"] == "text_completion"
        assert chunk["id"] == "cmpl-9"
        assert chunk["created"] == 1700000000
        assert chunk["system_fingerprint"] == "fp_ollama"
    if include_usage:
        zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        assert all(c["usage"] == zero for c in text_chunks)
        assert evs[-2] == {
            "id": "cmpl-9",
            "object": "text_completion",
            "created": 1700000000,
            "choices": [],
            "model": "llama3.2",
            "system_fingerprint": "fp_ollama",
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        }
        assert len(evs) == 5
    else:
        assert all("usage" not in c for c in evs[:-1])
        assert len(evs) == 4


# -- embeddings ---------------------------------------------------------------


@pytest.mark.parametrize(
    "body, native_input, encoding_format",
    [
        ({"model": "e", "input": "hello"}, "hello", "float"),
        ({"model": "e", "input": ""}, [""], "float"),
        ({"model": "e", "input": ["a", "b"], "encoding_format": "base64"}, ["a", "b"], "base64"),
        ({"model": "e", "input": "x", "encoding_format": "BASE64"}, "x", "base64"),
        ({"model": "e", "input": "x", "encoding_format": "Float"}, "x", "float"),
    ],
)
def test_embedding_request(body, native_input, encoding_format):
    native, fmt = openai.embedding_request(body)
    assert native == {"model": "e", "input": native_input}
    assert fmt == encoding_format


def test_embedding_request_dimensions():
    native, _ = openai.embedding_request({"model": "e", "input": "x", "dimensions": 8})
    assert native["dimensions"] == 8


@pytest.mark.parametrize(
    "body, message",
    [
        ({"model": "e"}, "invalid input"),
        ({"model": "e", "input": None}, "invalid input"),
        ({"model": "e", "input": []}, "invalid input"),
        ({"model": "e", "input": [1, 2, 3]}, "invalid input type"),
        ({"model": "e", "input": 5}, "invalid input type"),
        (
            {"model": "e", "input": "x", "encoding_format": "int8"},
            "Invalid value for 'encoding_format' = int8. Supported values: ['float', 'base64'].",
        ),
    ],
)
def test_embedding_request_errors(body, message):
    with pytest.raises(BadRequestError) as exc:
        openai.embedding_request(body)
    assert exc.value.message == message


def test_embedding_response_float_and_base64():
    native = {"model": "e", "embeddings": [[0.5, -0.25], [1.0, 0.0]], "prompt_eval_count": 4}
    floats = openai.embedding_response(native, model="e", encoding_format="float")
    assert floats == {
        "object": "list",
        "data": [
            {"object": "embedding", "embedding": [0.5, -0.25], "index": 0},
            {"object": "embedding", "embedding": [1.0, 0.0], "index": 1},
        ],
        "model": "e",
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }
    b64 = openai.embedding_response(native, model="e", encoding_format="base64")
    first = base64.b64decode(b64["data"][0]["embedding"])
    assert first == b"\x00\x00\x00\x3f\x00\x00\x80\xbe"  # little-endian float32
    assert struct.unpack("<2f", first) == (0.5, -0.25)
    assert b64["data"][1]["index"] == 1


# -- models -------------------------------------------------------------------


TAG = {
    "name": "llama3.2:latest",
    "model": "llama3.2:latest",
    "modified_at": "2024-05-01T10:00:00.123456789-07:00",
    "size": 2019393189,
    "digest": "a" * 64,
    "details": {"format": "gguf"},
}


def test_model_list():
    listed = openai.model_list(
        [TAG, {**TAG, "name": "jmorgan/tiny:q4", "modified_at": "2025-10-26T17:21:21Z"}]
    )
    assert listed == {
        "object": "list",
        "data": [
            {
                "id": "llama3.2:latest",
                "object": "model",
                "created": 1714582800,
                "owned_by": "library",
            },
            {
                "id": "jmorgan/tiny:q4",
                "object": "model",
                "created": 1761499281,
                "owned_by": "jmorgan",
            },
        ],
    }


def test_model_list_empty_is_null():
    assert openai.model_list([]) == {"object": "list", "data": None}


@pytest.mark.parametrize(
    "name, owner",
    [
        ("llama3.2", "library"),
        ("llama3.2:latest", "library"),
        ("jmorgan/tiny", "jmorgan"),
        ("hf.co/bartowski/Llama-3.2-1B-GGUF:Q4_K_M", "bartowski"),
        ("localhost:5000/team/model:v1", "team"),
        ("registry.ollama.ai/library/qwen3:8b@sha256:" + "b" * 64, "library"),
    ],
)
def test_model_object_owned_by_namespace(name, owner):
    obj = openai.model_object({"modified_at": datetime(2024, 1, 1, tzinfo=UTC)}, id=name)
    assert obj == {"id": name, "object": "model", "created": 1704067200, "owned_by": owner}


def test_ids_look_like_ollamas():
    for _ in range(50):
        chat_id, completion_id = openai.new_chat_id(), openai.new_completion_id()
        assert (
            chat_id.startswith("chatcmpl-") and 0 <= int(chat_id.removeprefix("chatcmpl-")) <= 998
        )
        assert (
            completion_id.startswith("cmpl-")
            and 0 <= int(completion_id.removeprefix("cmpl-")) <= 998
        )


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"stream_options": {"include_usage": True}}, True),
        ({"stream_options": {"include_usage": False}}, False),
        ({"stream_options": None}, False),
        ({}, False),
        ([], False),
    ],
)
def test_include_usage(body, expected):
    assert openai.include_usage(body) is expected
