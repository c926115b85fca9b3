"""The lexer (Go's parse/lex.go) and the literals it reads: strings, characters, numbers."""

from __future__ import annotations

import re
import types
from typing import NoReturn

from corral.gocompat import quote
from corral.gotemplate.values import TemplateError

# Lexer.  Produces a flat token list; whitespace inside actions is a token
# because Go's grammar needs it ("$x := 1" vs "$x 1", ".A.B" vs ".A .B").

SPACE = " \t\r\n"
_KEYWORDS = frozenset(
    [
        "block",
        "break",
        "continue",
        "define",
        "else",
        "end",
        "if",
        "range",
        "template",
        "with",
    ]
)

# token kinds
TEXT, LDELIM, RDELIM, SPACE_TOK, EOF = "text", "{{", "}}", "space", "EOF"
FIELD, IDENT, VAR, KEYWORD = "field", "identifier", "variable", "keyword"
STRING, RAWSTRING, CHARCONST, NUMBER, BOOL, NIL = (
    "string",
    "raw string",
    "char constant",
    "number",
    "bool",
    "nil",
)
DOT, PIPE, LPAREN, RPAREN, DECLARE, ASSIGN, CHAR = (
    ".",
    "|",
    "(",
    ")",
    ":=",
    "=",
    "char",
)

_NUMBER_RE = re.compile(
    r"[+-]?(?:0[xX][0-9a-fA-F_]*(?:\.[0-9a-fA-F_]*)?(?:[pP][+-]?[0-9_]*)?"
    r"|0[oO][0-7_]*|0[bB][01_]*|[0-9_]*(?:\.[0-9_]*)?(?:[eE][+-]?[0-9_]*)?)i?"
)


class Tok:
    __slots__ = ("kind", "pos", "val")

    def __init__(self, kind: str, val: str, pos: int) -> None:
        self.kind, self.val, self.pos = kind, val, pos

    def __str__(self) -> str:  # as Go's item.String(), for error messages
        if self.kind == EOF:
            return "EOF"
        if self.kind == KEYWORD:
            return f"<{self.val}>"
        if len(self.val) > 10:
            return quote(self.val[:10]) + "..."
        return quote(self.val)


def line_of(src: str, pos: int) -> int:
    return src.count("\n", 0, pos) + 1


def _is_alnum(c: str) -> bool:
    return c == "_" or c.isalnum()


def _rune_desc(c: str) -> str:
    """Go's %#U: U+0041 'A'."""
    return f"U+{ord(c):04X}" + (f" '{c}'" if c.isprintable() else "")


