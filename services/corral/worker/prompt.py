"""Turning requests into prompt text: a model's chat template, its capabilities, tool calls.

A model's TEMPLATE layer is Go text/template (as in every Ollama-library model) and is
rendered with ``corral.gotemplate``. Without one, the GGUF's own
``tokenizer.chat_template`` (Jinja) is used. Capabilities are derived the way Ollama
derives them: ``tools`` when the template reads the tools, ``insert`` when it reads the
suffix, ``thinking`` when it reads the think flag, ``embedding`` for pooling models.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jinja2 import TemplateError as JinjaTemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from corral.api.errors import BadRequestError
from corral.gocompat import marshal
from corral.gotemplate import MISSING, Template, TemplateError

# A request's ``think``: off, on, a level ("low" ... "max", which is on), or unset.
Think = bool | str | None

# Go field names (as templates read them) for the JSON keys of Ollama's api types.
_GO_FIELDS = {
    "Role": "role",
    "Content": "content",
    "Thinking": "thinking",
    "Images": "images",
    "ToolCalls": "tool_calls",
    "ToolName": "tool_name",
    "ToolCallID": "tool_call_id",
    "Function": "function",
    "Name": "name",
    "Arguments": "arguments",
    "Index": "index",
    "ID": "id",
    "Type": "type",
    "Description": "description",
    "Parameters": "parameters",
    "Properties": "properties",
    "Required": "required",
    "Enum": "enum",
    "Items": "items",
}


class GoStruct:
    """A JSON object seen through Go field names, as Ollama's structs look to templates.

    ``.Function.Name`` reads key ``function`` then ``name``; ``json .`` and printing give
    the original JSON object with its own keys and order, as Go's types marshal themselves.
    """

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        key = _GO_FIELDS.get(name, name[:1].lower() + name[1:])
        for candidate in (key, name):
            if candidate in self._data:
                return _go(self._data[candidate])
        return MISSING

    def __bool__(self) -> bool:
        return bool(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __json__(self) -> dict[str, Any]:
        return self._data

    def __str__(self) -> str:
        return marshal(self._data)


def _go(value: Any) -> Any:
    if isinstance(value, dict):
        return GoStruct(value)
    if isinstance(value, list):
        return [_go(v) for v in value]
    return value


_GO_FUNCS = {
    "currentDate": lambda: datetime.now().strftime("%Y-%m-%d"),
}


@dataclass
class ChatTemplate:
    """One model's way of turning messages into a prompt."""

    go: Template | None
    jinja_source: str | None
    bos_token: str = ""
    eos_token: str = ""

    @classmethod
    def build(cls, template: str | None, jinja_source: str | None, *, bos: str = "", eos: str = "") -> ChatTemplate:
        if template:
            try:
                return cls(Template(template, funcs=_GO_FUNCS), None, bos, eos)
            except TemplateError as exc:
                raise BadRequestError(f"template error: {exc}") from exc
        return cls(None, jinja_source, bos, eos)

    @property
    def variables(self) -> set[str]:
        if self.go is not None:
            return self.go.variables()
        return set()

    def capabilities(self, *, embedding: bool, vision: bool) -> list[str]:
        caps: list[str] = []
        if embedding:
            return ["embedding"]
        caps.append("completion")
        if self.go is not None:
            names = self.go.variables()
            if "Tools" in names:
                caps.append("tools")
            if "Suffix" in names:
                caps.append("insert")
            if "Think" in names or "ThinkLevel" in names:
                caps.append("thinking")
        elif self.jinja_source and "tools" in self.jinja_source:
            caps.append("tools")
        if vision:
            caps.append("vision")
        return caps

    # -- rendering ---------------------------------------------------------------------

    def render_chat(self, messages: list[dict], *, tools: list[dict] | None = None, think: Think = None) -> str:
        if self.go is not None:
            return self._render_go_chat(messages, tools or [], think)
        if self.jinja_source:
            return self._render_jinja(messages, tools)
        # A GGUF with neither: plain role-prefixed text, the last resort Ollama also uses.
        lines = [f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages]
        return "\n".join(lines) + "\nassistant: "

    def render_generate(self, prompt: str, *, system: str | None, suffix: str = "", think: Think = None) -> str:
        if self.go is not None:
            names = self.go.variables()
            if "Messages" in names and not suffix:
                messages = ([{"role": "system", "content": system}] if system else []) + [
                    {"role": "user", "content": prompt}
                ]
                return self._render_go_chat(messages, [], think)
            return self._execute(
                {"System": system or "", "Prompt": prompt, "Suffix": suffix, "Response": "", **_think_values(think)}
            )
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return self.render_chat(messages, think=think)

    def _execute(self, values: dict[str, Any]) -> str:
        assert self.go is not None
        try:
            return self.go.render(values)
        except TemplateError as exc:
            raise BadRequestError(f"template error: {exc}") from exc

    def _render_go_chat(self, messages: list[dict], tools: list[dict], think: Think) -> str:
        assert self.go is not None
        if "Messages" in self.go.variables():
            system = "\n\n".join(m.get("content", "") for m in messages if m.get("role") == "system")
            return self._execute(
                {
                    "Messages": _go(messages),
                    "Tools": _go(tools),
                    "System": system,
                    "Prompt": "",
                    "Response": "",
                    **_think_values(think),
                }
            )
        return self._render_go_legacy(messages, think)

    def _render_go_legacy(self, messages: list[dict], think: Think) -> str:
        """Templates written for .System/.Prompt/.Response: render turn by turn.

        Each user prompt is paired with the assistant reply that follows it; the last
        turn is rendered with an empty response and cut where the response would go.
        """
        system = ""
        turns: list[tuple[str, str, str]] = []
        prompt = ""
        for m in messages:
            role, content = m.get("role"), m.get("content", "")
            if role == "system":
                system = content if not system else f"{system}\n\n{content}"
            elif role == "user" or role == "tool":
                if prompt:
                    turns.append((system, prompt, ""))
                    system = ""
                prompt = content
            elif role == "assistant":
                turns.append((system, prompt, content))
                system, prompt = "", ""
        out = []
        for sys_text, user, reply in turns:
            out.append(self._execute({"System": sys_text, "Prompt": user, "Response": reply, **_think_values(think)}))
        marker = "\x00response\x00"
        last = self._execute({"System": system, "Prompt": prompt, "Response": marker, **_think_values(think)})
        out.append(last.split(marker, 1)[0])
        return "".join(out)

    def _render_jinja(self, messages: list[dict], tools: list[dict] | None) -> str:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(message: str) -> None:
            raise JinjaTemplateError(message)

        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            template = env.from_string(self.jinja_source or "")
            return template.render(
                messages=messages,
                tools=tools or None,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except JinjaTemplateError as exc:
            raise BadRequestError(f"template error: {exc}") from exc
        except (TypeError, ValueError, LookupError, AttributeError, RecursionError) as exc:
            # The model's template met message values it did not expect (they are the client's).
            raise BadRequestError(f"template error: {type(exc).__name__}: {exc}") from exc


def _think_values(think: Think) -> dict[str, Any]:
    # As Ollama's ThinkValue: a level is itself; a plain true is "medium"; off or unset, "".
    level = think if isinstance(think, str) else ("medium" if think else "")
    return {"Think": bool(think), "ThinkLevel": level, "IsThinkSet": think is not None}


# -- tool calls in model output ------------------------------------------------------------

_TOOL_TAGS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "<function_call>", "```json")
_TOOL_END_TAGS = ("</tool_call>", "</function_call>", "```", "<|eom_id|>")
_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_tool_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def looks_like_tool_call(text: str) -> bool:
    """Whether the output so far may be a tool call, so it must be held back, not streamed."""
    stripped = text.lstrip()
    if not stripped:
        return True
    if stripped[0] in "{[":
        return True
    return any(tag.startswith(stripped[: len(tag)]) for tag in _TOOL_TAGS)


