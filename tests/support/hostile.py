"""Hostile requests for the fuzz suite (``tests/integration/test_hostile.py``): Hypothesis
strategies for every route's body, and the client that sends one and checks what comes back.

A request is ``Probe(method, path, body, stream)``. Bodies are built from each route's fields:
each field present or not, and each value either one the route takes or a hostile one (another
JSON type, a number past every range, odd Unicode, deep nesting). The JSON text is then written
in one of several hostile ways: as is, with ``NaN`` spliced in, with lone surrogate escapes,
with invalid UTF-8, cut short, form-encoded, nested 12,000 deep, with bytes after it.

``Wire`` sends probes over one keep-alive connection (``http.client``, which never retries, so a
reset is seen as one) and after each one asks ``GET /`` on the same connection: a server that
closed or reset it, or stopped answering, fails the check that follows.
"""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from hypothesis import strategies as st

REAL_MODEL = "smollm2:135m"
# Names a fuzzed request may create, copy to and delete: never the model the checks use.
SCRATCH = ["fuzz-a", "fuzz-b:latest", "fuzz/c:v1"]
HOSTILE_NAMES = [
    "", " ", "../../etc/passwd", "a" * 400, "x:y:z", "UPPER:Case", "\u0000", "\ud800", "名前:タグ",
    "hf.co/x/y", "127.0.0.1:1/x/y:z", "-rf", "model@sha256:" + "0" * 64, "%2e%2e%2f", "a/b/c/d/e",
]
# Registries nothing listens on, so a pull or push fails at once (no traffic leaves loopback).
PULL_NAMES = ["127.0.0.1:1/fuzz/model:latest", "localhost:1/x", *HOSTILE_NAMES[:8]]

# -- values ------------------------------------------------------------------------------------

BIG_INTS = [2**31, 2**31 - 1, -(2**31), 2**63, 2**63 - 1, -(2**63) - 1, 10**30, 10**300]
ODD_FLOATS = [0.0, -0.0, 1e-320, 1.5, -1.5, 3.5e38, 1e308, -1e308, 0.1]
ODD_STRINGS = [
    "", " ", "\u0000", "\u202e", "\ufeff", "\U0001f600" * 3, "a\u0301", "\x7f\x1b[31m", "{{", "{{ .Foo.Bar }}",
    "<|im_end|>", "\\", '"', "'", "null", "NaN", "5m", "-1", "\ud7ff", "x" * 5000,
]

small_text = st.text(max_size=40)
odd_text = st.one_of(small_text, st.sampled_from(ODD_STRINGS))
odd_number = st.one_of(st.integers(-5, 5), st.sampled_from(BIG_INTS), st.sampled_from(ODD_FLOATS),
                       st.floats(allow_nan=False, allow_infinity=False))
scalar = st.one_of(st.none(), st.booleans(), odd_number, odd_text)
# Any JSON value, a few levels deep.
anything = st.recursive(scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(small_text, inner, max_size=4)), max_leaves=12)


def either(good: st.SearchStrategy, bad: st.SearchStrategy = anything) -> st.SearchStrategy:
    """Inside a field (an option, a message's part): mostly a value of the right type, now and
    then anything at all. (Whole fields are swapped for anything by ``body_bytes``.)"""
    return st.one_of(*[good] * 9, bad)


model = st.one_of(*[st.just(REAL_MODEL)] * 6, st.sampled_from(HOSTILE_NAMES + SCRATCH))
keep_alive = either(st.one_of(st.sampled_from(["5m", "0", "-1", "", "10", "1d", "3000000h", "1.5h", "-5s"]),
                              st.sampled_from([0, 300, -1, 1e10, 2**63]), st.none()))
