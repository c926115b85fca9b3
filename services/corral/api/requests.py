"""The Go types of the requests Ollama's handlers decode (its ``api/types.go``), for their errors.

A body is decoded and checked against one of these before a handler reads it
(``GENERATE.decode(body)``), so a field of the wrong JSON type is a 400 with the words Go
would use, wherever it sits: ``json: cannot unmarshal number into Go struct field
ChatRequest.messages.role of type string``. Fields whose value Go checks with a decoder of its
own (``keep_alive``, ``think``, ``format``) are ``ANY`` here and checked by their handlers,
with Ollama's messages. The OpenAI bodies are typed field by field in ``corral.api.openai``.
"""

from __future__ import annotations

from corral.api.gojson import ANY, BOOL, INT, STRING, Base64, GoType, Map, Slice, Struct

OPTIONS = Map(ANY, "map[string]interface {}")
IMAGES = Slice(Base64(), "[]api.ImageData")

_TOOL_CALL = Struct(
    "api.ToolCall",
    {
        "id": STRING,
        "function": Struct("api.ToolCallFunction", {"index": INT, "name": STRING}, label="ToolCallFunction"),
    },
    label="ToolCall",
)

# api.Message has an UnmarshalJSON of its own: Go's errors inside it name the enclosing request.
MESSAGE = Struct(
    "api.Alias",
    {
        "role": STRING,
        "content": STRING,
        "thinking": STRING,
        "images": IMAGES,
        "tool_calls": Slice(_TOOL_CALL, "[]api.ToolCall"),
        "tool_name": STRING,
        "tool_call_id": STRING,
    },
)
MESSAGES = Slice(MESSAGE, "[]api.Message")

_TOOL = Struct(
    "api.Tool",
    {
        "type": STRING,
        "function": Struct("api.ToolFunction", {"name": STRING, "description": STRING}, label="ToolFunction"),
    },
    label="Tool",
)
TOOLS = Slice(_TOOL, "api.Tools")

GENERATE = Struct(
    "api.GenerateRequest",
    {
        "model": STRING,
        "prompt": STRING,
        "suffix": STRING,
        "system": STRING,
        "template": STRING,
        "context": Slice(INT, "[]int"),
        "stream": BOOL,
        "raw": BOOL,
        "images": IMAGES,
        "options": OPTIONS,
        "truncate": BOOL,
        "shift": BOOL,
        "logprobs": BOOL,
        "top_logprobs": INT,
        "_debug_render_only": BOOL,
    },
)
CHAT = Struct(
    "api.ChatRequest",
    {
        "model": STRING,
        "messages": MESSAGES,
        "tools": TOOLS,
        "stream": BOOL,
        "options": OPTIONS,
        "truncate": BOOL,
        "shift": BOOL,
        "logprobs": BOOL,
        "top_logprobs": INT,
        "_debug_render_only": BOOL,
    },
)
EMBED = Struct(
    "api.EmbedRequest",
    {
        "model": STRING,
        "truncate": BOOL,
        "dimensions": INT,
        "options": OPTIONS,
    },
)
EMBEDDING = Struct("api.EmbeddingRequest", {"model": STRING, "prompt": STRING, "options": OPTIONS})

SHOW = Struct(
    "api.ShowRequest",
    {
        "model": STRING,
        "name": STRING,
        "system": STRING,
        "template": STRING,
        "verbose": BOOL,
        "options": OPTIONS,
    },
)
COPY = Struct("api.CopyRequest", {"source": STRING, "destination": STRING})
DELETE = Struct("api.DeleteRequest", {"model": STRING, "name": STRING})
CREATE = Struct(
    "api.CreateRequest",
    {
        "model": STRING,
        "name": STRING,
        "from": STRING,
        "files": Map(STRING, "map[string]string"),
        "adapters": Map(STRING, "map[string]string"),
        "template": STRING,
        "system": STRING,
        "parameters": OPTIONS,
        "messages": MESSAGES,
        "modelfile": STRING,
        "path": STRING,
        "quantize": STRING,
        "stream": BOOL,
    },
)
# `username`/`password` are deprecated and ignored, as in Ollama; still type-checked.
_TRANSFER: dict[str, GoType] = {
    "model": STRING,
    "name": STRING,
    "insecure": BOOL,
    "stream": BOOL,
    "username": STRING,
    "password": STRING,
}
PULL = Struct("api.PullRequest", _TRANSFER)
PUSH = Struct("api.PushRequest", _TRANSFER)

# The OpenAI- and Anthropic-compatible bodies: only their type's name here (the empty-body and whole-value
# errors); their fields are read with Go's errors by corral.api.openai, .responses and .anthropic.
CHAT_COMPLETION = Struct("openai.ChatCompletionRequest")
COMPLETION = Struct("openai.CompletionRequest")
OPENAI_EMBED = Struct("openai.EmbedRequest")
RESPONSES = Struct("openai.ResponsesRequest")
# Anthropic's /v1/messages body, read field by field by corral.api.anthropic.
MESSAGES_REQUEST = Struct("anthropic.MessagesRequest")
