"""Template: a parsed template, its rendering and the data fields it reads."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from corral.gotemplate.exec import Output, State
from corral.gotemplate.funcs import BUILTINS
from corral.gotemplate.node import (
    Action,
    Chain,
    Const,
    Dot,
    Field,
    Ident,
    If,
    Pipe,
    Range,
    TemplateCall,
    Variable,
    With,
)
from corral.gotemplate.parse import Parser
from corral.gotemplate.values import TemplateError, TemplateExecError

# variables(): which top-level data fields a template reads.


def _root_fields(trees: dict[str, list]) -> set[str]:
    """Field names looked up directly on the template's data, wherever that
    data is reachable: dot at top level, `$`, variables bound to it, and dot in
    templates invoked with it.  Fields of other values (.Content inside
    `range .Messages`) are not included."""
    found: set[str] = set()
    visited: set[tuple[str, bool]] = set()

    def is_root(node: Any, dot_root: bool, root_vars: set[str]) -> bool:
        t = type(node)
        if t is Dot:
            return dot_root
        if t is Variable:
            return not node.idents and node.name in root_vars
        if t is Pipe:
            return pipe_is_root(node, dot_root, root_vars)
        return False

    def pipe_is_root(pipe: Pipe, dot_root: bool, root_vars: set[str]) -> bool:
        return (
            len(pipe.cmds) == 1 and len(pipe.cmds[0].args) == 1 and is_root(pipe.cmds[0].args[0], dot_root, root_vars)
        )

    def visit_arg(a: Any, dot_root: bool, root_vars: set[str]) -> None:
        t = type(a)
        if (t is Field and dot_root) or (t is Variable and a.idents and a.name in root_vars):
            found.add(a.idents[0])
        elif t is Chain:
            visit_arg(a.node, dot_root, root_vars)
            if is_root(a.node, dot_root, root_vars):
                found.add(a.fields[0])
        elif t is Pipe:
            visit_pipe(a, dot_root, root_vars)

    def visit_pipe(pipe: Pipe, dot_root: bool, root_vars: set[str]) -> None:
        for cmd in pipe.cmds:
            args = cmd.args
            for a in args:
                visit_arg(a, dot_root, root_vars)
            # index . "Key" reads a field too
            if (
                type(args[0]) is Ident
                and args[0].name == "index"
                and len(args) >= 3
                and is_root(args[1], dot_root, root_vars)
                and type(args[2]) is Const
                and isinstance(args[2].value, str)
            ):
                found.add(args[2].value)
        rooted = pipe_is_root(pipe, dot_root, root_vars)
        for name in pipe.decl:
            (root_vars.add if rooted else root_vars.discard)(name)

    def visit(nodes: list, dot_root: bool, root_vars: set[str]) -> None:
        for n in nodes:
            t = type(n)
            if t is Action:
                visit_pipe(n.pipe, dot_root, root_vars)
            elif t is If or t is With or t is Range:
                visit_pipe(n.pipe, dot_root, root_vars)
                if t is If:
                    body_root = dot_root
                elif t is With:
                    body_root = pipe_is_root(n.pipe, dot_root, root_vars)
                else:
                    body_root = False
                    root_vars.difference_update(n.pipe.decl)  # they hold elements
                visit(n.body, body_root, root_vars)
                if n.else_body is not None:
                    visit(n.else_body, dot_root, root_vars)
            elif t is TemplateCall:
                rooted = False
                if n.pipe is not None:
                    visit_pipe(n.pipe, dot_root, root_vars)
                    rooted = pipe_is_root(n.pipe, dot_root, root_vars)
                if (n.name, rooted) not in visited and n.name in trees:
                    visited.add((n.name, rooted))
                    visit(trees[n.name], rooted, {"$"} if rooted else set())

    visit(trees.get("", []), True, {"$"})
    return found


class Template:
    """A parsed Go text/template.

    >>> Template("{{ range .Messages }}{{ .Role }}: {{ .Content }}\\n{{ end }}").render(
    ...     {"Messages": [{"Role": "user", "Content": "hi"}]})
    'user: hi\\n'

    `funcs` adds functions (or replaces builtins) by name; they are called
    with the evaluated arguments and may raise to fail the render.
    """

    def __init__(self, source: str, funcs: Mapping[str, Callable[..., Any]] | None = None) -> None:
        table = dict(BUILTINS)
        for name, fn in (funcs or {}).items():
            if not callable(fn):
                raise TypeError(f"template function {name!r} is not callable")
            table[name] = fn
        self._source = source
        try:
            self._trees = Parser(source, table).parse()
        except RecursionError:  # Go's parser has a depth limit (10,000) too; ours is Python's
            raise TemplateError("template: :1: max expression depth exceeded") from None
        self._root = self._trees.get("", [])
        self._fields = frozenset(_root_fields(self._trees))

    @property
    def source(self) -> str:
        return self._source

    def render(self, data: Any) -> str:
        """Execute the template with `data` as dot; raises TemplateExecError."""
        out = Output()
        try:
            State(self, "", out, data, 0).walk(data, self._root)
        except RecursionError:
            raise TemplateExecError("template: exceeded maximum nesting depth") from None
        return "".join(out)

    def variables(self) -> set[str]:
        """Top-level data fields the template reads, e.g. {"System", "Messages"}."""
        return set(self._fields)

    def __repr__(self) -> str:
        return f"Template({self._source[:40]!r}{'...' if len(self._source) > 40 else ''})"
