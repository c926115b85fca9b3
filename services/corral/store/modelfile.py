"""Modelfiles (docs/api-coverage.md, "Modelfiles"): Ollama's parser, its JSON create form, and
`ollama show` output.

    BadRequestError
    └── ModelfileError      400 with the parser's message, e.g. "no FROM line"

The parser is a port of Ollama's rune-at-a-time state machine (parser/parser.go) rather
than a grammar, because clients depend on its quirks: values may be bare, "quoted" or
\"\"\"triple quoted\"\"\"; non-printable characters outside quotes vanish; errors carry
line numbers counted the way it counts them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from corral.api.errors import BadRequestError, OptionError
from corral.api.options import DEPRECATED_PARAMETERS, merge_parameters, parse_parameter
from corral.gocompat import format_float, quote

logger = logging.getLogger(__name__)


class ModelfileError(BadRequestError):
    pass


# Command names as stored: FROM is "model", PARAMETER uses the parameter's own name.
COMMANDS = (
    "from",
    "license",
    "template",
    "system",
    "adapter",
    "draft",
    "renderer",
    "parser",
    "parameter",
    "message",
    "requires",
)
_NON_PARAMETERS = frozenset(
    {"model", "license", "template", "system", "adapter", "draft", "renderer", "parser", "message", "requires"}
)
MESSAGE_ROLES = ("system", "user", "assistant")

ERR_MISSING_FROM = "no FROM line"
ERR_INVALID_ROLE = 'message role must be one of "system", "user", or "assistant"'
ERR_INVALID_COMMAND = (
    'command must be one of "from", "license", "template", "system", "adapter", "draft", '
    '"renderer", "parser", "parameter", "message", or "requires"'
)
ERR_UNEXPECTED_EOF = "unexpected EOF"

_BLOB_REF = re.compile(r"@?sha256[:-]([0-9a-fA-F]{64})")
_SEMVER = re.compile(r"v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?")


@dataclass
class Command:
    name: str
    args: str

    def __str__(self) -> str:
        """One Modelfile line, as Ollama's ``Command.String`` writes it."""
        if self.name == "model":
            return f"FROM {self.args}"
        if self.name in ("license", "template", "system", "adapter", "renderer", "parser", "requires", "draft"):
            return f"{self.name.upper()} {_quote(self.args)}"
        if self.name == "message":
            role, _, content = self.args.partition(": ")
            return f"MESSAGE {role} {_quote(content)}"
        return f"PARAMETER {self.name} {_quote(self.args)}"


@dataclass
class Modelfile:
    commands: list[Command] = field(default_factory=list)

    def __str__(self) -> str:
        return "".join(f"{command}\n" for command in self.commands)

    def to_create_request(self) -> dict[str, Any]:
        """The JSON /api/create form of this Modelfile (what `ollama create` would send).

        Only blob references (``@sha256:<hex>``, what pre-0.5.5 clients rewrote local
        paths to after uploading them) can become ``files``; a server never reads paths
        a client names, so anything else in FROM is a model name.
        """
        request: dict[str, Any] = {}
        files: dict[str, str] = {}
        adapters: dict[str, str] = {}
        parameters: dict[str, Any] = {}
        messages: list[dict[str, str]] = []
        licenses: list[str] = []
        for command in self.commands:
            name, args = command.name, command.args
            if name == "model":
                digest = blob_reference(args)
                if digest is None:
                    request["from"] = args
                else:
                    files["model.gguf" if not files else f"model-{len(files) + 1}.gguf"] = digest
            elif name == "adapter":
                digest = blob_reference(args)
                if digest is None:
                    raise ModelfileError(f"ADAPTER must name an uploaded blob (@sha256:<digest>), not {args!r}")
                adapters["adapter.gguf"] = digest
            elif name in ("template", "system", "renderer", "parser"):
                request[name] = args
            elif name == "license":
                licenses.append(args)
            elif name == "requires":
                if not _SEMVER.fullmatch(args):
                    raise ModelfileError("requires must be a valid semver (e.g. 0.14.0)")
                request["requires"] = args.removeprefix("v")
            elif name == "message":
                role, _, content = args.partition(": ")
                messages.append({"role": role, "content": content})
            elif name == "draft":
                logger.warning("ignoring DRAFT %s: draft models are not supported", args)
            else:
                merge_parameters(parameters, name, _typed_parameter(name, args))
        if files:
            request["files"] = files
        if adapters:
            request["adapters"] = adapters
        if parameters:
            request["parameters"] = parameters
        if messages:
            request["messages"] = messages
        if licenses:
            request["license"] = licenses
        return request


