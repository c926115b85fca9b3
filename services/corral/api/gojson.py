"""Request bodies as Ollama's handlers see them: Go's ``encoding/json``, its limits and its words.

Ollama decodes every body with gin's ``ShouldBindJSON``: Go's ``json.Decoder`` into a typed
struct. What that accepts is what Corral accepts, and where it refuses, the 400 carries Go's
message, because clients and tests match on them:

- a syntax error: ``invalid character 'x' looking for beginning of value``, ``unexpected EOF``;
- nesting deeper than 10,000: ``invalid character '[' exceeded max depth``;
- ``NaN`` and ``Infinity`` are not JSON; a number beyond float64 (``1e999``) is refused;
- invalid UTF-8 and lone surrogate escapes (``"\\ud800"``) inside strings become U+FFFD, as Go
  replaces them (Python would keep a lone surrogate, which no UTF-8 encoder takes later);
- only the first JSON value is read: bytes after it are ignored, as ``json.Decoder`` does;
- a field of the wrong JSON type: ``json: cannot unmarshal string into Go struct field
  ChatRequest.messages of type []api.Message`` (``Struct``, ``Slice``... below describe the Go
  types of a request, ``corral.api.requests`` the requests themselves).

Python's C decoder does the work; documents it cannot take (nested past Python's recursion
limit) go through a small iterative parser with Go's depth limit.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]  # public, untyped
from typing import Any

from corral.api.errors import BadRequestError
from corral.gocompat import quote

MAX_DEPTH = 10_000  # Go's encoding/json: maxNestingDepth
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
# Integers longer than this are taken as float64, as Go takes every number it decodes into
# interface{} (Python's int() also refuses more than 4,300 digits).
_LONG_INT_DIGITS = 400

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _skip_ws(s: str, i: int) -> int:
    """The index of the first non-space at or after ``i`` (``_WS`` matches at every index)."""
    match = _WS.match(s, i)
    assert match is not None
    return match.end()


class _Refused(Exception):
    """Go's decoder message for a body it refuses (turned into a BadRequestError by ``decode``)."""


# -- numbers and constants, as Go reads them ------------------------------------------------


def _go_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _Refused(f"json: cannot unmarshal number {text} into Go value of type float64")
    return value


def _go_int(text: str) -> int | float:
    return int(text) if len(text) <= _LONG_INT_DIGITS else _go_float(text)


def _no_constant(name: str) -> Any:
    # Python's decoder takes NaN, Infinity and -Infinity; Go's scanner stops at their first letter.
    where = "in numeric literal" if name.startswith("-") else "looking for beginning of value"
    raise _Refused(f"invalid character '{name.lstrip('-')[0]}' {where}")


_DECODER = json.JSONDecoder(parse_float=_go_float, parse_int=_go_int, parse_constant=_no_constant)


# -- syntax errors in Go's words ------------------------------------------------------------

# Python's decoder complaints and the context Go's scanner names for the same mistake.
_GO_CONTEXT = {
    "Expecting property name enclosed in double quotes": "looking for beginning of object key string",
    "Expecting ':' delimiter": "after object key",
    "Expecting value": "looking for beginning of value",
    "Invalid control character at": "in string literal",
    "Invalid \\escape": "in string escape code",
    "Invalid \\uXXXX escape": "in \\u hexadecimal character escape",
}


def _quote_char(char: str) -> str:
    """Go's quoteChar: the offending character as the scanner shows it."""
    if char == "'":
        return "'\\''"
    if char == '"':
        return "'\"'"
    return "'" + quote(char)[1:-1] + "'"


