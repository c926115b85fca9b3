"""/v1/responses against a real server (a worker, or the cluster), through the official openai client.

A few tokens at temperature 0 each, so the module stays fast on a small CPU.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from tests.support.model import MODEL_NAME

MODEL = MODEL_NAME


@pytest.fixture
def oai(worker) -> Iterator[OpenAI]:
    with OpenAI(base_url=worker.url + "/v1", api_key="ollama", timeout=120, max_retries=0) as c:
        yield c


def test_responses_create(oai):
    response = oai.responses.create(model=MODEL, input="Say hi", max_output_tokens=8, temperature=0)
    assert response.id.startswith("resp_") and response.object == "response" and response.model == MODEL
    assert response.status in ("completed", "incomplete")
    assert response.output_text
    assert response.output[-1].type == "message" and response.output[-1].role == "assistant"
    usage = response.usage
    assert usage.input_tokens > 0 and 0 < usage.output_tokens <= 8
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_responses_instructions_reach_the_prompt(oai):
    # The template has a default system prompt that instructions replace, so compare two instructions.
    short = oai.responses.create(model=MODEL, instructions="Be brief.", input="Say hi", max_output_tokens=4, temperature=0)
    pirate = "You are a pirate. Always answer like a pirate, with plenty of arr and matey in every sentence."
    instructed = oai.responses.create(
        model=MODEL, instructions=pirate, input="Say hi", max_output_tokens=4, temperature=0
    )
    assert instructed.output_text
    assert instructed.instructions == pirate
    assert instructed.usage.input_tokens > short.usage.input_tokens + 10


def test_responses_stream(oai):
    deltas: list[str] = []
    types: list[str] = []
    sequence: list[int] = []
    completed = None
    with oai.responses.create(
        model=MODEL, input="Tell me a story about a dragon.", max_output_tokens=12, temperature=0, stream=True
    ) as stream:
        for event in stream:
            types.append(event.type)
            sequence.append(event.sequence_number)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
            elif event.type == "response.completed":
                completed = event.response
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert sequence == list(range(len(sequence)))
    assert len(deltas) > 1
    assert completed is not None and completed.output_text == "".join(deltas)
    assert completed.usage.output_tokens > 0


def test_responses_stream_helper(oai):
    with oai.responses.stream(model=MODEL, input="Say hi", max_output_tokens=6, temperature=0) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.output_text == text and text


def test_responses_json_schema(oai):
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    response = oai.responses.create(
        model=MODEL,
        input="Is the sky blue? Answer in JSON.",
        max_output_tokens=30,
        temperature=0,
        text={"format": {"type": "json_schema", "name": "x", "schema": schema, "strict": True}},
    )
    assert json.loads(response.output_text)["answer"] in ("yes", "no")


def test_responses_unknown_model_is_not_found(oai):
    with pytest.raises(openai.NotFoundError) as err:
        oai.responses.create(model="no-such-model", input="hi", max_output_tokens=4)
    assert err.value.status_code == 404
    assert err.value.type == "not_found_error"


def test_responses_unsupported_state_is_bad_request(oai):
    with pytest.raises(openai.BadRequestError) as err:
        oai.responses.create(model=MODEL, input="hi", previous_response_id="resp_1")
    assert "previous_response_id is not supported" in err.value.message


def test_responses_raw_stream_framing(worker):
    body = {"model": MODEL, "input": "Say hi", "max_output_tokens": 4, "temperature": 0, "stream": True}
    with httpx.Client(base_url=worker.url, timeout=120) as http:
        with http.stream("POST", "/v1/responses", json=body) as reply:
            assert reply.status_code == 200
            assert reply.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in reply.iter_lines() if line]
    events = [(lines[i], json.loads(lines[i + 1][len("data: ") :])) for i in range(0, len(lines), 2)]
    for head, data in events:
        assert head == f"event: {data['type']}"
    assert events[-1][1]["type"] == "response.completed"