def blob_reference(text: str) -> str | None:
    """``sha256:<hex>`` for ``@sha256:<hex>``/``sha256-<hex>`` and friends, else None."""
    match = _BLOB_REF.fullmatch(text.strip())
    return f"sha256:{match.group(1).lower()}" if match else None


# --- parsing ----------------------------------------------------------------------------

_NIL, _NAME, _VALUE, _PARAMETER, _MESSAGE, _COMMENT = range(6)


class _InvalidCommand(Exception):
    pass


class _UnexpectedEOF(Exception):
    pass


def _transition(ch: str, state: int) -> tuple[int, str | None]:
    """Ollama's parseRuneForState: the next state and the character to keep (None: drop)."""
    space, newline = ch in " \t", ch in "\r\n"
    if state == _NIL:
        if ch == "#":
            return _COMMENT, None
        if space or newline:
            return _NIL, None
        return _NAME, ch
    if state == _NAME:
        if _is_alpha(ch):
            return _NAME, ch
        if space:
            return _VALUE, None
        raise _InvalidCommand
    if state == _VALUE:
        if newline or space:
            return _NIL, ch
        return _VALUE, ch
    if state == _PARAMETER:
        if _is_alpha(ch) or "0" <= ch <= "9" or ch == "_":
            return _PARAMETER, ch
        if space:
            return _VALUE, None
        raise _UnexpectedEOF
    if state == _MESSAGE:
        if _is_alpha(ch):
            return _MESSAGE, ch
        if space:
            return _VALUE, None
        raise _UnexpectedEOF
    # comment
    return (_NIL if newline else _COMMENT), None


def _is_alpha(ch: str) -> bool:
    return "a" <= ch <= "z" or "A" <= ch <= "Z"


def _unquote(text: str) -> tuple[str, bool]:
    if text.startswith('"""'):
        if len(text) >= 6 and text.endswith('"""'):
            return text[3:-3], True
        return "", False
    if text.startswith('"'):
        if len(text) >= 2 and text.endswith('"'):
            return text[1:-1], True
        return "", False
    return text, True