def _syntax_error(exc: json.JSONDecodeError) -> str:
    doc, pos = exc.doc, exc.pos
    if exc.msg.startswith("Unterminated string") or pos >= len(doc.rstrip(" \t\n\r")):
        return "unexpected EOF"
    if exc.msg == "Expecting ',' delimiter":
        # Go names the container it was in: the innermost one open before pos.
        in_object = doc.rfind("{", 0, pos) > doc.rfind("[", 0, pos)
        where = "after object key:value pair" if in_object else "after array element"
    elif exc.msg.startswith("Invalid \\escape"):
        pos += 1  # Python points at the backslash, Go at the character after it
        where = _GO_CONTEXT["Invalid \\escape"]
    else:
        where = next((w for m, w in _GO_CONTEXT.items() if exc.msg.startswith(m)), "looking for beginning of value")
    return f"invalid character {_quote_char(doc[pos])} {where}"


# -- the iterative parser, for documents nested deeper than Python's decoder goes ----------------


def _deep_value(s: str, i: int) -> tuple[Any, int]:
    """One JSON value from ``s[i:]`` without recursion, refusing nesting beyond ``MAX_DEPTH``."""
    stack: list[Any] = []  # open containers
    keys: list[str | None] = []  # the pending key of each open object (None for arrays)

    def key_at(j: int) -> tuple[str, int]:
        j = _skip_ws(s, j)
        if s[j : j + 1] != '"':
            raise _Refused(_unexpected(s, j, "looking for beginning of object key string"))
        key, j = scanstring(s, j + 1)
        j = _skip_ws(s, j)
        if s[j : j + 1] != ":":
            raise _Refused(_unexpected(s, j, "after object key"))
        return key, _skip_ws(s, j + 1)

    i = _skip_ws(s, i)
    while True:
        char = s[i : i + 1]
        closed = False
        if char in ("{", "["):
            if len(stack) >= MAX_DEPTH:
                raise _Refused(f"invalid character '{char}' exceeded max depth")
            container: Any = {} if char == "{" else []
            i = _skip_ws(s, i + 1)
            if s[i : i + 1] == ("}" if char == "{" else "]"):
                value, i, closed = container, i + 1, True
            else:
                stack.append(container)
                if char == "{":
                    key, i = key_at(i)
                    keys.append(key)
                else:
                    keys.append(None)
                continue
        if not closed:
            value, i = _deep_scalar(s, i)
        while True:  # a value is complete: attach it, then find what follows
            if not stack:
                return value, i
            parent = stack[-1]
            if isinstance(parent, dict):
                parent[keys[-1]] = value
            else:
                parent.append(value)
            i = _skip_ws(s, i)
            char = s[i : i + 1]
            if char == ",":
                if isinstance(parent, dict):
                    keys[-1], i = key_at(i + 1)
                else:
                    i = _skip_ws(s, i + 1)
                break
            if char == ("}" if isinstance(parent, dict) else "]"):
                value = stack.pop()
                keys.pop()
                i += 1
                continue
            where = "after object key:value pair" if isinstance(parent, dict) else "after array element"
            raise _Refused(_unexpected(s, i, where))


def _deep_scalar(s: str, i: int) -> tuple[Any, int]:
    char = s[i : i + 1]
    if char == '"':
        return scanstring(s, i + 1)
    for literal, value in (("true", True), ("false", False), ("null", None)):
        if s.startswith(literal, i):
            return value, i + len(literal)
    if s.startswith("NaN", i) or s.startswith("Infinity", i) or s.startswith("-Infinity", i):
        _no_constant("-Infinity" if char == "-" else s[i : i + 3])
    match = _NUMBER.match(s, i)
    if match and match.end() > i and match.group() != "-":
        text = match.group()
        return (_go_float(text) if match.group(1) or match.group(2) else _go_int(text)), match.end()
    raise _Refused(_unexpected(s, i, "looking for beginning of value"))


def _unexpected(s: str, i: int, where: str) -> str:
    return "unexpected EOF" if i >= len(s) else f"invalid character {_quote_char(s[i])} {where}"


# -- decoding a body ----------------------------------------------------------------------------