def parse_tool_calls(text: str, tool_names: set[str]) -> list[dict] | None:
    """Tool calls in a whole model output, in Ollama's shape, or None if it isn't one.

    Accepts the shapes models are trained on: a JSON object or list of objects with
    ``name`` and ``arguments``/``parameters``, optionally wrapped in a tag such as
    ``<tool_call>…</tool_call>`` (one or several).
    """
    body = text.strip()
    for tag in _TOOL_TAGS:
        body = body.replace(tag, "\n")
    for tag in _TOOL_END_TAGS:
        body = body.replace(tag, "\n")
    decoder = json.JSONDecoder()
    calls: list[dict] = []
    pos = 0
    body = body.strip()
    while pos < len(body):
        while pos < len(body) and body[pos] in " \t\r\n,;":
            pos += 1
        if pos >= len(body):
            break
        try:
            value, pos = decoder.raw_decode(body, pos)
        except json.JSONDecodeError:
            return None
        for item in value if isinstance(value, list) else [value]:
            call = _as_call(item, tool_names)
            if call is None:
                return None
            calls.append(call)
    if not calls:
        return None
    for index, call in enumerate(calls):
        call["function"]["index"] = index
    return calls


def _as_call(item: Any, tool_names: set[str]) -> dict | None:
    if not isinstance(item, dict):
        return None
    if "function" in item and isinstance(item["function"], dict):
        item = item["function"]
    name = item.get("name")
    args = item.get("arguments", item.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(name, str) or not isinstance(args, dict):
        return None
    if tool_names and name not in tool_names:
        return None
    return {"id": new_tool_call_id(), "function": {"index": 0, "name": name, "arguments": args}}