def _parse_commands(text: str) -> list[Command]:
    text = text.removeprefix("\ufeff")
    commands: list[Command] = []
    state, line = _NIL, 1
    name, role = "", ""
    buf: list[str] = []
    for ch in text:
        if ch in "\r\n":
            line += 1
        try:
            nxt, keep = _transition(ch, state)
        except _UnexpectedEOF:
            raise ModelfileError(f"{ERR_UNEXPECTED_EOF}: {''.join(buf)}") from None
        except _InvalidCommand:
            raise ModelfileError(f"(line {line}): {ERR_INVALID_COMMAND}") from None

        if nxt != state:
            if state == _NAME:
                word = "".join(buf).lower()
                if word not in COMMANDS:
                    raise ModelfileError(f"(line {line}): {ERR_INVALID_COMMAND}")
                if word == "from":
                    name = "model"
                elif word == "parameter":
                    nxt = _PARAMETER
                elif word == "message":
                    nxt, name = _MESSAGE, "message"
                else:
                    name = word
            elif state == _PARAMETER:
                name = "".join(buf)
            elif state == _MESSAGE:
                role = "".join(buf)
                if role not in MESSAGE_ROLES:
                    raise ModelfileError(f"(line {line}): {ERR_INVALID_ROLE}")
            elif state == _VALUE:
                value, complete = _unquote("".join(buf).strip())
                # Spaces always belong to the value; a newline ends it unless a quote is open.
                if not complete or ch in " \t":
                    buf.append(ch)
                    continue
                if role:
                    value, role = f"{role}: {value}", ""
                commands.append(Command(name, value))
            buf = []
            state = nxt

        if keep is not None and keep.isprintable():
            buf.append(keep)

    if state == _VALUE:
        value, complete = _unquote("".join(buf).strip())
        if not complete:
            raise ModelfileError(ERR_UNEXPECTED_EOF)
        if role:
            value = f"{role}: {value}"
        commands.append(Command(name, value))
    elif state not in (_NIL, _COMMENT):
        raise ModelfileError(ERR_UNEXPECTED_EOF)

    if not any(command.name == "model" for command in commands):
        raise ModelfileError(ERR_MISSING_FROM)
    return commands


def _typed_parameter(name: str, args: str) -> Any:
    try:
        return parse_parameter(name, args)
    except OptionError as exc:
        raise ModelfileError(exc.message) from exc


def parse_modelfile(text: str) -> Modelfile:
    """Parse and check a Modelfile; ``ModelfileError`` carries Ollama's message."""
    commands: list[Command] = []
    for command in _parse_commands(text):
        if command.name not in _NON_PARAMETERS:
            if command.name in DEPRECATED_PARAMETERS:
                logger.warning("parameter %s is deprecated", command.name)
                continue
            _typed_parameter(command.name, command.args)
        commands.append(command)
    return Modelfile(commands)


# --- formatting -------------------------------------------------------------------------


def _quote(text: str) -> str:
    """Ollama's quote(): only values with newlines or edge spaces get quotes."""
    if "\n" in text or text.startswith(" ") or text.endswith(" "):
        return f'"""{text}"""' if '"' in text else f'"{text}"'
    return text


def format_modelfile(
    *,
    from_: str,
    template: str | None,
    system: str | None,
    parameters: dict[str, Any],
    messages: Iterable[dict[str, Any]],
    license: Iterable[str],
    adapters: Iterable[str] = (),
    projectors: Iterable[str] = (),
    short_name: str | None = None,
) -> str:
    """The Modelfile `ollama show` prints; ``from_`` is the model blob's path."""
    commands = [Command("model", from_)]
    commands += [Command("adapter", path) for path in adapters]
    commands += [Command("model", path) for path in projectors]
    if template is not None:
        commands.append(Command("template", template))
    if system:
        commands.append(Command("system", system))
    for key, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            commands.append(Command(key, go_format(item)))
    commands += [Command("license", text) for text in license]
    commands += [Command("message", f"{m.get('role', '')}: {m.get('content', '')}") for m in messages]
    header = (
        '# Modelfile generated by "ollama show"\n'
        "# To build a new Modelfile based on this, replace FROM with:\n"
        f"# FROM {short_name or from_}\n\n"
    )
    return header + str(Modelfile(commands))


def format_parameters(parameters: dict[str, Any]) -> str:
    """`/api/show`'s ``parameters``: Go's ``%-30s %#v``, one line per list item."""
    lines = []
    for key, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<30} {go_repr(item)}")
    return "\n".join(lines)


def go_format(value: Any) -> str:
    """Go's ``%v`` for a value decoded from JSON (numbers are float64 there)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return format_float(float(value))
    if value is None:
        return "<nil>"
    return str(value)


def go_repr(value: Any) -> str:
    """Go's ``%#v``: strings quoted, numbers and booleans as ``%v``."""
    if isinstance(value, str):
        return quote(value)
    return go_format(value)