def _without_surrogates(value: Any) -> Any:
    """Lone surrogates (from ``\\ud800``-style escapes) replaced by U+FFFD in every string."""
    fix = lambda text: _SURROGATE.sub("\ufffd", text) if isinstance(text, str) else text  # noqa: E731
    if isinstance(value, str):
        return fix(value)
    todo = [value]
    while todo:  # iterative: the document may be nested 10,000 deep
        node = todo.pop()
        if isinstance(node, dict):
            items = list(node.items())
            node.clear()
            for key, item in items:
                node[fix(key)] = fix(item)
                if isinstance(item, (dict, list)):
                    todo.append(item)
        elif isinstance(node, list):
            for index, item in enumerate(node):
                if isinstance(item, str):
                    node[index] = fix(item)
                elif isinstance(item, (dict, list)):
                    todo.append(item)
    return value


def loads(data: bytes | str) -> Any:
    """The first JSON value in ``data``, as Go's decoder reads it (``_Refused`` otherwise)."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    start = _skip_ws(text, 0)
    try:
        value, _ = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise _Refused(_syntax_error(exc)) from None
    except RecursionError:
        value, _ = _deep_value(text, start)
    if _SURROGATE_ESCAPE.search(text):
        value = _without_surrogates(value)
    return value


def dumps(value: Any, *, ensure_ascii: bool = True) -> str:
    """Compact JSON of a decoded body (to pass it on, or to quote it): documents nested deeper
    than Python's encoder goes, which ``loads`` takes as Go does, are written without recursion."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=ensure_ascii)
    except RecursionError:
        return _deep_dumps(value, ensure_ascii)


class _Text(str):
    """Already JSON: a bracket, a comma, a key and its colon (``_deep_dumps``)."""


def _deep_dumps(value: Any, ensure_ascii: bool) -> str:
    out: list[str] = []
    todo: list[Any] = [value]
    while todo:
        item = todo.pop()
        if isinstance(item, _Text):
            out.append(item)
        elif isinstance(item, dict):
            parts: list[Any] = [_Text("{")]
            for i, (key, child) in enumerate(item.items()):
                parts += [_Text(("," if i else "") + json.dumps(str(key), ensure_ascii=ensure_ascii) + ":"), child]
            todo.extend(reversed([*parts, _Text("}")]))
        elif isinstance(item, list):
            parts = [_Text("[")]
            for i, child in enumerate(item):
                parts += [_Text(","), child] if i else [child]
            todo.extend(reversed([*parts, _Text("]")]))
        else:
            out.append(json.dumps(item, ensure_ascii=ensure_ascii))
    return "".join(out)


def decode(body: bytes, go_type: str) -> Any:
    """A request body as Go decodes it into ``go_type`` (``api.ChatRequest``): the value, or a
    400 with Go's message. An empty body is ``missing request body`` in Ollama's handlers and
    ``EOF`` in its OpenAI and Anthropic middlewares."""
    if not body.strip(b" \t\r\n"):
        raise BadRequestError("EOF" if go_type.startswith(("openai.", "anthropic.")) else "missing request body")
    try:
        return loads(body)
    except _Refused as exc:
        raise BadRequestError(str(exc)) from None


# -- Go types, for the type errors Go's decoder reports ---------------------------------------


def json_kind(value: Any) -> str:
    """How Go's UnmarshalTypeError names a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


@dataclass(frozen=True)
class _At:
    """Where a value sits, as Go's error names it: the innermost struct, and the field path."""

    struct: str
    path: str = ""

    def field(self, key: str) -> _At:
        return _At(self.struct, f"{self.path}.{key}" if self.path else key)

    def error(self, kind: str, go_type: str) -> BadRequestError:
        return BadRequestError(
            f"json: cannot unmarshal {kind} into Go struct field {self.struct}.{self.path} of type {go_type}"
        )


