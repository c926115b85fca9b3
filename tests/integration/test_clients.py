"""The official clients work against Corral unchanged: ollama-python, openai-python, langchain-ollama.

Each test is what a user of that client writes, and checks the typed fields they read. Generations
are a few tokens at temperature 0 so the module stays fast on a small CPU.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone

import httpx
import ollama
import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_ollama import ChatOllama, OllamaEmbeddings, OllamaLLM
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel, Field

from tests.support.model import MODEL_NAME
from tests.support.registries import RegistryServer, seed_model
from tests.support.servers import start_server

MODEL = MODEL_NAME
SHORT = {"num_predict": 8, "temperature": 0}
PROMPT = "Tell me a long story about a dragon."


@pytest.fixture
def client(worker) -> Iterator[ollama.Client]:
    with ollama.Client(host=worker.url, timeout=120) as c:
        yield c


@pytest.fixture
def oai(worker) -> Iterator[OpenAI]:
    with OpenAI(base_url=worker.url + "/v1", api_key="ollama", timeout=120, max_retries=0) as c:
        yield c


@pytest.fixture
def scratch_names(worker) -> Iterator[list[str]]:
    """Names a test creates on the shared worker; deleted afterwards whatever happened,
    because other modules assert that /api/tags lists only the test model."""
    names: list[str] = []
    yield names
    with httpx.Client(base_url=worker.url, timeout=60) as http:
        for name in names:
            r = http.request("DELETE", "/api/delete", json={"model": name})
            assert r.status_code in (200, 404), r.text


def norm(vector) -> float:
    return math.sqrt(sum(v * v for v in vector))


# -- ollama-python ---------------------------------------------------------------------------


def test_ollama_generate_returns_typed_response(client):
    response = client.generate(model=MODEL, prompt=PROMPT, options=SHORT)
    assert isinstance(response, ollama.GenerateResponse)
    assert isinstance(response.response, str) and response.response.strip()
    assert response["response"] == response.response  # dict-style access still works
    assert response.model == MODEL
    assert response.done is True and response.done_reason == "length"
    assert response.eval_count == 8
    assert response.prompt_eval_count > 0
    assert response.total_duration > 0 and response.eval_duration > 0
    assert response.context and all(isinstance(t, int) for t in response.context)
    created = datetime.fromisoformat(response.created_at.replace("Z", "+00:00"))
    assert abs((datetime.now(timezone.utc) - created).total_seconds()) < 300


def test_ollama_generate_stream_pieces_add_up_to_the_whole_reply(client):
    whole = client.generate(model=MODEL, prompt=PROMPT, options=SHORT)
    chunks = list(client.generate(model=MODEL, prompt=PROMPT, options=SHORT, stream=True))
    assert all(isinstance(c, ollama.GenerateResponse) for c in chunks)
    assert len(chunks) >= 2
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    final = chunks[-1]
    assert final.done_reason == "length" and final.eval_count == 8
    # temperature 0 is greedy: streaming must not change what the model says
    assert "".join(c.response for c in chunks) == whole.response


def test_ollama_chat_message_fields(client):
    response = client.chat(
        model=MODEL,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": PROMPT}],
        options=SHORT,
    )
    assert isinstance(response, ollama.ChatResponse)
    assert response.message.role == "assistant"
    assert isinstance(response.message.content, str) and response.message.content.strip()
    assert response["message"]["content"] == response.message.content
    assert response.done is True and response.done_reason == "length"
    assert response.eval_count == 8 and response.prompt_eval_count > 0


def test_ollama_chat_stream(client):
    chunks = list(client.chat(model=MODEL, messages=[{"role": "user", "content": PROMPT}], options=SHORT, stream=True))
    assert len(chunks) >= 2
    assert all(c.message.role == "assistant" for c in chunks)
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert "".join(c.message.content for c in chunks).strip()
    assert chunks[-1].done_reason == "length" and chunks[-1].eval_count == 8


def test_ollama_async_client_chat_and_stream(worker):
    async def main() -> tuple[ollama.ChatResponse, list[ollama.ChatResponse]]:
        client = ollama.AsyncClient(host=worker.url, timeout=120)
        messages = [{"role": "user", "content": PROMPT}]
        whole = await client.chat(model=MODEL, messages=messages, options=SHORT)
        parts = [part async for part in await client.chat(model=MODEL, messages=messages, options=SHORT, stream=True)]
        return whole, parts

    whole, parts = asyncio.run(main())
    assert whole.message.role == "assistant" and whole.message.content.strip()
    assert whole.done_reason == "length" and whole.eval_count == 8
    assert len(parts) >= 2 and parts[-1].done is True and parts[-1].eval_count == 8
    assert "".join(p.message.content for p in parts) == whole.message.content


def test_ollama_async_client_generate_stream(worker):
    async def main() -> list[ollama.GenerateResponse]:
        client = ollama.AsyncClient(host=worker.url, timeout=120)
        return [c async for c in await client.generate(model=MODEL, prompt=PROMPT, options=SHORT, stream=True)]

    chunks = asyncio.run(main())
    assert chunks[-1].done is True and chunks[-1].eval_count == 8
    assert "".join(c.response for c in chunks).strip()


def test_ollama_embed_string_and_list(client):
    one = client.embed(model=MODEL, input="The sky is blue.")
    assert isinstance(one, ollama.EmbedResponse)
    assert len(one.embeddings) == 1
    dims = len(one.embeddings[0])
    assert dims > 0
    assert abs(norm(one.embeddings[0]) - 1) < 1e-3  # /api/embed vectors are L2-normalised

    many = client.embed(model=MODEL, input=["The sky is blue.", "Bananas are yellow."])
    assert len(many.embeddings) == 2
    assert all(len(v) == dims for v in many.embeddings)
    assert all(abs(norm(v) - 1) < 1e-3 for v in many.embeddings)
    # the same text embeds the same whether alone or in a batch; different texts differ
    assert max(abs(a - b) for a, b in zip(many.embeddings[0], one.embeddings[0])) < 1e-4
    assert many.embeddings[0] != many.embeddings[1]
    assert many.prompt_eval_count > 0


def test_ollama_embed_dimensions_truncates_and_renormalises(client):
    full = client.embed(model=MODEL, input="The sky is blue.").embeddings[0]
    short = client.embed(model=MODEL, input="The sky is blue.", dimensions=8).embeddings[0]
    assert len(short) == 8
    assert abs(norm(short) - 1) < 1e-3
    head = norm(full[:8])
    assert all(abs(s - f / head) < 1e-4 for s, f in zip(short, full[:8]))


def test_ollama_chat_structured_output_from_pydantic_schema(client):
    class Pet(BaseModel):
        name: str = Field(max_length=20)
        age: int = Field(ge=0, le=30)

    response = client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a pet as JSON with a name and an age."}],
        format=Pet.model_json_schema(),
        options={"temperature": 0, "num_predict": 100},
    )
    assert response.done_reason == "stop"
    Pet.model_validate_json(response.message.content)


def test_ollama_embeddings_legacy(client):
    legacy = client.embeddings(model=MODEL, prompt="The sky is blue.")
    assert isinstance(legacy, ollama.EmbeddingsResponse)
    assert len(legacy.embedding) == len(client.embed(model=MODEL, input="x").embeddings[0])
    assert all(isinstance(v, float) for v in legacy.embedding)
    assert any(v != 0 for v in legacy.embedding)


def test_ollama_list(client):
    listed = client.list()
    assert isinstance(listed, ollama.ListResponse)
    entry = next(m for m in listed.models if m.model == MODEL)
    assert entry.size > 0
    assert isinstance(entry.modified_at, datetime)
    assert len(entry.digest) == 64 and int(entry.digest, 16) >= 0
    assert entry.details.format == "gguf"
    assert entry.details.family == "llama"
    assert entry.details.quantization_level == "Q4_1"
    assert entry.details.parameter_size


def test_ollama_show(client):
    shown = client.show(MODEL)
    assert isinstance(shown, ollama.ShowResponse)
    assert shown.modelfile.startswith('# Modelfile generated by "ollama show"')
    assert "FROM " in shown.modelfile
    assert shown.template
    assert shown.details.quantization_level == "Q4_1"
    assert shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] > 0
    assert "completion" in shown.capabilities
    assert isinstance(shown.modified_at, datetime)


def test_ollama_ps_lists_loaded_model(client):
    client.generate(model=MODEL, prompt=PROMPT, options=SHORT)
    running = client.ps()
    assert isinstance(running, ollama.ProcessResponse)
    entry = next(m for m in running.models if m.model == MODEL)
    assert entry.name == MODEL
    assert entry.size > 0
    assert entry.expires_at > datetime.now(timezone.utc)
    assert entry.context_length > 0
    assert entry.size_vram == 0  # CPU only
    assert entry.details.family == "llama"


def test_ollama_copy_then_delete(client, scratch_names):
    scratch_names.append("clients-copy")
    assert client.copy(MODEL, "clients-copy").status == "success"
    models = {m.model: m for m in client.list().models}
    assert "clients-copy:latest" in models
    # a copy is the same manifest under another name
    assert models["clients-copy:latest"].digest == models[MODEL].digest
    assert client.generate(model="clients-copy", prompt=PROMPT, options=SHORT).eval_count == 8

    assert client.delete("clients-copy").status == "success"
    assert "clients-copy:latest" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("clients-copy")
    assert err.value.status_code == 404
    assert err.value.error == "model 'clients-copy' not found"


def test_ollama_create_from_with_system_and_parameters(client, scratch_names):
    scratch_names.append("clients-terse")
    done = client.create(
        model="clients-terse",
        from_=MODEL,
        system="You answer in one word.",
        parameters={"num_predict": 5, "temperature": 0},
    )
    assert isinstance(done, ollama.ProgressResponse) and done.status == "success"

    shown = client.show("clients-terse")
    assert "SYSTEM You answer in one word." in shown.modelfile.splitlines()
    params = dict(line.split(None, 1) for line in shown.parameters.splitlines())
    assert params["num_predict"] == "5"
    assert params["temperature"] == "0"
    # the model's parameters apply when the request sets none
    reply = client.generate(model="clients-terse", prompt=PROMPT)
    assert reply.eval_count == 5 and reply.done_reason == "length"


def test_ollama_create_streams_progress(client, scratch_names):
    scratch_names.append("clients-streamed")
    statuses = [p.status for p in client.create(model="clients-streamed", from_=MODEL, stream=True)]
    assert statuses[-2:] == ["writing manifest", "success"]
    assert "clients-streamed:latest" in {m.model for m in client.list().models}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.generate(model="no-such-model", prompt="hi"), "model 'no-such-model' not found"),
        (lambda c: c.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}]),
         "model 'no-such-model' not found"),
        (lambda c: list(c.generate(model="no-such-model", prompt="hi", stream=True)),
         "model 'no-such-model' not found"),
        (lambda c: c.embed(model="no-such-model", input="hi"),
         'model "no-such-model" not found, try pulling it first'),
        (lambda c: c.show("no-such-model"), "model 'no-such-model' not found"),
    ],
    ids=["generate", "chat", "generate-stream", "embed", "show"],
)
def test_ollama_unknown_model_raises_response_error_404(client, call, message):
    with pytest.raises(ollama.ResponseError) as err:
        call(client)
    assert err.value.status_code == 404
    assert err.value.error == message
    assert str(err.value) == f"{message} (status code: 404)"


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory, gguf_path, serving) -> Iterator[ollama.Client]:
    """A server whose default registry (registry.ollama.ai, unreachable here) is a local mirror
    holding the test model, so ``pull``/``push`` run as users write them."""
    tmp = tmp_path_factory.mktemp("mirrored")
    with RegistryServer(tmp / "registry") as library:
        seed_model(library, "library/smollm2", "135m", gguf=gguf_path)
        proc = start_server(serving, tmp, {"CORRAL_REGISTRY_MIRRORS": f"registry.ollama.ai={library.url}",
                                           "CORRAL_NUM_THREADS": "1"})
        try:
            with ollama.Client(host=proc.url, timeout=120) as c:
                yield c
        finally:
            proc.stop()


def test_ollama_pull(mirrored):
    assert mirrored.pull(MODEL).status == "success"
    statuses = [part.status for part in mirrored.pull(MODEL, stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert [m.model for m in mirrored.list().models] == [MODEL]


def test_ollama_push(mirrored):
    mirrored.pull(MODEL)
    mirrored.copy(MODEL, "smollm2:pushed")
    parts = list(mirrored.push("smollm2:pushed", stream=True))
    assert parts[0].status == "retrieving manifest" and parts[-1].status == "success"
    # Pull it back under that name after deleting it here: it round-tripped through the registry.
    mirrored.delete("smollm2:pushed")
    assert mirrored.pull("smollm2:pushed").status == "success"


# -- openai-python ------------------------------------------------------------------------------

CHAT = [{"role": "user", "content": PROMPT}]


def test_openai_chat_completion(oai):
    response = oai.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=0)
    assert response.object == "chat.completion"
    assert response.id.startswith("chatcmpl-")
    assert response.model == MODEL
    assert response.system_fingerprint == "fp_ollama"
    choice = response.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    # max_tokens cuts the reply short, and says so
    assert choice.finish_reason == "length"
    assert response.usage.completion_tokens == 8
    assert response.usage.prompt_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + 8


def test_openai_chat_stream_deltas(oai):
    whole = oai.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=0)
    chunks = list(oai.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=0, stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == whole.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "length" and all(r is None for r in reasons[:-1])
    finish = chunks[-1].choices[0].delta
    assert finish.content is None and finish.role is None  # the finish chunk's delta is empty
    assert all(c.usage is None for c in chunks)  # usage only when asked for


def test_openai_chat_stream_include_usage(oai):
    chunks = list(
        oai.chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=8, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens == 8
    assert last.usage.prompt_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + 8
    assert chunks[-2].choices[0].finish_reason == "length"


def test_openai_async_chat_and_stream(worker):
    async def main():
        async with AsyncOpenAI(base_url=worker.url + "/v1", api_key="ollama", max_retries=0) as aoai:
            whole = await aoai.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=8, temperature=0)
            stream = await aoai.chat.completions.create(
                model=MODEL, messages=CHAT, max_tokens=8, temperature=0, stream=True
            )
            chunks = [chunk async for chunk in stream]
            return whole, chunks

    whole, chunks = asyncio.run(main())
    assert whole.choices[0].message.content.strip()
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content


def test_openai_completion(oai):
    response = oai.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
    assert response.object == "text_completion"
    assert response.id.startswith("cmpl-")
    assert response.model == MODEL
    assert response.choices[0].text.strip()
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 6


def test_openai_completion_stream(oai):
    whole = oai.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
    chunks = list(
        oai.completions.create(
            model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )
    text_chunks = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in text_chunks) == whole.choices[0].text
    assert text_chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


def test_openai_embeddings_float_and_base64_agree(oai):
    texts = ["The sky is blue.", "Bananas are yellow."]
    floats = oai.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert floats.object == "list" and floats.model == MODEL
    assert [d.index for d in floats.data] == [0, 1]
    assert all(d.object == "embedding" for d in floats.data)
    dims = len(floats.data[0].embedding)
    assert dims > 0 and len(floats.data[1].embedding) == dims
    assert floats.usage.prompt_tokens > 0 and floats.usage.total_tokens == floats.usage.prompt_tokens

    raw = oai.embeddings.create(model=MODEL, input=texts, encoding_format="base64")
    for encoded, expected in zip(raw.data, floats.data):
        assert isinstance(encoded.embedding, str)
        data = base64.b64decode(encoded.embedding)
        assert len(data) == 4 * dims  # little-endian float32
        decoded = struct.unpack(f"<{dims}f", data)
        assert max(abs(a - b) for a, b in zip(decoded, expected.embedding)) < 1e-6

    short = oai.embeddings.create(model=MODEL, input=texts[0], encoding_format="float", dimensions=8)
    assert len(short.data[0].embedding) == 8

    # the SDK's default asks for base64 and decodes it itself
    default = oai.embeddings.create(model=MODEL, input="The sky is blue.")
    assert max(abs(a - b) for a, b in zip(default.data[0].embedding, floats.data[0].embedding)) < 1e-6


def test_openai_models_list_and_retrieve(oai):
    models = {m.id: m for m in oai.models.list()}
    assert MODEL in models
    entry = models[MODEL]
    assert entry.object == "model" and entry.owned_by == "library" and entry.created > 0
    retrieved = oai.models.retrieve(MODEL)
    assert retrieved.id == MODEL and retrieved.created == entry.created
    with pytest.raises(openai.NotFoundError) as err:
        oai.models.retrieve("no-such-model")
    assert err.value.type == "not_found_error"


def test_openai_json_object_response_format(oai):
    response = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a person as a JSON object with a name and an age."}],
        response_format={"type": "json_object"},
        max_tokens=150,
        temperature=0,
    )
    assert response.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(response.choices[0].message.content), dict)


def test_openai_json_schema_response_format(oai):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    response = oai.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a person as JSON with a name and an age."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
        max_tokens=150,
        temperature=0,
    )
    assert response.choices[0].finish_reason == "stop"
    person = json.loads(response.choices[0].message.content)
    assert set(person) == {"name", "age"}
    assert isinstance(person["name"], str) and isinstance(person["age"], int)


def test_openai_stop_sequence_ends_the_reply_before_it(oai):
    messages = [{"role": "user", "content": "Write a sentence about the sea."}]
    free = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0)
    text = free.choices[0].message.content
    words = text.split()
    assert len(words) >= 4, text
    stop = words[2]
    stopped = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(stop)]


def test_openai_seed_makes_sampling_repeatable(oai):
    def sample() -> str:
        r = oai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=12, seed=1234,
            temperature=1.0,
        )
        return r.choices[0].message.content

    assert sample() == sample()


def test_openai_unknown_model_is_not_found_error(oai):
    with pytest.raises(openai.NotFoundError) as err:
        oai.chat.completions.create(model="no-such-model", messages=CHAT, max_tokens=4)
    assert err.value.status_code == 404
    assert err.value.response.json() == {
        "error": {"message": "model 'no-such-model' not found", "type": "not_found_error", "param": None, "code": None}
    }
    assert err.value.type == "not_found_error"


def test_openai_empty_messages_is_bad_request(oai):
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model=MODEL, messages=[])
    assert err.value.status_code == 400
    assert err.value.body["message"] == "[] is too short - 'messages'"
    assert err.value.type == "invalid_request_error"
    assert "[] is too short - 'messages'" in str(err.value)


# -- langchain-ollama ------------------------------------------------------------------------------


@pytest.fixture
def chat_model(worker) -> ChatOllama:
    return ChatOllama(model=MODEL, base_url=worker.url, temperature=0, num_predict=20)


def test_langchain_chat_invoke(chat_model):
    reply = chat_model.invoke("Name three colours.")
    assert isinstance(reply, AIMessage)
    assert isinstance(reply.content, str) and reply.content.strip()
    assert reply.response_metadata["model"] == MODEL
    assert reply.response_metadata["done_reason"] in ("stop", "length")
    assert 0 < reply.usage_metadata["output_tokens"] <= 20
    assert reply.usage_metadata["input_tokens"] > 0


def test_langchain_chat_stream(chat_model):
    whole = chat_model.invoke("Name three colours.")
    chunks = list(chat_model.stream("Name three colours."))
    assert len(chunks) >= 2 and all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(c.content for c in chunks) == whole.content


def test_langchain_embeddings(worker):
    embeddings = OllamaEmbeddings(model=MODEL, base_url=worker.url)
    query = embeddings.embed_query("What colour is the sky?")
    docs = embeddings.embed_documents(["The sky is blue.", "Bananas are yellow."])
    assert len(query) > 0 and all(isinstance(v, float) for v in query)
    assert len(docs) == 2 and all(len(d) == len(query) for d in docs)


def test_langchain_llm_invoke(worker):
    llm = OllamaLLM(model=MODEL, base_url=worker.url, temperature=0, num_predict=20)
    text = llm.invoke("The capital of France is")
    assert isinstance(text, str) and text.strip()


def test_openai_chat_logprobs(oai):
    response = oai.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)
    assert "".join(t.token for t in content) == response.choices[0].message.content


# A thinking model whose prompt grows with the level asked (.ThinkLevel): how many prompt tokens
# a client's request took tells which level reached the template.
LEVELS_TEMPLATE = (
    "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    "{{ if .Think }}{{ if eq .ThinkLevel \"high\" \"max\" }}Think very hard, step by step, about every detail. {{ end }}"
    "{{ if eq .ThinkLevel \"low\" }}Briefly. {{ end }}<think>\n{{ end }}"
)


def test_think_levels_from_the_ollama_client_and_reasoning_effort_from_openai(client, oai, worker, scratch_names):
    name = f"levels-{uuid.uuid4().hex[:8]}:latest"
    scratch_names.append(name)
    client.create(model=name, from_=MODEL, template=LEVELS_TEMPLATE)
    ask = [{"role": "user", "content": "Why is the sky blue?"}]

    def native_prompt_tokens(think: object) -> int:
        r = httpx.post(worker.url + "/api/chat", timeout=120, json={
            "model": name, "messages": ask, "think": think, "stream": False, "options": SHORT})
        assert r.status_code == 200, r.text
        return r.json()["prompt_eval_count"]

    counts = {level: native_prompt_tokens(level) for level in ("low", "medium", "high")}
    assert counts["low"] > counts["medium"] and counts["high"] > counts["low"]  # three different prompts
    for level in ("low", "medium", "high"):
        answer = client.chat(model=name, messages=ask, think=level, options=SHORT)
        assert answer.prompt_eval_count == counts[level], level
        assert answer.message.thinking  # the template opened <think>: the reply is reasoning
        effort = oai.chat.completions.create(model=name, messages=ask, max_tokens=8, temperature=0,
                                             reasoning_effort=level)
        assert effort.usage.prompt_tokens == counts[level], level
    assert client.chat(model=name, messages=ask, think=True, options=SHORT).prompt_eval_count == counts["medium"]
