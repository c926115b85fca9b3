"""The parser: a recursive-descent port of Go's parse.Tree."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from corral.gocompat import quote
from corral.gotemplate.lex import (
    ASSIGN,
    BOOL,
    CHAR,
    CHARCONST,
    DECLARE,
    DOT,
    EOF,
    FIELD,
    IDENT,
    KEYWORD,
    LDELIM,
    LPAREN,
    NIL,
    NUMBER,
    PIPE,
    RAWSTRING,
    RDELIM,
    RPAREN,
    SPACE,
    SPACE_TOK,
    STRING,
    TEXT,
    VAR,
    Lexer,
    Tok,
    line_of,
    parse_number,
    unquote_char,
    unquote_string,
)
from corral.gotemplate.node import (
    Action,
    Branch,
    Break,
    Chain,
    Command,
    Const,
    Continue,
    Dot,
    Else,
    End,
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
from corral.gotemplate.values import TemplateError


def _is_empty_tree(nodes: list) -> bool:
    return all(isinstance(n, Text) and not n.text.strip(SPACE) for n in nodes)


class Parser:
    def __init__(self, src: str, funcs: Mapping[str, Callable[..., Any]]) -> None:
        self.src = src
        self.funcs = funcs
        self.toks = Lexer(src).run()
        self.last = len(self.toks) - 1  # index of EOF, which repeats forever
        self.i = 0
        self.cur = self.toks[0]  # most recent token, whose line errors report
        self.vars = ["$"]  # variables in scope, to reject undefined ones like Go
        self.range_depth = 0  # break/continue are only legal inside range
        self.trees: dict[str, list] = {}

    # -- token stream ----------------------------------------------------
    def next(self) -> Tok:
        self.cur = self.toks[min(self.i, self.last)]
        self.i += 1
        return self.cur

    def backup(self) -> None:
        self.i -= 1

    def peek(self) -> Tok:
        self.cur = self.toks[min(self.i, self.last)]
        return self.cur

    def next_non_space(self) -> Tok:
        tok = self.next()
        while tok.kind == SPACE_TOK:
            tok = self.next()
        return tok

    def peek_non_space(self) -> Tok:
        tok = self.next_non_space()
        self.backup()
        return tok

    def error(self, msg: str) -> NoReturn:
        raise TemplateError(f"template: :{line_of(self.src, self.cur.pos)}: {msg}")

    def unexpected(self, tok: Tok, context: str) -> NoReturn:
        self.error(f"unexpected {tok} in {context}")

    def expect(self, kind: str, context: str) -> Tok:
        tok = self.next_non_space()
        if tok.kind != kind:
            self.unexpected(tok, context)
        return tok

    def is_keyword(self, tok: Tok, *words: str) -> bool:
        return tok.kind == KEYWORD and tok.val in words

    # -- structure ---------------------------------------------------------
    def parse(self) -> dict[str, list]:
        root: list = []
        while self.peek().kind != EOF:
            if self.peek().kind == LDELIM:
                mark = self.i
                self.next()
                if self.is_keyword(self.next_non_space(), "define"):
                    self.definition()
                    continue
                self.i = mark
            node = self.text_or_action()
            if isinstance(node, (Else, End)):
                self.error(f"unexpected {node}")
            root.append(node)
        self.add("", root)
        return self.trees

    def add(self, name: str, nodes: list) -> None:
        """Register a template; an empty definition may be replaced (Go's Tree.add)."""
        existing = self.trees.get(name)
        if existing is None or _is_empty_tree(existing):
            self.trees[name] = nodes
        elif not _is_empty_tree(nodes):
            self.error(f"template: multiple definition of template {quote(name)}")

    def sub_tree(self) -> tuple[list, Node]:
        """Parse a define/block body: it sees only its own variables."""
        saved = self.vars, self.range_depth
        self.vars, self.range_depth = ["$"], 0
        nodes, end = self.item_list()
        self.vars, self.range_depth = saved
        return nodes, end

    def definition(self) -> None:
        context = "define clause"
        name = self.template_name(self.next_non_space(), context)
        self.expect(RDELIM, context)
        nodes, end = self.sub_tree()
        if not isinstance(end, End):
            self.error(f"unexpected {end} in {context}")
        self.add(name, nodes)

    def item_list(self) -> tuple[list, Node]:
        """Nodes up to the {{end}} or {{else}} that closes them."""
        nodes: list = []
        while self.peek_non_space().kind != EOF:
            node = self.text_or_action()
            if isinstance(node, (Else, End)):
                return nodes, node
            nodes.append(node)
        self.error("unexpected EOF")

    def text_or_action(self) -> Node:
        tok = self.next_non_space()
        if tok.kind == TEXT:
            return Text(tok.pos, tok.val)
        if tok.kind == LDELIM:
            return self.action()
        self.unexpected(tok, "input")

    def action(self) -> Node:
        tok = self.next_non_space()
        if tok.kind == KEYWORD:
            control = {
                "block": self.block_control,
                "break": self.break_control,
                "continue": self.break_control,
                "else": self.else_control,
                "end": self.end_control,
                "if": self.branch_control,
                "range": self.branch_control,
                "template": self.template_control,
                "with": self.branch_control,
            }.get(tok.val)
            if control:
                return control(tok)
        self.backup()
        # Variables declared by a plain action stay in scope until the enclosing {{end}}.
        return Action(tok.pos, self.pipeline("command", RDELIM))

    def branch_control(self, tok: Tok) -> Branch:
        """{{if|with|range pipeline}} list [{{else}} list] {{end}}"""
        context = tok.val
        mark = len(self.vars)
        pipe = self.pipeline(context, RDELIM)
        if context == "range":
            self.range_depth += 1
        body, end = self.item_list()
        if context == "range":
            self.range_depth -= 1
        else_body = None
        if isinstance(end, Else):
            nxt = self.peek()
            if context in ("if", "with") and self.is_keyword(nxt, context):
                # {{if a}}x{{else if b}}y{{end}} means {{if a}}x{{else}}{{if b}}y{{end}}{{end}};
                # the nested branch consumes the single {{end}}.
                self.next()
                else_body = [self.branch_control(nxt)]
            else:
                else_body, end = self.item_list()
                if not isinstance(end, End):
                    self.error(f"expected end; found {end}")
        del self.vars[mark:]  # the pipeline's and body's variables go out of scope
        node_type = {"if": If, "with": With, "range": Range}[context]
        return node_type(pipe, body, else_body)

    def break_control(self, tok: Tok) -> Node:
        nxt = self.next_non_space()
        if nxt.kind != RDELIM:
            self.unexpected(nxt, f"{{{{{tok.val}}}}}")
        if not self.range_depth:
            self.error(f"{{{{{tok.val}}}}} outside {{{{range}}}}")
        return Break(tok.pos) if tok.val == "break" else Continue(tok.pos)

    def else_control(self, tok: Tok) -> Node:
        nxt = self.peek_non_space()
        if self.is_keyword(nxt, "if", "with"):
            return Else(nxt.pos)  # "else if"/"else with": leave the keyword pending
        self.expect(RDELIM, "else")
        return Else(tok.pos)

    def end_control(self, tok: Tok) -> Node:
        self.expect(RDELIM, "end")
        return End(tok.pos)

    def template_name(self, tok: Tok, context: str) -> str:
        if tok.kind not in (STRING, RAWSTRING):
            self.unexpected(tok, context)
        return self.unquote(tok)

    def template_control(self, tok: Tok) -> Node:
        context = "template clause"
        name = self.template_name(self.next_non_space(), context)
        pipe = None
        if self.next_non_space().kind != RDELIM:
            self.backup()
            pipe = self.pipeline(context, RDELIM)
        return TemplateCall(tok.pos, name, pipe)

    def block_control(self, tok: Tok) -> Node:
        """{{block "name" pipeline}} list {{end}} = define + template."""
        context = "block clause"
        name = self.template_name(self.next_non_space(), context)
        pipe = self.pipeline(context, RDELIM)
        nodes, end = self.sub_tree()
        if not isinstance(end, End):
            self.error(f"unexpected {end} in {context}")
        self.add(name, nodes)
        return TemplateCall(tok.pos, name, pipe)

    # -- pipelines -----------------------------------------------------------
    def pipeline(self, context: str, end: str) -> Pipe:
        pos = self.peek_non_space().pos
        decl: list[str] = []
        is_assign = False
        while self.peek_non_space().kind == VAR:
            mark = self.i
            var = self.next_non_space()
            nxt = self.peek_non_space()
            if nxt.kind in (DECLARE, ASSIGN):
                self.next_non_space()
                is_assign = nxt.kind == ASSIGN
                decl.append(var.val)
                self.vars.append(var.val)
                break
            if nxt.kind == CHAR and nxt.val == ",":
                self.next_non_space()
                decl.append(var.val)
                self.vars.append(var.val)
                if context == "range" and len(decl) < 2:
                    if self.peek_non_space().kind in (VAR, RDELIM, RPAREN):
                        continue  # the second variable of "range $i, $e :="
                    self.error("range can only initialize variables")
                self.error(f"too many declarations in {context}")
            self.i = mark  # just a variable used as an operand
            break
        cmds: list[Command] = []
        while True:
            tok = self.next_non_space()
            if tok.kind == end:
                break
            if tok.kind in (
                BOOL,
                CHARCONST,
                DOT,
                FIELD,
                IDENT,
                NUMBER,
                NIL,
                RAWSTRING,
                STRING,
                VAR,
                LPAREN,
            ):
                self.backup()
                cmds.append(self.command())
            else:
                self.unexpected(tok, context)
        if not cmds:
            self.error(f"missing value for {context}")
        for n, cmd in enumerate(cmds[1:], start=2):
            if isinstance(cmd.args[0], (Const, Dot)):  # includes nil
                self.error(f"non executable command in pipeline stage {n}")
        return Pipe(pos, decl, is_assign, cmds)

    def command(self) -> Command:
        """Space-separated operands up to '|' (consumed) or the closing delimiter."""
        pos = self.peek_non_space().pos
        args: list[Node] = []
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                args.append(operand)
            tok = self.next()
            if tok.kind == SPACE_TOK:
                continue
            if tok.kind in (RDELIM, RPAREN):
                self.backup()
            elif tok.kind != PIPE:
                self.error(f"unexpected {tok} in operand")
            break
        if not args:
            self.error("empty command")
        return Command(pos, tuple(args))

    def operand(self) -> Node | None:
        """A term followed by any number of .Field accesses."""
        node = self.term()
        if node is None or self.peek().kind != FIELD:
            return node
        fields = []
        while self.peek().kind == FIELD:
            fields.append(self.next().val[1:])
        if isinstance(node, Field):
            return Field(node.pos, node.idents + tuple(fields))
        if isinstance(node, Variable):
            return Variable(node.pos, node.name, node.idents + tuple(fields))
        if isinstance(node, (Const, Dot)):
            self.error(f"unexpected . after term {quote(str(node))}")
        return Chain(node.pos, node, tuple(fields))

    def term(self) -> Node | None:
        tok = self.next_non_space()
        kind, pos = tok.kind, tok.pos
        if kind == IDENT:
            fn = self.funcs.get(tok.val)
            if fn is None:
                self.error(f"function {quote(tok.val)} not defined")
            return Ident(pos, tok.val, fn)
        if kind == DOT:
            return Dot(pos)
        if kind == NIL:
            return Nil(pos)
        if kind == VAR:
            if tok.val not in self.vars:
                self.error(f"undefined variable {quote(tok.val)}")
            return Variable(pos, tok.val)
        if kind == FIELD:
            return Field(pos, (tok.val[1:],))
        if kind == BOOL:
            return Const(pos, tok.val == "true", tok.val)
        if kind in (STRING, RAWSTRING):
            return Const(pos, self.unquote(tok), tok.val)
        if kind in (NUMBER, CHARCONST):
            try:
                value = parse_number(tok.val) if kind == NUMBER else unquote_char(tok.val)
            except ValueError as e:
                msg = str(e) if kind == CHARCONST else f"illegal number syntax: {quote(tok.val)}"
                self.error(msg)
            return Const(pos, value, tok.val)
        if kind == LPAREN:
            return self.pipeline("parenthesized pipeline", RPAREN)
        self.backup()
        return None

    def unquote(self, tok: Tok) -> str:
        try:
            return unquote_string(tok.val)
        except ValueError as e:
            self.error(str(e))
