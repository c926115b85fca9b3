"""The executor (Go's exec.go), bounded because a template may come from a client."""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from corral.gocompat import quote
from corral.gotemplate.fmt import fmt_v, print_value, sorted_items
from corral.gotemplate.funcs import and_, or_
from corral.gotemplate.lex import line_of
from corral.gotemplate.node import (
    Action,
    Break,
    Chain,
    Command,
    Const,
    Continue,
    Dot,
    Field,
    Ident,
    If,
    Nil,
    Node,
    Pipe,
    Range,
    TemplateCall,
    Text,
    Variable,
    With,
)
from corral.gotemplate.values import (
    MISSING,
    NO_ARG,
    FuncError,
    TemplateError,
    TemplateExecError,
    go_type,
    truth,
)

if TYPE_CHECKING:
    from corral.gotemplate.template import Template


class _BreakSignal(Exception):
    pass


class _ContinueSignal(Exception):
    pass


_MAX_TEMPLATE_DEPTH = 100
# A template may come from the client (``template`` on /api/generate, /api/create), so its
# execution is bounded: ``{{range 1000000000}}`` or a printf padded to ten million, repeated,
# must end in an error, not in minutes of CPU and gigabytes of output.
MAX_RANGE_STEPS = 1_000_000
MAX_OUTPUT_CHARS = 128 << 20


class Output(list):
    """The rendered pieces, with the budget of one render: output size and range iterations."""

    __slots__ = ("chars", "steps")

    def __init__(self) -> None:
        super().__init__()
        self.chars = 0
        self.steps = 0

    def append(self, piece: str) -> None:
        self.chars += len(piece)
        if self.chars > MAX_OUTPUT_CHARS:
            raise TemplateExecError(f"template: output exceeds {MAX_OUTPUT_CHARS} characters")
        super().append(piece)

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_RANGE_STEPS:
            raise TemplateExecError(f"template: range exceeds {MAX_RANGE_STEPS} iterations")