think = either(st.one_of(st.booleans(), st.sampled_from(["low", "medium", "high", "max", "extreme", ""])))
fmt = either(st.one_of(
    st.sampled_from(["json", "", "xml", None]),
    st.just({"type": "object", "properties": {"a": {"type": "string"}}}),
    st.just({"type": "array", "minItems": 10**9}),
    st.just({"type": "string", "maxLength": 100000}),
    st.just({"type": "string", "pattern": "^a{1,99999}$"}),
    st.just({"type": "object", "properties": 5}),
    st.just({"$ref": "#/definitions/x"}),
    st.just({"type": "object", "properties": {"a": {"$ref": "#"}}}),
))
template = either(st.sampled_from([
    "{{ .Prompt }}", "{{", "{{ .Foo.Bar }}", "{{ range 1000000000 }}x{{ end }}", "{{ template \"x\" }}",
    '{{ define "x" }}{{ template "x" . }}{{ end }}{{ template "x" . }}', "{{ printf \"%999999999d\" 1 }}",
    "(" * 5000, "{{" + "(" * 3000 + "1" + ")" * 3000 + "}}", "{{ len 5 }}", "{{ index .Messages 99 }}",
    "{{ slice .Prompt 5 1 }}", "{{ json . }}", "{{ call .X }}",
]))
image = either(st.sampled_from(["iVBORw0KGgo=", "not base64!", "aGVsbG8", "", "===="]))

# options: valid and hostile values for every key Ollama knows, and some it does not.
_INT_OPTION = either(st.one_of(st.integers(-3, 64), st.sampled_from(BIG_INTS)))
_FLOAT_OPTION = either(odd_number)
options = either(st.fixed_dictionaries({}, optional={
    "num_ctx": either(st.sampled_from([-5, 0, 4, 64, 2048, 10**12, 2**31])),
    "num_batch": _INT_OPTION, "num_thread": either(st.sampled_from([0, 1, 2, 100000, -1])),
    "num_gpu": _INT_OPTION, "main_gpu": _INT_OPTION, "use_mmap": either(st.booleans()),
    "num_keep": _INT_OPTION, "seed": _INT_OPTION, "num_predict": _INT_OPTION, "top_k": _INT_OPTION,
    "top_p": _FLOAT_OPTION, "min_p": _FLOAT_OPTION, "typical_p": _FLOAT_OPTION, "repeat_last_n": _INT_OPTION,
    "temperature": _FLOAT_OPTION, "repeat_penalty": _FLOAT_OPTION, "presence_penalty": _FLOAT_OPTION,
    "frequency_penalty": _FLOAT_OPTION, "stop": either(st.lists(odd_text, max_size=4)),
    "penalize_newline": anything, "made_up": anything,
}))
message = either(st.fixed_dictionaries({"role": either(st.sampled_from(["user", "assistant", "system", "tool", "ROOT"])),
                                        "content": either(odd_text)},
                                       optional={"images": either(st.lists(image, max_size=2)),
                                                 "tool_calls": either(st.lists(anything, max_size=2)),
                                                 "thinking": either(odd_text), "tool_name": anything}))
tool = either(st.just({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}))

COMMON = {"model": model, "stream": either(st.booleans()), "keep_alive": keep_alive, "options": options}
GENERATE = {**COMMON, "prompt": either(odd_text), "suffix": either(odd_text), "system": either(odd_text),
            "template": template, "context": either(st.lists(st.one_of(st.integers(0, 49151), odd_number), max_size=4)),
            "raw": either(st.booleans()), "images": either(st.lists(image, max_size=2)), "format": fmt, "think": think,
            "truncate": either(st.booleans()), "shift": either(st.booleans()), "logprobs": either(st.booleans()),
            "top_logprobs": either(st.integers(-2, 25)), "_debug_render_only": either(st.booleans())}
CHAT = {**COMMON, "messages": either(st.lists(message, max_size=3)), "tools": either(st.lists(tool, max_size=2)),
        "format": fmt, "think": think, "truncate": either(st.booleans()), "logprobs": either(st.booleans()),
        "top_logprobs": either(st.integers(-2, 25))}
EMBED = {**COMMON, "input": either(st.one_of(odd_text, st.lists(odd_text, max_size=3))),
         "truncate": either(st.booleans()), "dimensions": either(st.integers(-2, 1000))}
EMBEDDINGS = {**COMMON, "prompt": either(odd_text)}
SHOW = {"model": model, "name": model, "verbose": either(st.booleans()), "system": anything, "options": options}
scratch = either(st.sampled_from(SCRATCH + HOSTILE_NAMES))
CREATE = {"model": scratch, "from": either(st.sampled_from([REAL_MODEL, *SCRATCH, *HOSTILE_NAMES])),
          "system": either(odd_text), "template": template, "parameters": options,
          "messages": either(st.lists(message, max_size=2)), "files": either(st.dictionaries(odd_text, odd_text, max_size=2)),
          "adapters": either(st.dictionaries(odd_text, odd_text, max_size=2)), "license": anything,
          "quantize": either(st.sampled_from(["q4_0", "f16", "bogus"])), "modelfile": either(odd_text),
          "stream": either(st.booleans())}