class GoType:
    """A Go type a JSON value decodes into; ``check`` raises Go's error where it would not."""

    name: str

    def check(self, value: Any, at: _At) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Scalar(GoType):
    py: type
    name: str

    def check(self, value: Any, at: _At) -> None:
        if value is not None and (type(value) is not self.py):
            raise at.error(json_kind(value), self.name)


@dataclass(frozen=True)
class Int(GoType):
    """A Go int (int64): a number that is whole and in range, else Go's "number 1.5" error."""

    name: str = "int"

    def check(self, value: Any, at: _At) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise at.error(json_kind(value), self.name)
        if isinstance(value, float) or not INT64_MIN <= value <= INT64_MAX:
            raise at.error(f"number {value!r}", self.name)


@dataclass(frozen=True)
class Float(GoType):
    name: str = "float64"

    def check(self, value: Any, at: _At) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise at.error(json_kind(value), self.name)


@dataclass(frozen=True)
class Base64(GoType):
    """Go's []byte (``api.ImageData``): standard base64 with padding, decoded as it is read."""

    name: str = "api.ImageData"

    def check(self, value: Any, at: _At) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            raise at.error(json_kind(value), self.name)
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequestError(f"illegal base64 data at input byte {base64_error_at(value)}") from None


def base64_error_at(text: str) -> int:
    """Where Go's StdEncoding stops: the first byte outside the alphabet, else the start of
    the incomplete last quantum (or of bad padding)."""
    match = re.search(r"[^A-Za-z0-9+/=]", text)
    if match:
        return match.start()
    pad = text.find("=")
    if pad != -1 and (len(text) % 4 or pad < len(text) - 2 or text[pad:].strip("=")):
        return pad
    return len(text) - len(text) % 4


@dataclass(frozen=True)
class AnyValue(GoType):
    """``interface{}`` or ``json.RawMessage``: anything goes (checked later, if at all)."""

    name: str = "interface {}"

    def check(self, value: Any, at: _At) -> None:
        return


@dataclass(frozen=True)
class Slice(GoType):
    elem: GoType
    name: str

    def check(self, value: Any, at: _At) -> None:
        if value is None:
            return
        if not isinstance(value, list):
            raise at.error(json_kind(value), self.name)
        for item in value:
            self.elem.check(item, at)


@dataclass(frozen=True)
class Map(GoType):
    """A Go map: Go's error path stops at the map's field (its keys are not in it)."""

    elem: GoType
    name: str

    def check(self, value: Any, at: _At) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            raise at.error(json_kind(value), self.name)
        for item in value.values():
            self.elem.check(item, at)


@dataclass(frozen=True)
class Struct(GoType):
    """A Go struct: its JSON fields and their types; unknown fields are ignored, as in Go.

    ``label`` is the struct's name where Go's errors name it for the fields inside (the
    innermost struct being decoded); None keeps the enclosing one's, as Go does for a type
    with its own UnmarshalJSON (``api.Message``)."""

    name: str
    fields: dict[str, GoType] = field(default_factory=dict)
    label: str | None = None

    def check(self, value: Any, at: _At) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            raise at.error(json_kind(value), self.name)
        inner = _At(self.label, at.path) if self.label else at
        for key, go_type in self.fields.items():
            if key in value:
                go_type.check(value[key], inner.field(key))

    def decode(self, body: bytes) -> dict[str, Any]:
        """A request body of this type: parsed and checked, with Go's messages; ``{}`` for null."""
        value = decode(body, self.name)
        if value is None:  # Go decodes null into the zero struct
            return {}
        if not isinstance(value, dict):
            raise BadRequestError(f"json: cannot unmarshal {json_kind(value)} into Go value of type {self.name}")
        self.check(value, _At(self.name.rpartition(".")[2]))
        return value


STRING = Scalar(str, "string")
BOOL = Scalar(bool, "bool")
INT = Int()
FLOAT64 = Float()
ANY = AnyValue()