class State:
    """One template invocation: its output, variable stack and name."""

    __slots__ = ("depth", "name", "out", "tmpl", "vars")

    def __init__(self, tmpl: Template, name: str, out: Output, dot: Any, depth: int) -> None:
        self.tmpl, self.name, self.out, self.depth = tmpl, name, out, depth
        # A stack of [name, value]; "$" is the invocation's data.  No dynamic
        # scoping: a {{template}} call starts a fresh stack, like Go.
        self.vars: list[list] = [["$", dot]]

    def fail(self, node: Node, msg: str) -> NoReturn:
        src = self.tmpl._source
        line = line_of(src, node.pos)
        col = node.pos - (src.rfind("\n", 0, node.pos) + 1)
        raise TemplateExecError(f'template: :{line}:{col}: executing "{self.name}" at <{node}>: {msg}')

    # -- variables -------------------------------------------------------------
    def var(self, name: str) -> Any:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry[1]
        raise TemplateExecError(f"template: undefined variable: {name}")

    def set_var(self, name: str, value: Any, node: Node) -> None:
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1] = value
                return
        self.fail(node, f"undefined variable: {name}")

    # -- statements ------------------------------------------------------------
    def walk(self, dot: Any, nodes: list) -> None:
        out = self.out
        for node in nodes:
            t = type(node)
            if t is Text:
                out.append(node.text)
            elif t is Action:
                value = self.pipeline(dot, node.pipe)
                if not node.pipe.decl:  # "{{ $x := 1 }}" prints nothing
                    out.append(print_value(value))
            elif t is If or t is With:
                mark = len(self.vars)
                value = self.pipeline(dot, node.pipe)
                if truth(value):
                    self.walk(value if t is With else dot, node.body)
                elif node.else_body is not None:
                    self.walk(dot, node.else_body)
                del self.vars[mark:]
            elif t is Range:
                self.range(dot, node)
            elif t is TemplateCall:
                self.call_template(dot, node)
            elif t is Break:
                raise _BreakSignal
            elif t is Continue:
                raise _ContinueSignal
            else:
                raise AssertionError(f"unknown node {node!r}")

    def range(self, dot: Any, node: Range) -> None:
        mark = len(self.vars)
        value = self.pipeline(dot, node.pipe)
        decl, is_assign = node.pipe.decl, node.pipe.is_assign
        if value is None or value is MISSING:
            items: Any = ()  # a nil slice or map: not an error
        elif isinstance(value, (list, tuple)):
            items = enumerate(value)
        elif isinstance(value, Mapping):
            items = sorted_items(value)
        elif isinstance(value, int) and not isinstance(value, bool):  # Go 1.22 range-over-int
            if len(decl) > 1:
                self.fail(node, f"can't use {value} to iterate over more than one variable")
            items = ((n, n) for n in range(value))
        else:
            self.fail(node, f"range can't iterate over {fmt_v(value)}")
        top = len(self.vars)  # the declared variables sit just below here
        ran = False
        try:
            for key, elem in items:
                self.out.step()
                ran = True
                if decl:
                    if is_assign:
                        # With two variables the key comes first; with one, the element.
                        self.set_var(decl[0], key if len(decl) > 1 else elem, node)
                        if len(decl) > 1:
                            self.set_var(decl[1], elem, node)
                    else:
                        self.vars[top - 1][1] = elem
                        if len(decl) > 1:
                            self.vars[top - 2][1] = key
                try:
                    self.walk(elem, node.body)
                except _ContinueSignal:
                    pass
                del self.vars[top:]  # each iteration's own variables
        except _BreakSignal:
            ran = True  # {{break}} never falls through to {{else}}
        if not ran and node.else_body is not None:
            self.walk(dot, node.else_body)
        del self.vars[mark:]

    def call_template(self, dot: Any, node: TemplateCall) -> None:
        body = self.tmpl._trees.get(node.name)
        if body is None:
            self.fail(node, f"template {quote(node.name)} not defined")
        if self.depth >= _MAX_TEMPLATE_DEPTH:
            self.fail(node, f"exceeded maximum template depth ({_MAX_TEMPLATE_DEPTH})")
        arg = self.pipeline(dot, node.pipe) if node.pipe else None
        State(self.tmpl, node.name, self.out, arg, self.depth + 1).walk(arg, body)

    # -- expressions -----------------------------------------------------------
    def pipeline(self, dot: Any, pipe: Pipe) -> Any:
        value = NO_ARG
        for cmd in pipe.cmds:
            value = self.command(dot, cmd, value)  # the previous value is piped in last
        for name in pipe.decl:
            if pipe.is_assign:
                self.set_var(name, value, pipe)
            else:
                self.vars.append([name, value])
        return value

    def command(self, dot: Any, cmd: Command, final: Any) -> Any:
        # Nodes are told apart by their exact type (faster than isinstance), which mypy cannot
        # follow: they are Any here and in arg().
        first: Any = cmd.args[0]
        t = type(first)
        if t is Field:
            return self.field_chain(dot, dot, first, first.idents, cmd.args[1:], final)
        if t is Ident:
            return self.call_function(dot, first, cmd, final)
        if t is Variable and first.idents:
            value = self.var(first.name)
            return self.field_chain(dot, value, first, first.idents, cmd.args[1:], final)
        if t is Chain:
            return self.chain(dot, first, cmd.args[1:], final)
        if len(cmd.args) > 1 or final is not NO_ARG:
            self.fail(cmd, f"can't give argument to non-function {first}")
        return self.arg(dot, first, cmd)

    def arg(self, dot: Any, node: Any, cmd: Node | None = None) -> Any:
        """Evaluate one operand, with no arguments of its own."""
        t = type(node)
        if t is Field:
            return self.field_chain(dot, dot, node, node.idents, (), NO_ARG)
        if t is Variable:
            value = self.var(node.name)
            if node.idents:
                return self.field_chain(dot, value, node, node.idents, (), NO_ARG)
            return value
        if t is Const:
            return node.value
        if t is Dot:
            return dot
        if t is Pipe:
            return self.pipeline(dot, node)
        if t is Ident:
            return self.call_function(dot, node, Command(node.pos, (node,)), NO_ARG)
        if t is Chain:
            return self.chain(dot, node, (), NO_ARG)
        if t is Nil:
            if cmd is not None:
                self.fail(cmd, "nil is not a command")
            return None
        raise AssertionError(f"unknown operand {node!r}")

    def chain(self, dot: Any, node: Chain, args: tuple, final: Any) -> Any:
        if type(node.node) is Nil:
            self.fail(node, f"indirection through explicit nil in {node}")
        receiver = self.arg(dot, node.node)
        return self.field_chain(dot, receiver, node, node.fields, args, final)

    def field_chain(
        self,
        dot: Any,
        receiver: Any,
        node: Node,
        idents: tuple[str, ...],
        args: tuple,
        final: Any,
    ) -> Any:
        """receiver.A.B.C, where only the last field may take arguments."""
        for name in idents[:-1]:
            receiver = self.field(dot, receiver, name, node, (), NO_ARG)
        return self.field(dot, receiver, idents[-1], node, args, final)

    def field(self, dot: Any, receiver: Any, name: str, node: Node, args: tuple, final: Any) -> Any:
        has_args = bool(args) or final is not NO_ARG
        if type(receiver) is dict or isinstance(receiver, Mapping):
            if has_args:
                self.fail(node, f"{name} is not a method but has arguments")
            return receiver.get(name, MISSING)
        if receiver is None or receiver is MISSING:
            return MISSING  # a zero-valued struct field: stays missing, never errors
        if isinstance(receiver, (str, int, float, list, tuple, bytes)):
            self.fail(node, f"can't evaluate field {name} in type {go_type(receiver)}")
        if name.startswith("_"):  # Go only exposes exported fields; keep dunders out
            self.fail(
                node,
                f"{name} is an unexported field of struct type {type(receiver).__name__}",
            )
        value = getattr(receiver, name, MISSING)
        if isinstance(value, (types.MethodType, types.BuiltinMethodType)):
            return self.call(dot, value, name, node, args, final, builtin=False)
        if has_args:
            self.fail(node, f"{name} is not a method but has arguments")
        return value

    def call_function(self, dot: Any, ident: Ident, cmd: Command, final: Any) -> Any:
        if ident.fn is and_ or ident.fn is or_:
            # Go evaluates and/or lazily and returns the deciding operand.
            arg_nodes = cmd.args[1:]
            if not arg_nodes and final is NO_ARG:
                self.fail(cmd, f"wrong number of args for {ident.name}: want at least 1 got 0")
            want = ident.fn is or_
            value = None
            for a in arg_nodes:
                value = self.arg(dot, a)
                if truth(value) == want:
                    return value
            return value if final is NO_ARG else final
        return self.call(dot, ident.fn, ident.name, cmd, cmd.args[1:], final, ident.builtin)

    def call(
        self,
        dot: Any,
        fn: Callable[..., Any],
        name: str,
        node: Node,
        arg_nodes: tuple,
        final: Any,
        builtin: bool,
    ) -> Any:
        args = [self.arg(dot, a) for a in arg_nodes]
        if final is not NO_ARG:
            args.append(final)
        if not builtin:  # callers' functions never see the MISSING sentinel
            args = [None if a is MISSING else a for a in args]
        try:
            return fn(*args)
        except TemplateError:
            raise
        except FuncError as e:
            self.fail(node, f"error calling {name}: {e}")
        except Exception as e:
            if isinstance(e, TypeError):
                arity = _arity_error(fn, name, len(args))
                if arity:
                    self.fail(node, arity)
            self.fail(node, f"error calling {name}: {e}")


def _arity_error(fn: Callable[..., Any], name: str, got: int) -> str | None:
    """Go's 'wrong number of args' message when fn cannot take `got` args."""
    try:
        sig = inspect.signature(fn)
        sig.bind(*range(got))
        return None
    except TypeError:
        params = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        want = sum(1 for p in params if p.default is p.empty)
        variadic = any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values())
        want_s = f"at least {want}" if variadic else str(want)
        return f"wrong number of args for {name}: want {want_s} got {got}"
    except ValueError:  # no signature available
        return None