COPY = {"source": either(st.sampled_from([REAL_MODEL, *SCRATCH, *HOSTILE_NAMES])), "destination": scratch}
DELETE = {"model": scratch, "name": scratch}
TRANSFER = {"model": either(st.sampled_from(PULL_NAMES)), "insecure": either(st.booleans()),
            "stream": either(st.booleans()), "username": anything, "password": anything}
OPENAI_MESSAGE = either(st.fixed_dictionaries({"role": either(st.sampled_from(["user", "system", "assistant", "tool"])),
                                               "content": either(st.one_of(odd_text, st.lists(anything, max_size=2)))},
                                              optional={"tool_calls": anything, "name": anything}))
_STOP = either(st.one_of(odd_text, st.lists(odd_text, max_size=3)))
_EFFORT = either(st.sampled_from(["low", "medium", "high", "none", "minimal", "bogus", ""]))
CHAT_COMPLETION = {"model": model, "messages": either(st.lists(OPENAI_MESSAGE, min_size=1, max_size=3)),
                   "stream": either(st.booleans()), "max_tokens": _INT_OPTION, "temperature": _FLOAT_OPTION,
                   "top_p": _FLOAT_OPTION, "seed": _INT_OPTION, "stop": _STOP, "tools": either(st.lists(tool, max_size=2)),
                   "response_format": either(st.sampled_from([{"type": "json_object"}, {"type": "json_schema"},
                                                              {"type": "json_schema", "json_schema": {"schema": 5}}])),
                   "stream_options": either(st.just({"include_usage": True})), "reasoning_effort": _EFFORT,
                   "logprobs": either(st.booleans()), "top_logprobs": either(st.integers(-2, 25)),
                   "frequency_penalty": _FLOAT_OPTION}
COMPLETION = {"model": model, "prompt": either(odd_text), "stream": either(st.booleans()), "max_tokens": _INT_OPTION,
              "temperature": _FLOAT_OPTION, "stop": _STOP, "suffix": either(odd_text), "seed": _INT_OPTION}
OPENAI_EMBED = {"model": model, "input": either(st.one_of(odd_text, st.lists(odd_text, max_size=3))),
                "encoding_format": either(st.sampled_from(["float", "base64", "bogus"])), "dimensions": _INT_OPTION}
RESPONSES = {"model": model, "input": either(st.one_of(odd_text, st.lists(OPENAI_MESSAGE, max_size=2))),
             "stream": either(st.booleans()), "max_output_tokens": _INT_OPTION, "instructions": either(odd_text),
             "temperature": _FLOAT_OPTION, "tools": either(st.lists(tool, max_size=1)),
             "reasoning": either(st.fixed_dictionaries({"effort": _EFFORT}))}
_BLOCK = either(st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": either(odd_text)}),
    st.fixed_dictionaries({"type": st.just("image"), "source": either(st.fixed_dictionaries(
        {"type": either(st.sampled_from(["base64", "url", ""])), "data": image}))}),
    st.fixed_dictionaries({"type": st.just("tool_use"), "id": either(odd_text), "name": either(odd_text),
                           "input": either(st.dictionaries(small_text, anything, max_size=2))}),
    st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": either(odd_text),
                           "content": either(st.one_of(odd_text, st.lists(anything, max_size=2)))}),
    st.fixed_dictionaries({"type": either(st.sampled_from(["thinking", "redacted_thinking", "document", "bogus"])),
                           "thinking": either(odd_text)}),
))
ANTHROPIC_MESSAGE = either(st.fixed_dictionaries({"role": either(st.sampled_from(["user", "assistant", "USER", "x"])),
                                                  "content": either(st.one_of(odd_text, st.lists(_BLOCK, max_size=3)))}))
