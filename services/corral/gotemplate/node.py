"""The parse tree (Go's parse/node.go); each node prints as Go prints it, for "executing ... at <X>"."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from corral.gocompat import quote
from corral.gotemplate.funcs import BUILTINS

# Parse tree.  __str__ renders nodes as Go does, for "executing ... at <X>".


class Node:
    __slots__ = ("pos",)
    pos: int


class Text(Node):
    __slots__ = ("text",)

    def __init__(self, pos: int, text: str) -> None:
        self.pos, self.text = pos, text


class Field(Node):
    """.A.B: fields looked up on dot."""

    __slots__ = ("idents",)

    def __init__(self, pos: int, idents: tuple[str, ...]) -> None:
        self.pos, self.idents = pos, idents

    def __str__(self) -> str:
        return "." + ".".join(self.idents)


class Variable(Node):
    """$x or $x.A.B."""

    __slots__ = ("idents", "name")

    def __init__(self, pos: int, name: str, idents: tuple[str, ...] = ()) -> None:
        self.pos, self.name, self.idents = pos, name, idents

    def __str__(self) -> str:
        return ".".join((self.name, *self.idents))


class Dot(Node):
    __slots__ = ()

    def __init__(self, pos: int) -> None:
        self.pos = pos

    def __str__(self) -> str:
        return "."


class Nil(Dot):
    __slots__ = ()

    def __str__(self) -> str:
        return "nil"


class Const(Node):
    """A string, number, char or bool literal."""

    __slots__ = ("text", "value")

    def __init__(self, pos: int, value: Any, text: str) -> None:
        self.pos, self.value, self.text = pos, value, text

    def __str__(self) -> str:
        return self.text


class Ident(Node):
    """A function name; the function is resolved at parse time, like Go."""

    __slots__ = ("builtin", "fn", "name")

    def __init__(self, pos: int, name: str, fn: Callable[..., Any]) -> None:
        self.pos, self.name, self.fn = pos, name, fn
        self.builtin = BUILTINS.get(name) is fn

    def __str__(self) -> str:
        return self.name


class Chain(Node):
    """(pipeline).A.B: fields looked up on a computed value."""

    __slots__ = ("fields", "node")

    def __init__(self, pos: int, node: Node, fields: tuple[str, ...]) -> None:
        self.pos, self.node, self.fields = pos, node, fields

    def __str__(self) -> str:
        base = f"({self.node})" if isinstance(self.node, Pipe) else str(self.node)
        return base + "".join("." + f for f in self.fields)


class Command(Node):
    __slots__ = ("args",)

    def __init__(self, pos: int, args: tuple[Node, ...]) -> None:
        self.pos, self.args = pos, args

    def __str__(self) -> str:
        return " ".join(f"({a})" if isinstance(a, Pipe) else str(a) for a in self.args)


class Pipe(Node):
    """[$a, $b :=] cmd | cmd | ..."""

    __slots__ = ("cmds", "decl", "is_assign")

    def __init__(self, pos: int, decl: list[str], is_assign: bool, cmds: list[Command]) -> None:
        self.pos, self.decl, self.is_assign, self.cmds = (
            pos,
            tuple(decl),
            is_assign,
            tuple(cmds),
        )

    def __str__(self) -> str:
        head = ", ".join(self.decl) + (" = " if self.is_assign else " := ") if self.decl else ""
        return head + " | ".join(str(c) for c in self.cmds)


class Action(Node):
    __slots__ = ("pipe",)

    def __init__(self, pos: int, pipe: Pipe) -> None:
        self.pos, self.pipe = pos, pipe


class Branch(Node):
    __slots__ = ("body", "else_body", "pipe")
    keyword = ""

    def __init__(self, pipe: Pipe, body: list, else_body: list | None) -> None:
        self.pos, self.pipe, self.body, self.else_body = pipe.pos, pipe, body, else_body

    def __str__(self) -> str:
        return f"{{{{{self.keyword} {self.pipe}}}}}"


class If(Branch):
    __slots__ = ()
    keyword = "if"


class With(Branch):
    __slots__ = ()
    keyword = "with"


class Range(Branch):
    __slots__ = ()
    keyword = "range"


class TemplateCall(Node):
    __slots__ = ("name", "pipe")

    def __init__(self, pos: int, name: str, pipe: Pipe | None) -> None:
        self.pos, self.name, self.pipe = pos, name, pipe

    def __str__(self) -> str:
        return f"{{{{template {quote(self.name)}" + (f" {self.pipe}" if self.pipe else "") + "}}"


class _Marker(Node):
    __slots__ = ()

    def __init__(self, pos: int) -> None:
        self.pos = pos


class Break(_Marker):
    __slots__ = ()


class Continue(_Marker):
    __slots__ = ()


class Else(_Marker):
    """Parser-internal: ends an item list."""

    __slots__ = ()

    def __str__(self) -> str:
        return "{{else}}"


class End(_Marker):
    """Parser-internal: ends an item list."""

    __slots__ = ()

    def __str__(self) -> str:
        return "{{end}}"