class Lexer:
    def __init__(self, src: str) -> None:
        self.src = src
        self.toks: list[Tok] = []

    def error(self, pos: int, msg: str) -> NoReturn:
        raise TemplateError(f"template: :{line_of(self.src, pos)}: {msg}")

    def emit(self, kind: str, val: str, pos: int) -> None:
        self.toks.append(Tok(kind, val, pos))

    def run(self) -> list[Tok]:
        src, pos = self.src, 0
        while True:
            start = src.find("{{", pos)
            text = src[pos:] if start < 0 else src[pos:start]
            if start >= 0 and self.left_trim(start):
                text = text.rstrip(SPACE)
            if text:
                self.emit(TEXT, text, pos)
            if start < 0:
                break
            pos = self.action(start)
        self.emit(EOF, "", len(src))
        return self.toks

    def left_trim(self, start: int) -> bool:
        """'{{- ' (dash then whitespace) trims the preceding text."""
        s = self.src
        return s.startswith("-", start + 2) and start + 3 < len(s) and s[start + 3] in SPACE

    def right_delim(self, pos: int) -> int:
        """Length of the right delimiter at pos: 4 for ' -}}', 2 for '}}', else 0."""
        s = self.src
        if s.startswith("}}", pos):
            return 2
        if s[pos] in SPACE and s.startswith("-}}", pos + 1):
            return 4
        return 0

    def skip_space(self, pos: int) -> int:
        while pos < len(self.src) and self.src[pos] in SPACE:
            pos += 1
        return pos

    def at_terminator(self, pos: int) -> bool:
        """What may follow a word: Go's lexer.atTerminator."""
        s = self.src
        return pos >= len(s) or s[pos] in SPACE or s[pos] in ".,|:()" or s.startswith("}}", pos)

    def word_end(self, pos: int) -> int:
        s = self.src
        while pos < len(s) and _is_alnum(s[pos]):
            pos += 1
        if not self.at_terminator(pos):
            self.error(pos, f"bad character {_rune_desc(s[pos])}")
        return pos

    def action(self, start: int) -> int:
        """Lex one {{ ... }} starting at its '{{'; returns the position after it."""
        src, n = self.src, len(self.src)
        pos = start + (4 if self.left_trim(start) else 2)
        if src.startswith("/*", pos):
            return self.comment(pos)
        self.emit(LDELIM, "{{", start)
        depth = 0
        while True:
            if pos >= n:
                self.error(pos, "unclosed action")
            c = src[pos]
            delim = self.right_delim(pos)
            if delim:
                if depth:
                    self.error(pos, "unclosed left paren")
                self.emit(RDELIM, "}}", pos)
                pos += delim
                return self.skip_space(pos) if delim == 4 else pos
            if c in SPACE:
                end = pos
                # Stop before a space that begins a " -}}" trim marker.
                while end < n and src[end] in SPACE and not src.startswith("-}}", end + 1):
                    end += 1
                if end > pos:
                    self.emit(SPACE_TOK, src[pos:end], pos)
                pos = end
            elif c == "=":
                self.emit(ASSIGN, c, pos)
                pos += 1
            elif c == ":":
                if not src.startswith(":=", pos):
                    self.error(pos, "expected :=")
                self.emit(DECLARE, ":=", pos)
                pos += 2
            elif c == "|":
                self.emit(PIPE, c, pos)
                pos += 1
            elif c == '"':
                pos = self.quoted(pos, STRING, "unterminated quoted string")
            elif c == "'":
                pos = self.quoted(pos, CHARCONST, "unterminated character constant")
            elif c == "`":
                end = src.find("`", pos + 1)
                if end < 0:
                    self.error(pos, "unterminated raw quoted string")
                self.emit(RAWSTRING, src[pos : end + 1], pos)
                pos = end + 1
            elif c == "$":
                end = self.word_end(pos + 1)
                self.emit(VAR, src[pos:end], pos)
                pos = end
            elif c == "." and src[pos + 1 : pos + 2].isdigit():
                pos = self.number(pos)
            elif c == ".":
                end = self.word_end(pos + 1)
                self.emit(FIELD if end > pos + 1 else DOT, src[pos:end], pos)
                pos = end
            elif c in "+-" or c.isdigit():
                pos = self.number(pos)
            elif _is_alnum(c):
                end = self.word_end(pos)
                word = src[pos:end]
                kind = (
                    KEYWORD
                    if word in _KEYWORDS
                    else BOOL
                    if word in ("true", "false")
                    else NIL
                    if word == "nil"
                    else IDENT
                )
                self.emit(kind, word, pos)
                pos = end
            elif c == "(":
                depth += 1
                self.emit(LPAREN, c, pos)
                pos += 1
            elif c == ")":
                depth -= 1
                if depth < 0:
                    self.error(pos, "unexpected right paren")
                self.emit(RPAREN, c, pos)
                pos += 1
            elif c.isascii() and c.isprintable():
                self.emit(CHAR, c, pos)  # e.g. ','; the parser decides if it fits
                pos += 1
            else:
                self.error(pos, f"unrecognized character in action: {_rune_desc(c)}")

    def comment(self, pos: int) -> int:
        """A comment must fill its action: {{/* ... */}} or {{- /* ... */ -}}."""
        end = self.src.find("*/", pos + 2)
        if end < 0:
            self.error(pos, "unclosed comment")
        pos = end + 2
        delim = self.right_delim(pos) if pos < len(self.src) else 0
        if not delim:
            self.error(pos, "comment ends before closing delimiter")
        pos += delim
        return self.skip_space(pos) if delim == 4 else pos

    def quoted(self, pos: int, kind: str, unterminated: str) -> int:
        src, q, end = self.src, self.src[pos], pos + 1
        while True:
            if end >= len(src) or src[end] == "\n":
                self.error(pos, unterminated)
            if src[end] == "\\":
                end += 1
                if end >= len(src) or src[end] == "\n":
                    self.error(pos, unterminated)
            elif src[end] == q:
                break
            end += 1
        self.emit(kind, src[pos : end + 1], pos)
        return end + 1

    def number(self, pos: int) -> int:
        match = _NUMBER_RE.match(self.src, pos)
        assert match is not None  # every part of the pattern is optional
        end = match.end()
        if end < len(self.src) and _is_alnum(self.src[end]):
            self.error(pos, f"bad number syntax: {quote(self.src[pos : end + 1])}")
        self.emit(NUMBER, self.src[pos:end], pos)
        return end