ANTHROPIC_TOOL = either(st.one_of(st.just({"name": "f", "input_schema": {"type": "object"}}),
                                  st.just({"type": "web_search_20250305", "name": "web_search"}),
                                  st.just({"name": "g", "input_schema": "x"})))
MESSAGES = {"model": model, "max_tokens": _INT_OPTION, "messages": either(st.lists(ANTHROPIC_MESSAGE, max_size=3)),
            "system": either(st.one_of(odd_text, st.lists(_BLOCK, max_size=2))), "stream": either(st.booleans()),
            "temperature": _FLOAT_OPTION, "top_p": _FLOAT_OPTION, "top_k": _INT_OPTION,
            "stop_sequences": either(st.lists(odd_text, max_size=3)), "tools": either(st.lists(ANTHROPIC_TOOL, max_size=2)),
            "tool_choice": either(st.just({"type": "auto"})), "metadata": either(st.just({"user_id": "u"})),
            "thinking": either(st.fixed_dictionaries({"type": either(st.sampled_from(["enabled", "disabled", "x"])),
                                                      "budget_tokens": _INT_OPTION})),
            "output_config": either(st.fixed_dictionaries({"effort": _EFFORT}))}

# Route -> body fields. Inference routes generate: the generation is kept short (``bounded``).
BODIES: dict[tuple[str, str], dict[str, st.SearchStrategy]] = {
    ("POST", "/api/generate"): GENERATE, ("POST", "/api/chat"): CHAT, ("POST", "/api/embed"): EMBED,
    ("POST", "/api/embeddings"): EMBEDDINGS, ("POST", "/api/show"): SHOW, ("POST", "/api/create"): CREATE,
    ("POST", "/api/copy"): COPY, ("DELETE", "/api/delete"): DELETE, ("POST", "/api/pull"): TRANSFER,
    ("POST", "/api/push"): TRANSFER, ("POST", "/v1/chat/completions"): CHAT_COMPLETION,
    ("POST", "/v1/completions"): COMPLETION, ("POST", "/v1/embeddings"): OPENAI_EMBED,
    ("POST", "/v1/responses"): RESPONSES, ("POST", "/v1/messages"): MESSAGES,
}
GENERATING = {"/api/generate", "/api/chat", "/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"}
# Methods that reach Corral's code (nginx refuses TRACE itself, and uvicorn's parser any method
# outside HTTP's registry).
KNOWN_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
# Ollama itself answers a failed pull or push with 500 and its error: the one 5xx allowed.
MAY_FAIL_500 = {"/api/pull", "/api/push"}


# -- writing a body ------------------------------------------------------------------------------


