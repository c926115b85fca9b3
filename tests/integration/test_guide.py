"""Every code sample in the user guide (/work/shared/ollama-guide.txt) works against Corral as written.

The guide talks to ``localhost:11434`` and uses the models ``llama3.2`` and ``nomic-embed-text``.
This module runs its own server (a worker or a cluster, as the session's) and creates both names
from the test model, so the samples keep their literal model names; only the endpoint changes:

- curl samples are sent with httpx, with the guide's JSON text byte for byte and the headers curl
  would send (``-d`` without ``-H`` means ``application/x-www-form-urlencoded``).
- The native ``ollama`` samples call the module-level functions (``ollama.generate(...)``). Those are
  bound to a default ``Client`` built when ``ollama`` is imported, which reads ``OLLAMA_HOST`` at
  that moment, so setting the variable later does nothing. The ``guide_env`` fixture sets
  ``OLLAMA_HOST`` and then reloads the ``ollama`` package, which is exactly what a user gets by
  exporting ``OLLAMA_HOST`` before starting Python; it reloads again afterwards to restore the
  default. ``ollama.AsyncClient()`` and langchain-ollama read the variable when constructed.
- OpenAI samples and the ``requests`` sample get the server's URL in place of ``localhost:11434``.

``llama3.2`` is created with ``PARAMETER num_predict 24`` so that samples which set no length
limit still finish quickly on a small CPU; their request bodies are unchanged.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import httpx
import ollama
import pytest

from tests.support.registries import RegistryServer, seed_model
from tests.support.servers import Server, import_model, start_server

GUIDE_MODELS = ("llama3.2", "nomic-embed-text")
REPLY_LIMIT = 24  # num_predict baked into llama3.2, so unbounded samples stay short


def create_from(url: str, name: str, **extra: object) -> None:
    r = httpx.post(f"{url}/api/create", json={"model": name, "from": "smollm2:135m", "stream": False, **extra},
                   timeout=120)
    assert r.status_code == 200 and r.json() == {"status": "success"}, r.text


def delete_model(url: str, name: str) -> None:
    r = httpx.request("DELETE", f"{url}/api/delete", json={"model": name}, timeout=60)
    assert r.status_code in (200, 404), r.text


def create_llama(url: str) -> None:
    create_from(url, "llama3.2", parameters={"num_predict": REPLY_LIMIT})


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, gguf_path: Path) -> Iterator[RegistryServer]:
    """A local stand-in for registry.ollama.ai (unreachable here) holding the guide's pulls."""
    with RegistryServer(tmp_path_factory.mktemp("library")) as server:
        seed_model(server, "library/qwen3", "7b", gguf=gguf_path)
        yield server


@pytest.fixture(scope="module")
def guide(
    tmp_path_factory: pytest.TempPathFactory, gguf_path: Path, gguf_digest: str, library, serving: str
) -> Iterator[Server]:
    """A server of our own, with the guide's model names made from the test model; pulls from
    the default registry go to the local stand-in through the mirror setting."""
    proc = start_server(
        serving, tmp_path_factory.mktemp("guide"), {"CORRAL_REGISTRY_MIRRORS": f"registry.ollama.ai={library.url}"}
    )
    try:
        import_model(proc.url, gguf_path, gguf_digest)
        create_llama(proc.url)
        create_from(proc.url, "nomic-embed-text")
        yield proc
        for name in (*GUIDE_MODELS, "my-custom-llama", "my-devops-model", "qwen3:7b"):
            delete_model(proc.url, name)
    finally:
        proc.stop()


@pytest.fixture
def curl(guide) -> Iterator[httpx.Client]:
    """What ``curl`` sends: no JSON content type unless the sample passes ``-H``."""
    with httpx.Client(base_url=guide.url, timeout=120, headers={"User-Agent": "curl/8.5.0", "Accept": "*/*"}) as c:
        yield c


FORM = {"Content-Type": "application/x-www-form-urlencoded"}  # curl's default for -d
JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.fixture
def guide_env(guide, monkeypatch) -> Iterator[str]:
    """OLLAMA_HOST points at the server, as if exported before Python started; see the module doc."""
    monkeypatch.setenv("OLLAMA_HOST", guide.url)
    importlib.reload(ollama)
    yield guide.url
    monkeypatch.undo()
    importlib.reload(ollama)


# -- Installation -------------------------------------------------------------------------------