_SIMPLE_ESCAPES = types.MappingProxyType(
    {
        "a": "\a",
        "b": "\b",
        "f": "\f",
        "n": "\n",
        "r": "\r",
        "t": "\t",
        "v": "\v",
        "\\": "\\",
    }
)


def unquote_string(text: str) -> str:
    """strconv.Unquote for "..." and `...` literals.  \\x and octal escapes are
    bytes in Go, so the result is assembled as UTF-8 and decoded once."""
    q, body = text[0], text[1:-1]
    if q == "`":
        return body.replace("\r", "")  # Go drops carriage returns in raw strings
    if "\\" not in body:
        return body
    buf = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            buf += c.encode("utf-8", "surrogatepass")
            i += 1
            continue
        e = body[i + 1]
        if e in _SIMPLE_ESCAPES:
            buf += _SIMPLE_ESCAPES[e].encode()
            i += 2
        elif e == q:
            buf += e.encode()
            i += 2
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise ValueError("invalid syntax")
            val = int(digits, 16)
            if e == "x":
                buf.append(val)
            elif val > 0x10FFFF or 0xD800 <= val < 0xE000:
                raise ValueError("invalid syntax")
            else:
                buf += chr(val).encode()
            i += 2 + width
        elif e in "01234567":
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or any(d not in "01234567" for d in digits) or int(digits, 8) > 255:
                raise ValueError("invalid syntax")
            buf.append(int(digits, 8))
            i += 4
        else:
            raise ValueError("invalid syntax")
    return buf.decode("utf-8", "replace")


def unquote_char(text: str) -> int:
    """A 'c' constant is its code point (an untyped rune, so an int)."""
    body = text[1:-1]
    bad = ValueError(f"malformed character constant: {text}")
    if body[:2] == "\\x" or (body[:1] == "\\" and body[1:2] in tuple("01234567")):
        # \xFF and \377 name a code point here, not a byte.
        digits, base = (body[2:], 16) if body[1] == "x" else (body[1:], 8)
        if len(digits) != (2 if base == 16 else 3):
            raise bad
        return int(digits, base)
    if body == "\\'":
        return ord("'")
    if body == '\\"':
        raise bad
    s = unquote_string('"' + body + '"') if body else ""
    if len(s) != 1:
        raise bad
    return ord(s)


def parse_number(text: str) -> int | float:
    """Go's number literals, typed the way the executor's idealConstant does:
    a float if written with '.', an exponent, or a hex 'p'; an int otherwise."""
    if text.endswith("i"):
        raise ValueError("complex numbers are not supported")
    t = text.replace("_", "")
    sign = -1 if t.startswith("-") else 1
    body = t.lstrip("+-")
    low = body.lower()
    if low.startswith("0x"):
        if "." in low or "p" in low:
            return sign * float.fromhex(body)
        return sign * int(body, 16)
    if low.startswith(("0o", "0b")):
        return sign * int(body, 0)
    if "." in low or "e" in low:
        return sign * float(body)
    if len(body) > 1 and body[0] == "0":  # a leading 0 means octal
        return sign * int(body, 8)
    return sign * int(body)