@st.composite
def body_bytes(draw: st.DrawFn, fields: dict[str, st.SearchStrategy]) -> tuple[bytes, Any]:
    """(bytes sent, the JSON value they were made from, or None when they are not JSON).

    Half the bodies have every field of the right type (with edge values: huge numbers, odd
    text), so they reach the model; the rest have one or more fields swapped for anything,
    or are not an object at all."""
    # The model (and a chat's messages) are there unless a field is swapped out below.
    required = {k: v for k, v in fields.items() if k in ("model", "messages", "source")}
    value = draw(st.fixed_dictionaries(required, optional={k: v for k, v in fields.items() if k not in required}))
    mode = draw(st.sampled_from(["typed"] * 6 + ["one wrong", "one wrong", "many wrong", "any json"]))
    if mode == "any json":
        value = draw(anything)
    elif mode != "typed":
        for key in draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=1 if mode == "one wrong" else 4)):
            value[key] = draw(anything)
    # ensure_ascii=False writes a lone surrogate as itself: "surrogatepass" sends it as the
    # (invalid) three UTF-8 bytes it would take, one more hostile string.
    raw = json.dumps(value, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    how = draw(st.sampled_from(["as is"] * 24 + ["nan", "surrogate", "bad utf-8", "cut", "form", "deep", "trailing",
                                                "empty", "bom", "control", "duplicate keys"]))
    if how == "as is":
        return raw, value
    if how == "nan":
        literal = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999", b"1" * 5000]))
        if draw(st.booleans()):
            return b'{"model":"%s","prompt":"hi","options":{"top_k":%s}}' % (REAL_MODEL.encode(), literal), None
        return raw.replace(b":", b":" + literal + b",", 1), None
    if how == "surrogate":
        return raw.replace(b'"', b'"\\ud800', 1).replace(b'\\ud800"', b'\\udc00"', 1), None
    if how == "bad utf-8":
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"])) + raw[at:], None
    if how == "cut":
        return raw[: draw(st.integers(0, max(0, len(raw) - 1)))], None
    if how == "form":
        return b"model=" + quote(REAL_MODEL).encode() + b"&prompt=hi", None
    if how == "deep":
        depth = draw(st.sampled_from([999, 1001, 5000, 9998, 10001, 12000]))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        inner = opener * depth + b"1" + closer * depth
        where = draw(st.sampled_from(["top", "field", "inside"]))
        if where == "top":
            return inner, None
        # As a field's value, or inside one (a message's, a tool's, an option's own field).
        typed = draw(st.fixed_dictionaries({k: v for k, v in fields.items() if k in ("model", "messages", "source")}))
        key = draw(st.sampled_from(sorted(fields)))
        if where == "inside":
            typed[key] = draw(st.sampled_from([[{"role": "user", "content": "hi", "x": "DEEP"}],
                                               [{"type": "function", "function": {"name": "f", "parameters": "DEEP"}}],
                                               {"num_predict": 1, "stop": "DEEP"}, {"type": "object", "x": "DEEP"}]))
        else:
            typed[key] = "DEEP"
        return json.dumps(typed).encode().replace(b'"DEEP"', inner, 1), None
    if how == "trailing":
        return raw + draw(st.sampled_from([b" garbage", b"}", b"{}", b"\x00"])), None
    if how == "empty":
        return draw(st.sampled_from([b"", b" ", b"\n\t", b"null", b"[]", b'"x"', b"0"])), None
    if how == "bom":
        return b"\xef\xbb\xbf" + raw, None
    if how == "control":
        return raw.replace(b'"', b'"\x01', 1), None
    return raw.replace(b"{", b'{"model":1,', 1), None  # duplicate keys: the last one wins in Go


def bounded(path: str, value: Any, raw: bytes, stream: bool) -> bytes:
    """The body, with its generation kept short where it would otherwise run long: a request
    read to its end asks for at most 3 tokens; a stream is read only to its first line."""
    if stream or path not in GENERATING or not isinstance(value, dict):
        return raw
    value = dict(value)
    if path.startswith("/v1/"):
        value["max_tokens" if path != "/v1/responses" else "max_output_tokens"] = 2  # /v1/messages too
    elif isinstance(value.get("options"), dict):
        value["options"] = {**value["options"], "num_predict": 2}
    elif "options" not in value or value["options"] is None:
        value["options"] = {"num_predict": 2}
    return json.dumps(value).encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class Probe:
    method: str
    path: str
    body: bytes
    stream: bool  # read only the status and the first line, on a connection of its own

    @property
    def malformed(self) -> bool:
        """Refused by the HTTP layer before any of Corral's code runs, with a 4xx and a closed
        connection: TRACE and methods outside HTTP's registry, a NUL in the path or a path that
        climbs above the root (nginx: 400, and it ends the connection)."""
        return self.method not in KNOWN_METHODS or "%00" in self.path or "%2e%2e/%2e%2e" in self.path

    @property
    def own_connection(self) -> bool:
        return self.stream or self.malformed

    def __repr__(self) -> str:
        shown = self.body[:300] + (b"..." if len(self.body) > 300 else b"")
        return f"Probe({self.method} {self.path} stream={self.stream} body={shown!r})"


@st.composite
def probes(draw: st.DrawFn, routes: list[tuple[str, str]]) -> Probe:
    method, path = draw(st.sampled_from(routes))
    raw, value = draw(body_bytes(BODIES[(method, path)]))
    stream = isinstance(value, dict) and path in GENERATING and value.get("stream", not path.startswith("/v1/")) is True
    return Probe(method, path, bounded(path, value, raw, stream), stream)


DIGESTS = ["sha256:" + "0" * 64, "sha256:" + "a" * 63, "sha256:..%2F..%2Fetc%2Fpasswd", "sha256-" + "0" * 64,
           "md5:abc", "", "sha256:" + "g" * 64, "%00", "sha256:" + "0" * 64 + "/../../x", "a" * 2000]
PATHS = ["/api", "/api/", "/api/generate/x", "/v1", "/v1/models/" + quote("../../etc"), "/v1/models/%00",
         "/api/tags?x=" + "y" * 3000, "/%2e%2e/%2e%2e/", "/api/cluster/workers", "/api/ps", "/api/version",
         "/metrics", "/api/blobs/", "/nope", "//api//tags", "/api/status", "/api/me", "/api/signout",
         "/api/user/keys/" + quote("../../x"), "/api/user/keys/%00", "/api/experimental/web_search",
         "/api/experimental/web_fetch", "/api/experimental/model-recommendations", "/v1/audio/transcriptions"]


@st.composite
def odd_requests(draw: st.DrawFn) -> Probe:
    """Blob digests, odd paths and wrong methods, with small bodies."""
    kind = draw(st.sampled_from(["blob", "path", "method"]))
    body = draw(st.sampled_from([b"", b"x" * 100, b"{}"]))
    if kind == "blob":
        method = draw(st.sampled_from(["HEAD", "POST", "GET", "PUT"]))
        return Probe(method, "/api/blobs/" + draw(st.sampled_from(DIGESTS)), body, False)
    if kind == "path":
        return Probe(draw(st.sampled_from(["GET", "POST", "HEAD"])), draw(st.sampled_from(PATHS)), body, False)
    method = draw(st.sampled_from(["GET", "PUT", "PATCH", "OPTIONS", "TRACE", "DELETE", "FOO"]))
    return Probe(method, draw(st.sampled_from([p for _, p in BODIES])), body, False)


# -- sending ----------------------------------------------------------------------------------


class Wire:
    """One keep-alive connection to the server under test; see the module's docstring."""

    def __init__(self, url: str, timeout: float = 60.0, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self.headers = headers or {}  # sent with every probe (an API key)
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def send(self, probe: Probe) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body (for a stream: its first line, then the connection is dropped)."""
        headers = {**self.headers, **({"Content-Type": "application/json"} if probe.body else {})}
        if probe.own_connection:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                conn.request(probe.method, probe.path, body=probe.body, headers=headers)
                r = conn.getresponse()
                return r.status, dict(r.getheaders()), r.fp.readline() if r.chunked or r.length is None else r.read()
            finally:
                conn.close()
        self.conn.request(probe.method, probe.path, body=probe.body, headers=headers)
        r = self.conn.getresponse()
        data = r.read()
        assert not r.will_close, f"the server closed the connection after {probe}: {r.status} {data[:200]!r}"
        return r.status, dict(r.getheaders()), data

    def alive(self) -> float:
        """``GET /`` on the same connection; its latency in seconds (AssertionError unless it answers)."""
        started = time.monotonic()
        self.conn.request("GET", "/")
        r = self.conn.getresponse()
        body = r.read()
        assert (r.status, body) == (200, b"Ollama is running"), (r.status, body)
        return time.monotonic() - started

    def close(self) -> None:
        self.conn.close()


def check_answer(probe: Probe, status: int, headers: dict[str, str], body: bytes) -> None:
    """What any answer to a hostile request must be: no 5xx (bar Ollama's own failed pull or
    push), and an error in the route's own format."""
    ok_500 = probe.path in MAY_FAIL_500 and status == 500
    assert status < 500 or ok_500, f"{status} for {probe}: {body[:500]!r}"
    if status < 400 or probe.method == "HEAD" or status in (404, 405) and not body.startswith(b"{"):
        return  # Ollama's plain-text 404/405, or a body-less HEAD
    if probe.malformed:
        assert status in (400, 404, 405, 501), (status, probe)
        return
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        raise AssertionError(f"{status} without a JSON error for {probe}: {body[:500]!r}") from None
    if probe.path == "/v1/messages":  # Anthropic's envelope
        assert json.loads(body)["type"] == "error" and isinstance(error.get("type"), str), (probe, body[:500])
        assert isinstance(error.get("message"), str), (probe, body[:500])
    elif probe.path.startswith("/v1/"):
        assert isinstance(error, dict) and isinstance(error.get("message"), str), (probe, body[:500])
    else:
        assert isinstance(error, str) and error, (probe, body[:500])