def test_verify_server_is_running(curl):
    # curl http://localhost:11434
    r = curl.get("/")
    assert r.status_code == 200
    assert r.text == "Ollama is running"


def test_pull_a_model(curl):
    # ollama pull llama3.2 / curl http://localhost:11434/api/pull -d '{"model": "qwen3:7b", "stream": false}'
    r = curl.post("/api/pull", content='{"model": "qwen3:7b", "stream": false}', headers=FORM)
    assert r.status_code == 200 and r.json() == {"status": "success"}
    assert "qwen3:7b" in [m["name"] for m in curl.get("/api/tags").json()["models"]]
    r = curl.post("/api/generate", json={"model": "qwen3:7b", "prompt": "Hi", "stream": False,
                                         "options": {"num_predict": 4}})
    assert r.status_code == 200 and r.json()["response"]


# -- The native REST API ---------------------------------------------------------------------------

GENERATE_BODY = """{
    "model": "llama3.2",
    "prompt": "Explain Docker multi-stage builds in one paragraph.",
    "stream": false,
    "options": {
      "temperature": 0.7,
      "top_p": 0.9,
      "num_ctx": 4096
    }
  }"""


def test_curl_generate(curl):
    r = curl.post("/api/generate", content=GENERATE_BODY, headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["model"] == "llama3.2"
    assert isinstance(body["response"], str) and body["response"].strip()
    assert body["done"] is True and body["done_reason"] in ("stop", "length")
    assert 0 < body["eval_count"] <= REPLY_LIMIT


def test_generate_streams_by_default(curl):
    # "Set "stream": true (or omit it) and the response comes as newline-delimited JSON objects,
    # each containing a response field, ending with a final object where "done": true."
    body = json.loads(GENERATE_BODY)
    del body["stream"]
    with curl.stream("POST", "/api/generate", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert len(lines) >= 2
    assert all("response" in line for line in lines)
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    # "The final chunk has done: true and includes performance metadata"
    for key in ("eval_count", "eval_duration", "prompt_eval_count", "total_duration"):
        assert isinstance(lines[-1][key], int) and lines[-1][key] > 0, key


def test_curl_chat(curl):
    r = curl.post(
        "/api/chat",
        headers=JSON_HEADERS,
        content="""{
    "model": "llama3.2",
    "messages": [
      {"role": "system", "content": "You are a senior Python developer."},
      {"role": "user", "content": "What is the difference between __str__ and __repr__?"}
    ],
    "stream": false
  }""",
    )
    assert r.status_code == 200, r.text
    body = r.json()
    # "The response includes a message object with role: "assistant" and content."
    assert body["message"]["role"] == "assistant"
    assert isinstance(body["message"]["content"], str) and body["message"]["content"].strip()
    assert body["done"] is True


def test_curl_embed(curl):
    r = curl.post(
        "/api/embed",
        headers=JSON_HEADERS,
        content="""{
    "model": "nomic-embed-text",
    "input": "Ollama makes local LLM inference simple."
  }""",
    )
    assert r.status_code == 200, r.text
    embeddings = r.json()["embeddings"]
    assert len(embeddings) == 1 and len(embeddings[0]) > 0
    assert all(isinstance(v, float) for v in embeddings[0])


def test_curl_openai_chat_completions(curl):
    r = curl.post(
        "/v1/chat/completions",
        headers={**JSON_HEADERS, "Authorization": "Bearer ollama"},
        content="""{
    "model": "llama3.2",
    "messages": [{"role": "user", "content": "Write a Python hello world"}]
  }""",
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "llama3.2"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["message"]["content"].strip()


def test_openai_streaming_is_sse_ending_with_done(curl):
    # "streaming follows the SSE format with data: {"choices": [...]} lines ending with data: [DONE]"
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "Write a Python hello world"}],
            "stream": True}
    with curl.stream("POST", "/v1/chat/completions", json=body, headers={"Authorization": "Bearer ollama"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(e.startswith("data: ") for e in events)
    assert all("choices" in c for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks).strip()


# -- Native ollama library -------------------------------------------------------------------------


def test_native_library_samples(guide_env, capsys):
    import ollama

    # Synchronous generate
    response = ollama.generate(model='llama3.2', prompt='What is GGUF format?')
    print(response['response'])
    assert isinstance(response['response'], str) and response['response'].strip()

    # Chat with history
    messages = [
        {'role': 'system', 'content': 'You are a helpful coding assistant.'},
        {'role': 'user', 'content': 'Explain Python generators.'}
    ]
    response = ollama.chat(model='llama3.2', messages=messages)
    print(response['message']['content'])
    assert response['message']['role'] == 'assistant' and response['message']['content'].strip()

    # Streaming
    pieces = []
    for chunk in ollama.generate(model='llama3.2', prompt='Count to 5.', stream=True):
        print(chunk['response'], end='', flush=True)
        pieces.append(chunk['response'])
    assert len(pieces) >= 2 and ''.join(pieces).strip()

    # Embeddings
    result = ollama.embed(model='nomic-embed-text', input='Hello world')
    vector = result['embeddings'][0]
    assert len(vector) > 0 and all(isinstance(v, float) for v in vector)

    assert capsys.readouterr().out.strip()


# -- OpenAI SDK pointed at Ollama -----------------------------------------------------------------


def test_openai_sdk_samples(guide):
    from openai import OpenAI

    client = OpenAI(
        base_url=f'{guide.url}/v1',
        api_key='ollama'  # any string works
    )

    response = client.chat.completions.create(
        model='llama3.2',
        messages=[{'role': 'user', 'content': 'What is RAG?'}]
    )
    print(response.choices[0].message.content)
    assert response.choices[0].message.content.strip()

    # Embeddings
    embedding = client.embeddings.create(
        model='nomic-embed-text',
        input='Document text to embed'
    )
    vector = embedding.data[0].embedding
    assert len(vector) > 0 and all(isinstance(v, float) for v in vector)


def test_openai_env_based_switching(guide, monkeypatch):
    monkeypatch.setenv("USE_LOCAL_LLM", "true")
    from openai import OpenAI

    if os.getenv('USE_LOCAL_LLM', 'false').lower() == 'true':
        client = OpenAI(base_url=f'{guide.url}/v1', api_key='ollama')
        model = 'llama3.2'
    else:  # pragma: no cover - the cloud branch is not ours to test
        client = OpenAI(api_key=os.environ['OPENAI_API_KEY'])
        model = 'gpt-4o-mini'

    reply = client.chat.completions.create(model=model, messages=[{'role': 'user', 'content': 'Hi'}])
    assert reply.model == 'llama3.2' and reply.choices[0].message.content.strip()


# -- Streaming, multi-turn, async ------------------------------------------------------------------


def test_stream_response_prints_tokens_and_speed(guide_env, capsys):
    import ollama

    def stream_response(prompt: str, model: str = 'llama3.2'):
        for chunk in ollama.generate(model=model, prompt=prompt, stream=True):
            print(chunk['response'], end='', flush=True)
            if chunk.get('done'):
                print()  # newline at end
                print(f"Tokens: {chunk.get('eval_count', 0)}, "
                      f"Speed: {chunk.get('eval_count', 0) / chunk.get('eval_duration', 1) * 1e9:.1f} t/s")

    stream_response("Explain async/await in Python in 3 sentences.")

    out = capsys.readouterr().out
    stats = re.search(r"Tokens: (\d+), Speed: ([\d.]+) t/s\n\Z", out)
    assert stats, out
    tokens, speed = int(stats.group(1)), float(stats.group(2))
    # Both come from the final chunk's eval_count and eval_duration; a missing field prints 0.
    assert 0 < tokens <= REPLY_LIMIT
    assert 0 < speed < 1e6
    assert out[: stats.start()].strip()


def test_chat_session_multi_turn(guide_env):
    import ollama

    @dataclass
    class ChatSession:
        model: str
        system_prompt: str = ""
        history: List[dict] = field(default_factory=list)

        def __post_init__(self):
            if self.system_prompt:
                self.history.append({'role': 'system', 'content': self.system_prompt})

        def send(self, user_message: str) -> str:
            self.history.append({'role': 'user', 'content': user_message})
            response = ollama.chat(model=self.model, messages=self.history)
            assistant_msg = response['message']['content']
            self.history.append({'role': 'assistant', 'content': assistant_msg})
            return assistant_msg

    session = ChatSession(model='llama3.2', system_prompt='You are a senior Go developer.')
    first = session.send("What is a goroutine?")
    second = session.send("How does that compare to Python threads?")

    assert isinstance(first, str) and first.strip()
    assert isinstance(second, str) and second.strip()
    assert [m['role'] for m in session.history] == ['system', 'user', 'assistant', 'user', 'assistant']


async def async_stream(prompt: str):
    async_client = ollama.AsyncClient()
    async for chunk in await async_client.generate(
        model='llama3.2', prompt=prompt, stream=True
    ):
        yield chunk['response']


def test_async_streaming(guide_env):
    async def collect() -> list[str]:
        return [piece async for piece in async_stream("Tell me about Go channels.")]

    pieces = asyncio.run(collect())
    assert len(pieces) >= 2
    assert "".join(pieces).strip()


def test_async_streaming_fastapi_integration(guide_env):
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from fastapi.testclient import TestClient

    app = FastAPI()

    @app.get("/generate")
    async def generate(prompt: str):
        return StreamingResponse(
            async_stream(prompt),
            media_type="text/event-stream"
        )

    with TestClient(app) as client:
        r = client.get("/generate", params={"prompt": "Tell me about Go channels."})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.strip()


# -- Model management ---------------------------------------------------------------------------


def test_curl_tags(curl):
    # curl http://localhost:11434/api/tags
    r = curl.get("/api/tags")
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    assert {"llama3.2:latest", "nomic-embed-text:latest"} <= set(models)
    # "Returns an array of model objects with name, size, digest, and modified_at fields."
    for m in models.values():
        assert m["size"] > 0 and len(m["digest"]) == 64 and m["modified_at"]


def test_list_models_with_requests(guide, capsys):
    import requests

    def list_models():
        resp = requests.get(f'{guide.url}/api/tags')
        models = resp.json()['models']
        for m in models:
            size_gb = m['size'] / (1024**3)
            print(f"{m['name']:<30} {size_gb:.1f}GB")

    list_models()

    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert {"llama3.2:latest", "nomic-embed-text:latest", "smollm2:135m"} <= set(names)
    assert all(re.fullmatch(r"\S+\s+\d+\.\dGB", line) for line in lines), lines


def test_curl_show(curl):
    # curl http://localhost:11434/api/show -d '{"model": "llama3.2"}'
    r = curl.post("/api/show", content='{"model": "llama3.2"}', headers=FORM)
    assert r.status_code == 200, r.text
    body = r.json()
    # "Returns the full Modelfile, parameters, template, and model metadata including context
    # length, quantization type, and parameter count."
    assert body["modelfile"].startswith('# Modelfile generated by "ollama show"')
    assert "\nFROM " in body["modelfile"]
    assert f"PARAMETER num_predict {REPLY_LIMIT}" in body["modelfile"]
    assert re.fullmatch(rf"num_predict\s+{REPLY_LIMIT}", body["parameters"].strip())
    assert body["template"]
    assert body["details"]["quantization_level"] == "Q4_1"
    assert body["model_info"]["llama.context_length"] > 0
    assert body["model_info"]["general.parameter_count"] > 0


def test_curl_copy(curl, guide):
    # curl http://localhost:11434/api/copy -d '{"source": "llama3.2", "destination": "my-custom-llama"}'
    try:
        r = curl.post("/api/copy", content='{"source": "llama3.2", "destination": "my-custom-llama"}', headers=FORM)
        assert r.status_code == 200, r.text
        assert r.content == b""
        names = {m["name"] for m in curl.get("/api/tags").json()["models"]}
        assert "my-custom-llama:latest" in names
        reply = curl.post("/api/generate", json={"model": "my-custom-llama", "prompt": "Hi", "stream": False})
        assert reply.status_code == 200 and reply.json()["eval_count"] <= REPLY_LIMIT  # parameters come along
    finally:
        delete_model(guide.url, "my-custom-llama")


def test_curl_delete(curl, guide):
    # curl -X DELETE http://localhost:11434/api/delete -d '{"model": "llama3.2"}'
    try:
        r = curl.request("DELETE", "/api/delete", content='{"model": "llama3.2"}', headers=FORM)
        assert r.status_code == 200, r.text
        assert r.content == b""
        names = {m["name"] for m in curl.get("/api/tags").json()["models"]}
        assert "llama3.2:latest" not in names
        gone = curl.post("/api/generate", json={"model": "llama3.2", "prompt": "Hi"})
        assert gone.status_code == 404 and gone.json() == {"error": "model 'llama3.2' not found"}
    finally:
        create_llama(guide.url)


def test_custom_system_prompt_modelfile(curl, guide):
    # FROM llama3.2
    # SYSTEM "You are a senior DevOps engineer specializing in Kubernetes."
    # PARAMETER temperature 0.3
    # ollama create my-devops-model -f Modelfile  -- the CLI sends this request:
    system = "You are a senior DevOps engineer specializing in Kubernetes."
    try:
        r = curl.post("/api/create", json={"model": "my-devops-model", "from": "llama3.2", "system": system,
                                           "parameters": {"temperature": 0.3}})
        assert r.status_code == 200, r.text
        statuses = [json.loads(line)["status"] for line in r.text.splitlines()]
        assert statuses[-1] == "success"
        # "The new model shows up in /api/tags and accepts API calls like any other model."
        names = {m["name"] for m in curl.get("/api/tags").json()["models"]}
        assert "my-devops-model:latest" in names
        shown = curl.post("/api/show", json={"model": "my-devops-model"}).json()
        assert shown["system"] == system
        assert re.search(r"^temperature\s+0\.3$", shown["parameters"], re.M), shown["parameters"]
        reply = curl.post("/api/chat", json={"model": "my-devops-model", "stream": False,
                                             "messages": [{"role": "user", "content": "What is a pod?"}]})
        assert reply.status_code == 200 and reply.json()["message"]["content"].strip()
    finally:
        delete_model(guide.url, "my-devops-model")


# -- RAG -------------------------------------------------------------------------------------------


def test_rag_pipeline_embedding_function_and_query(guide_env):
    import ollama

    # The guide subclasses chromadb's EmbeddingFunction; chromadb is not installed here, so the
    # class stands alone and a small in-memory collection stands in for chromadb's.
    class OllamaEmbeddingFunction:
        def __init__(self, model: str = 'nomic-embed-text'):
            self.model = model

        def __call__(self, input: list[str]) -> list[list[float]]:
            result = ollama.embed(model=self.model, input=input)
            return result['embeddings']

    class Collection:
        def __init__(self, embedding_function):
            self.embed = embedding_function
            self.docs: list[str] = []
            self.vectors: list[list[float]] = []

        def add(self, documents, ids):
            self.docs += documents
            self.vectors += self.embed(documents)

        def query(self, query_texts, n_results):
            (q,) = self.embed(query_texts)
            ranked = sorted(range(len(self.docs)), key=lambda i: -sum(a * b for a, b in zip(q, self.vectors[i])))
            return {'documents': [[self.docs[i] for i in ranked[:n_results]]]}

    embed_fn = OllamaEmbeddingFunction()
    docs = [
        "Ollama is an open-source local LLM runtime.",
        "RAG combines retrieval with generation for accurate answers.",
        "ChromaDB is an open-source vector database for embeddings.",
        "Python async/await enables non-blocking concurrent execution.",
    ]
    vectors = embed_fn(docs)
    assert isinstance(vectors, list) and len(vectors) == len(docs)
    assert len({len(v) for v in vectors}) == 1 and len(vectors[0]) > 0
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vectors)

    collection = Collection(embed_fn)
    collection.add(
        documents=docs,
        ids=[f"doc_{i}" for i in range(len(docs))]
    )

    def rag_query(question: str, n_results: int = 3) -> str:
        results = collection.query(query_texts=[question], n_results=n_results)
        context = "\n".join(results['documents'][0])

        prompt = f"""Answer the question based ONLY on the context below.

Context:
{context}

Question: {question}

Answer:"""

        response = ollama.generate(model='llama3.2', prompt=prompt)
        return response['response']

    answer = rag_query("What is Ollama?")
    assert isinstance(answer, str) and answer.strip()


# -- FAQ -------------------------------------------------------------------------------------------


def test_langchain_faq(guide_env):
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_ollama import ChatOllama, OllamaEmbeddings

    llm = ChatOllama(model="llama3.2", temperature=0)
    embeddings = OllamaEmbeddings(model="nomic-embed-text")

    # "This plugs directly into any LangChain chain, agent, or retriever."
    chain = ChatPromptTemplate.from_messages([("user", "Explain {topic} in one sentence.")]) | llm | StrOutputParser()
    answer = chain.invoke({"topic": "Kubernetes"})
    assert isinstance(answer, str) and answer.strip()

    vector = embeddings.embed_query("What is Kubernetes?")
    assert len(vector) > 0 and all(isinstance(v, float) for v in vector)
    assert len(embeddings.embed_documents(["a", "b"])) == 2
