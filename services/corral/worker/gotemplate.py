"""A pure-Python implementation of Go's ``text/template`` language.

Ollama model files carry their chat TEMPLATE in Go template syntax, so to be
Ollama-compatible we must render those templates exactly as Go would.  This
module is a small lexer -> parser (node tree) -> executor, modelled closely on
Go's ``text/template`` and ``text/template/parse`` packages, including their
error messages (``template: :1: unexpected EOF``).

How Python values map onto Go's:

* ``dict`` (any Mapping) is a ``map[string]any``: ``.Key`` looks up ``"Key"``.
* ``list``/``tuple`` are slices; ``str``, ``int``, ``float``, ``bool`` are the
  matching Go kinds.  Strings are measured, indexed and sliced in UTF-8 bytes,
  as in Go.
* ``None`` is a nil interface: printed by an action it renders ``<no value>``
  (``print nil`` gives ``<nil>``), exactly like Go.
* Any other object is a struct: ``.Field`` is ``getattr``; bound methods are
  called with the action's arguments.
* A key or attribute that does not exist yields ``MISSING``.  Ollama executes
  templates against structs whose fields always exist, so ``MISSING`` behaves
  like a zero-valued field: falsy, renders as ``""``, has length 0, ranges zero
  times, and ``.Missing.Deeper`` is ``MISSING`` too.  Custom functions receive
  ``None`` in its place.

Two hooks let callers reproduce Go types that customise their formatting:

* a class that overrides ``__str__`` acts as a ``fmt.Stringer``: printing it
  uses ``str(value)``.  (Ollama's tool-call arguments print themselves as
  JSON, so pass them as a dict subclass whose ``__str__`` returns
  ``go_json(self)``.)
* a class with a ``__json__()`` method acts as a ``json.Marshaler`` for the
  ``json`` template function: its return value is encoded instead.

Not supported: ``call``, complex numbers, ``%[n]`` argument indexes in
``printf``, iterating over channels or functions, ``toTypeScriptType``
(callers may add it through ``funcs``).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import inspect
import math
import re
import types
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

__all__ = ["MISSING", "Template", "TemplateError", "TemplateExecError", "go_json"]


class TemplateError(ValueError):
    """The template could not be parsed (or, as TemplateExecError, rendered)."""


class TemplateExecError(TemplateError):
    """Rendering failed, e.g. ``index`` out of range or an undefined template."""


class _FuncError(Exception):
    """Raised by builtin functions; the executor prefixes 'error calling NAME:'."""


class _MissingType:
    """The value of an absent map key or attribute (see module docstring)."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _MissingType()
# Go's "missingVal": marks that no value is being piped into a command.
_NO_ARG = object()


# ---------------------------------------------------------------------------
# Value semantics shared by the executor and the builtin functions.


def _truth(v: Any) -> bool:
    """Go's isTrue: zero values and empty containers are false, structs true."""
    t = type(v)
    if t is str or t is bool or t is list or t is dict or t is int:
        return bool(v)
    if v is None or v is MISSING:
        return False
    if isinstance(
        v, (bool, int, float, str, list, tuple, Mapping, bytes, set, frozenset)
    ):
        return bool(v)
    return True


def _go_type(v: Any) -> str:
    """The Go type name a value would have, for error messages."""
    if v is None or v is MISSING:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (list, tuple)):
        return "[]interface {}"
    if isinstance(v, Mapping):
        return "map[string]interface {}"
    return type(v).__name__


def _is_stringer(v: Any) -> bool:
    """True when v's class defines its own __str__ (Go's fmt.Stringer)."""
    return type(v).__str__ is not object.__str__


def _sorted_items(m: Mapping) -> list:
    """Map entries in key order, as Go's fmt and range both visit them."""
    try:
        return sorted(m.items(), key=lambda kv: kv[0])
    except TypeError:  # mixed key types: group by type, like Go's fmtsort
        return sorted(m.items(), key=lambda kv: (_go_type(kv[0]), _fmt_v(kv[0])))


def _float_digits(f: float) -> tuple[str, int]:
    """Shortest round-trip digits of abs(f) and the decimal point position,
    such that abs(f) == 0.DIGITS * 10**dp.  (repr() is already shortest.)"""
    mant, _, exp = repr(abs(f)).partition("e")
    ip, _, fp = mant.partition(".")
    raw = ip + fp
    digits = raw.lstrip("0")
    dp = len(ip) + int(exp or 0) - (len(raw) - len(digits))
    return digits.rstrip("0") or "0", dp


def _go_float(f: float, json: bool = False) -> str:
    """A float as Go's %v prints it (strconv 'g', shortest), or with json=True
    as encoding/json writes it.  They differ only in when to use exponents."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    digits, dp = _float_digits(f)
    sign = "-" if f < 0 else ""
    exp = dp - 1
    if (exp < -6 or exp >= 21) if json else (exp < -4 or exp >= 6):
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        # %v always writes two exponent digits; json trims "e-07" to "e-7".
        num = str(abs(exp)) if json else f"{abs(exp):02d}"
        return f"{sign}{mant}e{'-' if exp < 0 else '+'}{num}"
    if dp <= 0:
        return f"{sign}0.{'0' * -dp}{digits}"
    if dp >= len(digits):
        return sign + digits + "0" * (dp - len(digits))
    return f"{sign}{digits[:dp]}.{digits[dp:]}"


_QUOTE_ESCAPES = types.MappingProxyType(
    {
        "\a": "\\a",
        "\b": "\\b",
        "\f": "\\f",
        "\n": "\\n",
        "\r": "\\r",
        "\t": "\\t",
        "\v": "\\v",
        "\\": "\\\\",
    }
)


def _go_quote(s: str, q: str = '"') -> str:
    """strconv.Quote (or QuoteRune with q="'")."""
    out = [q]
    for ch in s:
        if ch == q:
            out.append("\\" + ch)
        elif ch in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            o = ord(ch)
            if o < 0x20 or o == 0x7F:
                out.append(f"\\x{o:02x}")
            elif o < 0x10000:
                out.append(f"\\u{o:04x}")
            else:
                out.append(f"\\U{o:08x}")
    out.append(q)
    return "".join(out)


def _fmt_v(v: Any) -> str:
    """fmt's %v: how print, printf "%v" and nested values render."""
    t = type(v)
    if t is str:
        return v
    if t is int:
        return str(v)
    if t is bool:
        return "true" if v else "false"
    if t is float:
        return _go_float(v)
    return _fmt_one(v, "v", "", None, None)


def _print_value(v: Any) -> str:
    """How an action ({{ pipeline }}) writes its value."""
    if type(v) is str:
        return v
    if v is MISSING:
        return ""
    if v is None:  # Go prints a nil interface as "<no value>"
        return "<no value>"
    return _fmt_v(v)


# ---------------------------------------------------------------------------
# printf: the subset of Go's fmt verbs that templates use.

_FMT_SPEC = re.compile(r"%([-+# 0]*)(\*|\d+)?(?:\.(\*|\d*))?(.?)", re.DOTALL)


def _pad(s: str, flags: str, width: int | None, numeric: bool = False) -> str:
    if width is None or len(s) >= width:
        return s
    if "-" in flags:
        return s + " " * (width - len(s))
    if "0" in flags:
        if numeric and s[:1] in ("+", "-", " "):
            return s[0] + s[1:].rjust(width - 1, "0")
        return s.rjust(width, "0")
    return s.rjust(width)


def _sign(negative: bool, flags: str) -> str:
    return "-" if negative else "+" if "+" in flags else " " if " " in flags else ""


def _fmt_int(v: int, verb: str, flags: str, prec: int | None) -> str | None:
    if verb == "c":
        return chr(v)
    if verb == "q":
        return _go_quote(chr(v), "'")
    if verb == "U":
        return f"U+{v:04X}"
    base = {"d": "d", "v": "d", "b": "b", "o": "o", "O": "o", "x": "x", "X": "X"}.get(
        verb
    )
    if base is None:
        return None
    digits = format(abs(v), base)
    if prec is not None:
        digits = digits.zfill(prec)
    prefix = ""
    if verb == "O" or ("#" in flags and verb == "o"):
        prefix = "0o" if verb == "O" else "0"
    elif "#" in flags and verb in "xX":
        prefix = "0" + verb
    elif "#" in flags and verb == "b":
        prefix = "0b"
    return _sign(v < 0, flags) + prefix + digits


def _fmt_float(v: float, verb: str, flags: str, prec: int | None) -> str | None:
    if verb not in "vgGeEfF":
        return None
    if not math.isfinite(v):
        s = _go_float(v)
        return s if s[0] in "+-" else _sign(False, flags) + s
    if verb in "vgG" and prec is None:
        s = _go_float(abs(v))
        s = s.upper() if verb == "G" else s
    else:
        s = format(
            abs(v), f".{6 if prec is None else prec}{'f' if verb == 'F' else verb}"
        )
    return _sign(math.copysign(1.0, v) < 0, flags) + s


def _bad_verb(v: Any, verb: str) -> str:
    if v is None:
        return f"%!{verb}(<nil>)"
    return f"%!{verb}({_go_type(v)}={_fmt_v(v)})"


def _fmt_one(v: Any, verb: str, flags: str, width: int | None, prec: int | None) -> str:
    """Format one printf operand.  Containers apply the verb to each element,
    as Go's fmt does ('%d' of [1 2] is "[1 2]")."""
    if v is MISSING:
        v = ""
    if verb == "T":
        return _pad(_go_type(v), flags, width)
    numeric = False
    if v is None:
        if verb != "v":
            return _bad_verb(v, verb)
        s = "<nil>"
    elif isinstance(v, bool):
        if verb not in "tv":
            return _bad_verb(v, verb)
        s = "true" if v else "false"
    elif isinstance(v, int):
        s, numeric = _fmt_int(int(v), verb, flags, prec), True
    elif isinstance(v, float):
        s, numeric = _fmt_float(v, verb, flags, prec), True
    elif isinstance(v, str) or (_is_stringer(v) and verb in "vsqxX"):
        text = str(v)
        if verb in "vs":
            s = text if prec is None else text[:prec]
        elif verb == "q":
            s = _go_quote(text)
        elif verb in "xX":
            s = text.encode("utf-8", "surrogatepass").hex()
            s = s.upper() if verb == "X" else s
        else:
            s = None
    elif isinstance(v, (list, tuple)):
        return "[" + " ".join(_fmt_one(e, verb, flags, width, prec) for e in v) + "]"
    elif isinstance(v, Mapping):
        return (
            "map["
            + " ".join(
                f"{_fmt_one(k, verb, flags, width, prec)}:{_fmt_one(e, verb, flags, width, prec)}"
                for k, e in _sorted_items(v)
            )
            + "]"
        )
    elif isinstance(v, (bytes, bytearray)):
        return _fmt_one(list(v), verb, flags, width, prec)
    else:
        s = str(v) if verb in "vs" else None
    if s is None:
        return _bad_verb(v, verb)
    return _pad(s, flags, width, numeric)


def _sprintf(format_: str, *args: Any) -> str:
    """fmt.Sprintf, including Go's in-band error notes (%!d(MISSING), ...)."""
    if not isinstance(format_, str):
        raise _FuncError(
            f"wrong type for value; expected string; got {_go_type(format_)}"
        )
    out: list[str] = []
    argn = i = 0

    def star() -> int | None:
        nonlocal argn
        if argn < len(args) and type(args[argn]) is int:
            argn += 1
            return args[argn - 1]
        argn += 1
        out.append("%!(BADWIDTH)")
        return None

    while True:
        j = format_.find("%", i)
        if j < 0:
            out.append(format_[i:])
            break
        out.append(format_[i:j])
        spec = _FMT_SPEC.match(format_, j)
        flags, width, prec, verb = spec.groups()
        i = spec.end()
        w = star() if width == "*" else int(width) if width else None
        p = None if prec is None else star() if prec == "*" else int(prec or 0)
        if any(n is not None and abs(n) > _FMT_TOO_LARGE for n in (w, p)):
            # Go gives up on the rest of the format (a "crazy long number", says fmt).
            out.append("%!(NOVERB)")
            break
        if verb == "%":
            out.append("%")
        elif not verb:
            out.append("%!(NOVERB)")
            break
        elif argn >= len(args):
            out.append(f"%!{verb}(MISSING)")
        else:
            out.append(_fmt_one(args[argn], verb, flags, w, p))
            argn += 1
    if argn < len(args):
        extra = ", ".join(
            "<nil>" if a is None else f"{_go_type(a)}={_fmt_v(a)}" for a in args[argn:]
        )
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _sprint(*args: Any) -> str:
    """fmt.Sprint: spaces go between operands when neither is a string."""
    out = []
    prev_string = False
    for n, a in enumerate(args):
        if a is MISSING:
            a = ""
        is_string = isinstance(a, str)
        if n and not is_string and not prev_string:
            out.append(" ")
        out.append("<nil>" if a is None else _fmt_v(a))
        prev_string = is_string
    return "".join(out)


def _sprintln(*args: Any) -> str:
    """fmt.Sprintln: always space-separated, newline-terminated."""
    return (
        " ".join(
            "<nil>" if a is None else _fmt_v("" if a is MISSING else a) for a in args
        )
        + "\n"
    )


# ---------------------------------------------------------------------------
# JSON exactly as Go's json.Marshal writes it.


def _json_escape_table() -> Mapping[int, str]:
    table = {c: f"\\u{c:04x}" for c in range(0x20)}
    table.update(
        {
            ord('"'): '\\"',
            ord("\\"): "\\\\",
            ord("\n"): "\\n",
            ord("\r"): "\\r",
            ord("\t"): "\\t",
            ord("\b"): "\\b",
            ord("\f"): "\\f",
            # Go escapes these so JSON can be embedded in HTML and JS.
            ord("<"): "\\u003c",
            ord(">"): "\\u003e",
            ord("&"): "\\u0026",
            0x2028: "\\u2028",
            0x2029: "\\u2029",
        }
    )
    # Lone surrogates are what invalid UTF-8 becomes in Python; Go writes \ufffd.
    table.update({c: "\\ufffd" for c in range(0xD800, 0xE000)})
    return types.MappingProxyType(table)


_JSON_ESCAPES = _json_escape_table()


def go_json(value: Any) -> str:
    """Encode like Go's json.Marshal: compact, with <, > and & escaped.

    Dict keys keep insertion order (Ollama's argument/schema maps are
    ordered).  Raises ValueError for NaN/Inf or unencodable objects."""
    out: list[str] = []
    _json_into(value, out)
    return "".join(out)


def _json_into(v: Any, out: list[str]) -> None:
    if v is None or v is MISSING:
        out.append("null")
    elif v is True or v is False:
        out.append("true" if v else "false")
    elif isinstance(v, str):
        out.append('"' + v.translate(_JSON_ESCAPES) + '"')
    elif isinstance(v, int):
        out.append(str(int(v)))
    elif isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"json: unsupported value: {_go_float(v)}")
        out.append(_go_float(v, json=True))
    elif hasattr(type(v), "__json__"):
        _json_into(v.__json__(), out)
    elif isinstance(v, Mapping):
        out.append("{")
        for n, (k, e) in enumerate(v.items()):
            if n:
                out.append(",")
            _json_into(k if isinstance(k, str) else _fmt_v(k), out)
            out.append(":")
            _json_into(e, out)
        out.append("}")
    elif isinstance(v, (list, tuple)):
        out.append("[")
        for n, e in enumerate(v):
            if n:
                out.append(",")
            _json_into(e, out)
        out.append("]")
    elif isinstance(v, (bytes, bytearray)):  # Go encodes []byte as base64
        out.append('"' + base64.b64encode(v).decode() + '"')
    elif dataclasses.is_dataclass(v) and not isinstance(v, type):
        _json_into({f.name: getattr(v, f.name) for f in dataclasses.fields(v)}, out)
    elif hasattr(v, "__dict__"):
        _json_into({k: e for k, e in vars(v).items() if not k.startswith("_")}, out)
    else:
        raise ValueError(f"json: unsupported type: {type(v).__name__}")


# ---------------------------------------------------------------------------
# Builtin functions (Go's funcs.go plus Ollama's json and currentDate).
# They receive MISSING as-is so they can treat it like a zero value.


def _and(*args: Any) -> Any:
    # The executor short-circuits and/or itself; this is the eager fallback.
    if not args:
        raise _FuncError("wrong number of args for and: want at least 1 got 0")
    for a in args:
        if not _truth(a):
            return a
    return args[-1]


def _or(*args: Any) -> Any:
    if not args:
        raise _FuncError("wrong number of args for or: want at least 1 got 0")
    for a in args:
        if _truth(a):
            return a
    return args[-1]


def _not(arg: Any) -> bool:
    return not _truth(arg)


_KINDS = types.MappingProxyType(
    {bool: "bool", int: "int", float: "float", str: "string"}
)


def _basic_kind(v: Any) -> str:
    kind = _KINDS.get(type(v))
    if kind:
        return kind
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if v is None or v is MISSING:
        return "nil"
    return "other"


def _eq(arg1: Any, *args: Any) -> bool:
    """arg1 == args[0] || arg1 == args[1] || ...  Like Go, comparing values of
    different basic kinds is an error, except that nil is unequal to anything."""
    if not args:
        raise _FuncError("missing argument for comparison")
    k1 = _basic_kind(arg1)
    for arg in args:
        k2 = _basic_kind(arg)
        if k1 != k2:
            if k1 == "nil" or k2 == "nil":
                continue
            raise _FuncError("incompatible types for comparison")
        if k1 == "nil":
            return True
        if k1 == "other" and isinstance(arg1, (list, tuple, Mapping, set)):
            raise _FuncError(f"non-comparable type {_fmt_v(arg1)}: {_go_type(arg1)}")
        if arg1 == arg:
            return True
    return False


def _ne(arg1: Any, arg2: Any) -> bool:
    return not _eq(arg1, arg2)


def _lt(arg1: Any, arg2: Any) -> bool:
    k1, k2 = _basic_kind(arg1), _basic_kind(arg2)
    if k1 not in ("int", "float", "string") or k2 not in ("int", "float", "string"):
        raise _FuncError("invalid type for comparison")
    if k1 != k2:
        raise _FuncError("incompatible types for comparison")
    return arg1 < arg2


def _le(arg1: Any, arg2: Any) -> bool:
    return _lt(arg1, arg2) or _eq(arg1, arg2)


def _gt(arg1: Any, arg2: Any) -> bool:
    return not _le(arg1, arg2)


def _ge(arg1: Any, arg2: Any) -> bool:
    return not _lt(arg1, arg2)


def _utf8(s: str) -> str | bytes:
    """Go measures, indexes and slices strings by byte; ASCII needs no copy."""
    return s if s.isascii() else s.encode("utf-8", "surrogatepass")


def _len(item: Any) -> int:
    if item is None or item is MISSING:
        return 0  # a nil slice or map
    if isinstance(item, str):
        return len(_utf8(item))
    if isinstance(item, (list, tuple, Mapping, bytes, bytearray, set, frozenset)):
        return len(item)
    raise _FuncError(f"len of type {_go_type(item)}")


def _index_arg(ix: Any, cap: int) -> int:
    if isinstance(ix, bool) or not isinstance(ix, int):
        if ix is None or ix is MISSING:
            raise _FuncError("cannot index slice/array with nil")
        raise _FuncError(f"cannot index slice/array with type {_go_type(ix)}")
    if ix < 0 or ix > cap:
        raise _FuncError(f"index out of range: {ix}")
    return ix


def _index(item: Any, *indexes: Any) -> Any:
    """index x 1 2 is x[1][2]; a missing map key gives the zero value."""
    for ix in indexes:
        if item is None or item is MISSING:
            return MISSING
        if isinstance(item, Mapping):
            try:
                item = item.get(ix, MISSING)
            except TypeError:
                raise _FuncError(
                    f"value has type {_go_type(ix)}; should be string"
                ) from None
        elif isinstance(item, (list, tuple, bytes)):
            x = _index_arg(ix, len(item))
            if x == len(item):
                raise _FuncError(f"index out of range: {x}")
            item = item[x]
        elif isinstance(item, str):  # Go indexes strings by byte, yielding a number
            seq = item.encode("utf-8", "surrogatepass")
            x = _index_arg(ix, len(seq))
            if x == len(seq):
                raise _FuncError(f"index out of range: {x}")
            item = seq[x]
        else:
            raise _FuncError(f"can't index item of type {_go_type(item)}")
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    """slice x 1 2 is x[1:2]; a third index is Go's capacity bound."""
    if item is None or item is MISSING:
        item = []
    if len(indexes) > 3:
        raise _FuncError(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise _FuncError("cannot 3-index slice a string")
        seq = _utf8(item)
    elif isinstance(item, (list, tuple)):
        seq = item
    else:
        raise _FuncError(f"can't slice item of type {_go_type(item)}")
    idx = [0, len(seq), len(seq)]
    for n, ix in enumerate(indexes):
        idx[n] = _index_arg(ix, len(seq))
    if idx[0] > idx[1]:
        raise _FuncError(f"invalid slice index: {idx[0]} > {idx[1]}")
    if len(indexes) == 3 and idx[1] > idx[2]:
        raise _FuncError(f"invalid slice index: {idx[1]} > {idx[2]}")
    out = seq[idx[0] : idx[1]]
    return out.decode("utf-8", "replace") if isinstance(out, bytes) else out


def _eval_args(args: tuple) -> str:
    """The single string that html/js/urlquery escape (Go's evalArgs)."""
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return _sprint(
        *("<no value>" if a is None else "" if a is MISSING else a for a in args)
    )


_HTML_ESCAPES = types.MappingProxyType(
    {
        ord('"'): "&#34;",
        ord("'"): "&#39;",
        ord("&"): "&amp;",
        ord("<"): "&lt;",
        ord(">"): "&gt;",
        0: "\ufffd",
    }
)
_JS_ESCAPES = types.MappingProxyType(
    {
        "\\": "\\\\",
        "'": "\\'",
        '"': '\\"',
        "<": "\\u003C",
        ">": "\\u003E",
        "&": "\\u0026",
        "=": "\\u003D",
    }
)


def _html(*args: Any) -> str:
    return _eval_args(args).translate(_HTML_ESCAPES)


def _js(*args: Any) -> str:
    out = []
    for ch in _eval_args(args):
        if ch in _JS_ESCAPES:
            out.append(_JS_ESCAPES[ch])
        elif ch < " " or (ch >= "\x80" and not ch.isprintable()):
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


def _urlquery(*args: Any) -> str:
    # quote_plus keeps exactly Go's unreserved set (A-Za-z0-9-_.~); space is "+".
    return urllib.parse.quote_plus(_eval_args(args), safe="", errors="replace")


def _json_func(v: Any) -> str:
    try:
        return go_json(v)
    except ValueError:
        return ""  # Ollama ignores json.Marshal's error and prints nothing


def _current_date(*_args: Any) -> str:
    # Ollama accepts (and ignores) a format argument.
    return datetime.date.today().strftime("%Y-%m-%d")


_BUILTINS: Mapping[str, Callable[..., Any]] = types.MappingProxyType(
    {
        "and": _and,
        "or": _or,
        "not": _not,
        "eq": _eq,
        "ne": _ne,
        "lt": _lt,
        "le": _le,
        "gt": _gt,
        "ge": _ge,
        "len": _len,
        "index": _index,
        "slice": _slice,
        "print": _sprint,
        "printf": _sprintf,
        "println": _sprintln,
        "html": _html,
        "js": _js,
        "urlquery": _urlquery,
        "json": _json_func,
        "currentDate": _current_date,
    }
)


# ---------------------------------------------------------------------------
# Lexer.  Produces a flat token list; whitespace inside actions is a token
# because Go's grammar needs it ("$x := 1" vs "$x 1", ".A.B" vs ".A .B").

_SPACE = " \t\r\n"
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
_TEXT, _LDELIM, _RDELIM, _SPACE_TOK, _EOF = "text", "{{", "}}", "space", "EOF"
_FIELD, _IDENT, _VAR, _KEYWORD = "field", "identifier", "variable", "keyword"
_STRING, _RAWSTRING, _CHARCONST, _NUMBER, _BOOL, _NIL = (
    "string",
    "raw string",
    "char constant",
    "number",
    "bool",
    "nil",
)
_DOT, _PIPE, _LPAREN, _RPAREN, _DECLARE, _ASSIGN, _CHAR = (
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


class _Tok:
    __slots__ = ("kind", "pos", "val")

    def __init__(self, kind: str, val: str, pos: int) -> None:
        self.kind, self.val, self.pos = kind, val, pos

    def __str__(self) -> str:  # as Go's item.String(), for error messages
        if self.kind == _EOF:
            return "EOF"
        if self.kind == _KEYWORD:
            return f"<{self.val}>"
        if len(self.val) > 10:
            return _go_quote(self.val[:10]) + "..."
        return _go_quote(self.val)


def _line(src: str, pos: int) -> int:
    return src.count("\n", 0, pos) + 1


def _is_alnum(c: str) -> bool:
    return c == "_" or c.isalnum()


def _rune_desc(c: str) -> str:
    """Go's %#U: U+0041 'A'."""
    return f"U+{ord(c):04X}" + (f" '{c}'" if c.isprintable() else "")


class _Lexer:
    def __init__(self, src: str) -> None:
        self.src = src
        self.toks: list[_Tok] = []

    def error(self, pos: int, msg: str) -> NoReturn:
        raise TemplateError(f"template: :{_line(self.src, pos)}: {msg}")

    def emit(self, kind: str, val: str, pos: int) -> None:
        self.toks.append(_Tok(kind, val, pos))

    def run(self) -> list[_Tok]:
        src, pos = self.src, 0
        while True:
            start = src.find("{{", pos)
            text = src[pos:] if start < 0 else src[pos:start]
            if start >= 0 and self.left_trim(start):
                text = text.rstrip(_SPACE)
            if text:
                self.emit(_TEXT, text, pos)
            if start < 0:
                break
            pos = self.action(start)
        self.emit(_EOF, "", len(src))
        return self.toks

    def left_trim(self, start: int) -> bool:
        """'{{- ' (dash then whitespace) trims the preceding text."""
        s = self.src
        return (
            s.startswith("-", start + 2)
            and start + 3 < len(s)
            and s[start + 3] in _SPACE
        )

    def right_delim(self, pos: int) -> int:
        """Length of the right delimiter at pos: 4 for ' -}}', 2 for '}}', else 0."""
        s = self.src
        if s.startswith("}}", pos):
            return 2
        if s[pos] in _SPACE and s.startswith("-}}", pos + 1):
            return 4
        return 0

    def skip_space(self, pos: int) -> int:
        while pos < len(self.src) and self.src[pos] in _SPACE:
            pos += 1
        return pos

    def at_terminator(self, pos: int) -> bool:
        """What may follow a word: Go's lexer.atTerminator."""
        s = self.src
        return (
            pos >= len(s)
            or s[pos] in _SPACE
            or s[pos] in ".,|:()"
            or s.startswith("}}", pos)
        )

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
        self.emit(_LDELIM, "{{", start)
        depth = 0
        while True:
            if pos >= n:
                self.error(pos, "unclosed action")
            c = src[pos]
            delim = self.right_delim(pos)
            if delim:
                if depth:
                    self.error(pos, "unclosed left paren")
                self.emit(_RDELIM, "}}", pos)
                pos += delim
                return self.skip_space(pos) if delim == 4 else pos
            if c in _SPACE:
                end = pos
                # Stop before a space that begins a " -}}" trim marker.
                while (
                    end < n
                    and src[end] in _SPACE
                    and not src.startswith("-}}", end + 1)
                ):
                    end += 1
                if end > pos:
                    self.emit(_SPACE_TOK, src[pos:end], pos)
                pos = end
            elif c == "=":
                self.emit(_ASSIGN, c, pos)
                pos += 1
            elif c == ":":
                if not src.startswith(":=", pos):
                    self.error(pos, "expected :=")
                self.emit(_DECLARE, ":=", pos)
                pos += 2
            elif c == "|":
                self.emit(_PIPE, c, pos)
                pos += 1
            elif c == '"':
                pos = self.quoted(pos, _STRING, "unterminated quoted string")
            elif c == "'":
                pos = self.quoted(pos, _CHARCONST, "unterminated character constant")
            elif c == "`":
                end = src.find("`", pos + 1)
                if end < 0:
                    self.error(pos, "unterminated raw quoted string")
                self.emit(_RAWSTRING, src[pos : end + 1], pos)
                pos = end + 1
            elif c == "$":
                end = self.word_end(pos + 1)
                self.emit(_VAR, src[pos:end], pos)
                pos = end
            elif c == "." and src[pos + 1 : pos + 2].isdigit():
                pos = self.number(pos)
            elif c == ".":
                end = self.word_end(pos + 1)
                self.emit(_FIELD if end > pos + 1 else _DOT, src[pos:end], pos)
                pos = end
            elif c in "+-" or c.isdigit():
                pos = self.number(pos)
            elif _is_alnum(c):
                end = self.word_end(pos)
                word = src[pos:end]
                kind = (
                    _KEYWORD
                    if word in _KEYWORDS
                    else _BOOL
                    if word in ("true", "false")
                    else _NIL
                    if word == "nil"
                    else _IDENT
                )
                self.emit(kind, word, pos)
                pos = end
            elif c == "(":
                depth += 1
                self.emit(_LPAREN, c, pos)
                pos += 1
            elif c == ")":
                depth -= 1
                if depth < 0:
                    self.error(pos, "unexpected right paren")
                self.emit(_RPAREN, c, pos)
                pos += 1
            elif c.isascii() and c.isprintable():
                self.emit(_CHAR, c, pos)  # e.g. ','; the parser decides if it fits
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
        end = _NUMBER_RE.match(self.src, pos).end()
        if end < len(self.src) and _is_alnum(self.src[end]):
            self.error(pos, f"bad number syntax: {_go_quote(self.src[pos : end + 1])}")
        self.emit(_NUMBER, self.src[pos:end], pos)
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


def _unquote(text: str) -> str:
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
            if len(digits) != width or any(
                d not in "0123456789abcdefABCDEF" for d in digits
            ):
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
            if (
                len(digits) != 3
                or any(d not in "01234567" for d in digits)
                or int(digits, 8) > 255
            ):
                raise ValueError("invalid syntax")
            buf.append(int(digits, 8))
            i += 4
        else:
            raise ValueError("invalid syntax")
    return buf.decode("utf-8", "replace")


def _unquote_char(text: str) -> int:
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
    s = _unquote('"' + body + '"') if body else ""
    if len(s) != 1:
        raise bad
    return ord(s)


def _parse_number(text: str) -> int | float:
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


# ---------------------------------------------------------------------------
# Parse tree.  __str__ renders nodes as Go does, for "executing ... at <X>".


class _Node:
    __slots__ = ("pos",)


class _Text(_Node):
    __slots__ = ("text",)

    def __init__(self, pos: int, text: str) -> None:
        self.pos, self.text = pos, text


class _Field(_Node):
    """.A.B: fields looked up on dot."""

    __slots__ = ("idents",)

    def __init__(self, pos: int, idents: tuple[str, ...]) -> None:
        self.pos, self.idents = pos, idents

    def __str__(self) -> str:
        return "." + ".".join(self.idents)


class _Variable(_Node):
    """$x or $x.A.B."""

    __slots__ = ("idents", "name")

    def __init__(self, pos: int, name: str, idents: tuple[str, ...] = ()) -> None:
        self.pos, self.name, self.idents = pos, name, idents

    def __str__(self) -> str:
        return ".".join((self.name, *self.idents))


class _Dot(_Node):
    __slots__ = ()

    def __init__(self, pos: int) -> None:
        self.pos = pos

    def __str__(self) -> str:
        return "."


class _Nil(_Dot):
    __slots__ = ()

    def __str__(self) -> str:
        return "nil"


class _Const(_Node):
    """A string, number, char or bool literal."""

    __slots__ = ("text", "value")

    def __init__(self, pos: int, value: Any, text: str) -> None:
        self.pos, self.value, self.text = pos, value, text

    def __str__(self) -> str:
        return self.text


class _Ident(_Node):
    """A function name; the function is resolved at parse time, like Go."""

    __slots__ = ("builtin", "fn", "name")

    def __init__(self, pos: int, name: str, fn: Callable[..., Any]) -> None:
        self.pos, self.name, self.fn = pos, name, fn
        self.builtin = _BUILTINS.get(name) is fn

    def __str__(self) -> str:
        return self.name


class _Chain(_Node):
    """(pipeline).A.B: fields looked up on a computed value."""

    __slots__ = ("fields", "node")

    def __init__(self, pos: int, node: _Node, fields: tuple[str, ...]) -> None:
        self.pos, self.node, self.fields = pos, node, fields

    def __str__(self) -> str:
        base = f"({self.node})" if isinstance(self.node, _Pipe) else str(self.node)
        return base + "".join("." + f for f in self.fields)


class _Command(_Node):
    __slots__ = ("args",)

    def __init__(self, pos: int, args: tuple[_Node, ...]) -> None:
        self.pos, self.args = pos, args

    def __str__(self) -> str:
        return " ".join(f"({a})" if isinstance(a, _Pipe) else str(a) for a in self.args)


class _Pipe(_Node):
    """[$a, $b :=] cmd | cmd | ..."""

    __slots__ = ("cmds", "decl", "is_assign")

    def __init__(
        self, pos: int, decl: list[str], is_assign: bool, cmds: list[_Command]
    ) -> None:
        self.pos, self.decl, self.is_assign, self.cmds = (
            pos,
            tuple(decl),
            is_assign,
            tuple(cmds),
        )

    def __str__(self) -> str:
        head = (
            ", ".join(self.decl) + (" = " if self.is_assign else " := ")
            if self.decl
            else ""
        )
        return head + " | ".join(str(c) for c in self.cmds)


class _Action(_Node):
    __slots__ = ("pipe",)

    def __init__(self, pos: int, pipe: _Pipe) -> None:
        self.pos, self.pipe = pos, pipe


class _Branch(_Node):
    __slots__ = ("body", "else_body", "pipe")
    keyword = ""

    def __init__(self, pipe: _Pipe, body: list, else_body: list | None) -> None:
        self.pos, self.pipe, self.body, self.else_body = pipe.pos, pipe, body, else_body

    def __str__(self) -> str:
        return f"{{{{{self.keyword} {self.pipe}}}}}"


class _If(_Branch):
    __slots__ = ()
    keyword = "if"


class _With(_Branch):
    __slots__ = ()
    keyword = "with"


class _Range(_Branch):
    __slots__ = ()
    keyword = "range"


class _TemplateCall(_Node):
    __slots__ = ("name", "pipe")

    def __init__(self, pos: int, name: str, pipe: _Pipe | None) -> None:
        self.pos, self.name, self.pipe = pos, name, pipe

    def __str__(self) -> str:
        return (
            f"{{{{template {_go_quote(self.name)}"
            + (f" {self.pipe}" if self.pipe else "")
            + "}}"
        )


class _Marker(_Node):
    __slots__ = ()

    def __init__(self, pos: int) -> None:
        self.pos = pos


class _Break(_Marker):
    __slots__ = ()


class _Continue(_Marker):
    __slots__ = ()


class _Else(_Marker):
    """Parser-internal: ends an item list."""

    __slots__ = ()

    def __str__(self) -> str:
        return "{{else}}"


class _End(_Marker):
    """Parser-internal: ends an item list."""

    __slots__ = ()

    def __str__(self) -> str:
        return "{{end}}"


# ---------------------------------------------------------------------------
# Parser: a recursive-descent port of Go's parse.Tree.


def _is_empty_tree(nodes: list) -> bool:
    return all(isinstance(n, _Text) and not n.text.strip(_SPACE) for n in nodes)


class _Parser:
    def __init__(self, src: str, funcs: Mapping[str, Callable[..., Any]]) -> None:
        self.src = src
        self.funcs = funcs
        self.toks = _Lexer(src).run()
        self.last = len(self.toks) - 1  # index of EOF, which repeats forever
        self.i = 0
        self.cur = self.toks[0]  # most recent token, whose line errors report
        self.vars = ["$"]  # variables in scope, to reject undefined ones like Go
        self.range_depth = 0  # break/continue are only legal inside range
        self.trees: dict[str, list] = {}

    # -- token stream ----------------------------------------------------
    def next(self) -> _Tok:
        self.cur = self.toks[min(self.i, self.last)]
        self.i += 1
        return self.cur

    def backup(self) -> None:
        self.i -= 1

    def peek(self) -> _Tok:
        self.cur = self.toks[min(self.i, self.last)]
        return self.cur

    def next_non_space(self) -> _Tok:
        tok = self.next()
        while tok.kind == _SPACE_TOK:
            tok = self.next()
        return tok

    def peek_non_space(self) -> _Tok:
        tok = self.next_non_space()
        self.backup()
        return tok

    def error(self, msg: str) -> NoReturn:
        raise TemplateError(f"template: :{_line(self.src, self.cur.pos)}: {msg}")

    def unexpected(self, tok: _Tok, context: str) -> NoReturn:
        self.error(f"unexpected {tok} in {context}")

    def expect(self, kind: str, context: str) -> _Tok:
        tok = self.next_non_space()
        if tok.kind != kind:
            self.unexpected(tok, context)
        return tok

    def is_keyword(self, tok: _Tok, *words: str) -> bool:
        return tok.kind == _KEYWORD and tok.val in words

    # -- structure ---------------------------------------------------------
    def parse(self) -> dict[str, list]:
        root: list = []
        while self.peek().kind != _EOF:
            if self.peek().kind == _LDELIM:
                mark = self.i
                self.next()
                if self.is_keyword(self.next_non_space(), "define"):
                    self.definition()
                    continue
                self.i = mark
            node = self.text_or_action()
            if isinstance(node, (_Else, _End)):
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
            self.error(f"template: multiple definition of template {_go_quote(name)}")

    def sub_tree(self) -> tuple[list, _Node]:
        """Parse a define/block body: it sees only its own variables."""
        saved = self.vars, self.range_depth
        self.vars, self.range_depth = ["$"], 0
        nodes, end = self.item_list()
        self.vars, self.range_depth = saved
        return nodes, end

    def definition(self) -> None:
        context = "define clause"
        name = self.template_name(self.next_non_space(), context)
        self.expect(_RDELIM, context)
        nodes, end = self.sub_tree()
        if not isinstance(end, _End):
            self.error(f"unexpected {end} in {context}")
        self.add(name, nodes)

    def item_list(self) -> tuple[list, _Node]:
        """Nodes up to the {{end}} or {{else}} that closes them."""
        nodes: list = []
        while self.peek_non_space().kind != _EOF:
            node = self.text_or_action()
            if isinstance(node, (_Else, _End)):
                return nodes, node
            nodes.append(node)
        self.error("unexpected EOF")

    def text_or_action(self) -> _Node:
        tok = self.next_non_space()
        if tok.kind == _TEXT:
            return _Text(tok.pos, tok.val)
        if tok.kind == _LDELIM:
            return self.action()
        self.unexpected(tok, "input")

    def action(self) -> _Node:
        tok = self.next_non_space()
        if tok.kind == _KEYWORD:
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
        return _Action(tok.pos, self.pipeline("command", _RDELIM))

    def branch_control(self, tok: _Tok) -> _Branch:
        """{{if|with|range pipeline}} list [{{else}} list] {{end}}"""
        context = tok.val
        mark = len(self.vars)
        pipe = self.pipeline(context, _RDELIM)
        if context == "range":
            self.range_depth += 1
        body, end = self.item_list()
        if context == "range":
            self.range_depth -= 1
        else_body = None
        if isinstance(end, _Else):
            nxt = self.peek()
            if context in ("if", "with") and self.is_keyword(nxt, context):
                # {{if a}}x{{else if b}}y{{end}} means {{if a}}x{{else}}{{if b}}y{{end}}{{end}};
                # the nested branch consumes the single {{end}}.
                self.next()
                else_body = [self.branch_control(nxt)]
            else:
                else_body, end = self.item_list()
                if not isinstance(end, _End):
                    self.error(f"expected end; found {end}")
        del self.vars[mark:]  # the pipeline's and body's variables go out of scope
        node_type = {"if": _If, "with": _With, "range": _Range}[context]
        return node_type(pipe, body, else_body)

    def break_control(self, tok: _Tok) -> _Node:
        nxt = self.next_non_space()
        if nxt.kind != _RDELIM:
            self.unexpected(nxt, f"{{{{{tok.val}}}}}")
        if not self.range_depth:
            self.error(f"{{{{{tok.val}}}}} outside {{{{range}}}}")
        return _Break(tok.pos) if tok.val == "break" else _Continue(tok.pos)

    def else_control(self, tok: _Tok) -> _Node:
        nxt = self.peek_non_space()
        if self.is_keyword(nxt, "if", "with"):
            return _Else(nxt.pos)  # "else if"/"else with": leave the keyword pending
        self.expect(_RDELIM, "else")
        return _Else(tok.pos)

    def end_control(self, tok: _Tok) -> _Node:
        self.expect(_RDELIM, "end")
        return _End(tok.pos)

    def template_name(self, tok: _Tok, context: str) -> str:
        if tok.kind not in (_STRING, _RAWSTRING):
            self.unexpected(tok, context)
        return self.unquote(tok)

    def template_control(self, tok: _Tok) -> _Node:
        context = "template clause"
        name = self.template_name(self.next_non_space(), context)
        pipe = None
        if self.next_non_space().kind != _RDELIM:
            self.backup()
            pipe = self.pipeline(context, _RDELIM)
        return _TemplateCall(tok.pos, name, pipe)

    def block_control(self, tok: _Tok) -> _Node:
        """{{block "name" pipeline}} list {{end}} = define + template."""
        context = "block clause"
        name = self.template_name(self.next_non_space(), context)
        pipe = self.pipeline(context, _RDELIM)
        nodes, end = self.sub_tree()
        if not isinstance(end, _End):
            self.error(f"unexpected {end} in {context}")
        self.add(name, nodes)
        return _TemplateCall(tok.pos, name, pipe)

    # -- pipelines -----------------------------------------------------------
    def pipeline(self, context: str, end: str) -> _Pipe:
        pos = self.peek_non_space().pos
        decl: list[str] = []
        is_assign = False
        while self.peek_non_space().kind == _VAR:
            mark = self.i
            var = self.next_non_space()
            nxt = self.peek_non_space()
            if nxt.kind in (_DECLARE, _ASSIGN):
                self.next_non_space()
                is_assign = nxt.kind == _ASSIGN
                decl.append(var.val)
                self.vars.append(var.val)
                break
            if nxt.kind == _CHAR and nxt.val == ",":
                self.next_non_space()
                decl.append(var.val)
                self.vars.append(var.val)
                if context == "range" and len(decl) < 2:
                    if self.peek_non_space().kind in (_VAR, _RDELIM, _RPAREN):
                        continue  # the second variable of "range $i, $e :="
                    self.error("range can only initialize variables")
                self.error(f"too many declarations in {context}")
            self.i = mark  # just a variable used as an operand
            break
        cmds: list[_Command] = []
        while True:
            tok = self.next_non_space()
            if tok.kind == end:
                break
            if tok.kind in (
                _BOOL,
                _CHARCONST,
                _DOT,
                _FIELD,
                _IDENT,
                _NUMBER,
                _NIL,
                _RAWSTRING,
                _STRING,
                _VAR,
                _LPAREN,
            ):
                self.backup()
                cmds.append(self.command())
            else:
                self.unexpected(tok, context)
        if not cmds:
            self.error(f"missing value for {context}")
        for n, cmd in enumerate(cmds[1:], start=2):
            if isinstance(cmd.args[0], (_Const, _Dot)):  # includes nil
                self.error(f"non executable command in pipeline stage {n}")
        return _Pipe(pos, decl, is_assign, cmds)

    def command(self) -> _Command:
        """Space-separated operands up to '|' (consumed) or the closing delimiter."""
        pos = self.peek_non_space().pos
        args: list[_Node] = []
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                args.append(operand)
            tok = self.next()
            if tok.kind == _SPACE_TOK:
                continue
            if tok.kind in (_RDELIM, _RPAREN):
                self.backup()
            elif tok.kind != _PIPE:
                self.error(f"unexpected {tok} in operand")
            break
        if not args:
            self.error("empty command")
        return _Command(pos, tuple(args))

    def operand(self) -> _Node | None:
        """A term followed by any number of .Field accesses."""
        node = self.term()
        if node is None or self.peek().kind != _FIELD:
            return node
        fields = []
        while self.peek().kind == _FIELD:
            fields.append(self.next().val[1:])
        if isinstance(node, _Field):
            return _Field(node.pos, node.idents + tuple(fields))
        if isinstance(node, _Variable):
            return _Variable(node.pos, node.name, node.idents + tuple(fields))
        if isinstance(node, (_Const, _Dot)):
            self.error(f"unexpected . after term {_go_quote(str(node))}")
        return _Chain(node.pos, node, tuple(fields))

    def term(self) -> _Node | None:
        tok = self.next_non_space()
        kind, pos = tok.kind, tok.pos
        if kind == _IDENT:
            fn = self.funcs.get(tok.val)
            if fn is None:
                self.error(f"function {_go_quote(tok.val)} not defined")
            return _Ident(pos, tok.val, fn)
        if kind == _DOT:
            return _Dot(pos)
        if kind == _NIL:
            return _Nil(pos)
        if kind == _VAR:
            if tok.val not in self.vars:
                self.error(f"undefined variable {_go_quote(tok.val)}")
            return _Variable(pos, tok.val)
        if kind == _FIELD:
            return _Field(pos, (tok.val[1:],))
        if kind == _BOOL:
            return _Const(pos, tok.val == "true", tok.val)
        if kind in (_STRING, _RAWSTRING):
            return _Const(pos, self.unquote(tok), tok.val)
        if kind in (_NUMBER, _CHARCONST):
            try:
                value = (
                    _parse_number(tok.val)
                    if kind == _NUMBER
                    else _unquote_char(tok.val)
                )
            except ValueError as e:
                msg = (
                    str(e)
                    if kind == _CHARCONST
                    else f"illegal number syntax: {_go_quote(tok.val)}"
                )
                self.error(msg)
            return _Const(pos, value, tok.val)
        if kind == _LPAREN:
            return self.pipeline("parenthesized pipeline", _RPAREN)
        self.backup()
        return None

    def unquote(self, tok: _Tok) -> str:
        try:
            return _unquote(tok.val)
        except ValueError as e:
            self.error(str(e))


# ---------------------------------------------------------------------------
# Executor.


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
_FMT_TOO_LARGE = 1_000_000  # Go's fmt: a width or precision past this is refused (tooLarge)


class _Output(list):
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


class _State:
    """One template invocation: its output, variable stack and name."""

    __slots__ = ("depth", "name", "out", "tmpl", "vars")

    def __init__(
        self, tmpl: Template, name: str, out: _Output, dot: Any, depth: int
    ) -> None:
        self.tmpl, self.name, self.out, self.depth = tmpl, name, out, depth
        # A stack of [name, value]; "$" is the invocation's data.  No dynamic
        # scoping: a {{template}} call starts a fresh stack, like Go.
        self.vars: list[list] = [["$", dot]]

    def fail(self, node: _Node, msg: str) -> NoReturn:
        src = self.tmpl._source
        line = _line(src, node.pos)
        col = node.pos - (src.rfind("\n", 0, node.pos) + 1)
        raise TemplateExecError(
            f'template: :{line}:{col}: executing "{self.name}" at <{node}>: {msg}'
        )

    # -- variables -------------------------------------------------------------
    def var(self, name: str) -> Any:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry[1]
        raise TemplateExecError(f"template: undefined variable: {name}")

    def set_var(self, name: str, value: Any, node: _Node) -> None:
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
            if t is _Text:
                out.append(node.text)
            elif t is _Action:
                value = self.pipeline(dot, node.pipe)
                if not node.pipe.decl:  # "{{ $x := 1 }}" prints nothing
                    out.append(_print_value(value))
            elif t is _If or t is _With:
                mark = len(self.vars)
                value = self.pipeline(dot, node.pipe)
                if _truth(value):
                    self.walk(value if t is _With else dot, node.body)
                elif node.else_body is not None:
                    self.walk(dot, node.else_body)
                del self.vars[mark:]
            elif t is _Range:
                self.range(dot, node)
            elif t is _TemplateCall:
                self.call_template(dot, node)
            elif t is _Break:
                raise _BreakSignal
            elif t is _Continue:
                raise _ContinueSignal
            else:
                raise AssertionError(f"unknown node {node!r}")

    def range(self, dot: Any, node: _Range) -> None:
        mark = len(self.vars)
        value = self.pipeline(dot, node.pipe)
        decl, is_assign = node.pipe.decl, node.pipe.is_assign
        if value is None or value is MISSING:
            items: Any = ()  # a nil slice or map: not an error
        elif isinstance(value, (list, tuple)):
            items = enumerate(value)
        elif isinstance(value, Mapping):
            items = _sorted_items(value)
        elif isinstance(value, int) and not isinstance(
            value, bool
        ):  # Go 1.22 range-over-int
            if len(decl) > 1:
                self.fail(
                    node, f"can't use {value} to iterate over more than one variable"
                )
            items = ((n, n) for n in range(value))
        else:
            self.fail(node, f"range can't iterate over {_fmt_v(value)}")
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

    def call_template(self, dot: Any, node: _TemplateCall) -> None:
        body = self.tmpl._trees.get(node.name)
        if body is None:
            self.fail(node, f"template {_go_quote(node.name)} not defined")
        if self.depth >= _MAX_TEMPLATE_DEPTH:
            self.fail(node, f"exceeded maximum template depth ({_MAX_TEMPLATE_DEPTH})")
        arg = self.pipeline(dot, node.pipe) if node.pipe else None
        _State(self.tmpl, node.name, self.out, arg, self.depth + 1).walk(arg, body)

    # -- expressions -----------------------------------------------------------
    def pipeline(self, dot: Any, pipe: _Pipe) -> Any:
        value = _NO_ARG
        for cmd in pipe.cmds:
            value = self.command(dot, cmd, value)  # the previous value is piped in last
        for name in pipe.decl:
            if pipe.is_assign:
                self.set_var(name, value, pipe)
            else:
                self.vars.append([name, value])
        return value

    def command(self, dot: Any, cmd: _Command, final: Any) -> Any:
        first = cmd.args[0]
        t = type(first)
        if t is _Field:
            return self.field_chain(dot, dot, first, first.idents, cmd.args[1:], final)
        if t is _Ident:
            return self.call_function(dot, first, cmd, final)
        if t is _Variable and first.idents:
            value = self.var(first.name)
            return self.field_chain(
                dot, value, first, first.idents, cmd.args[1:], final
            )
        if t is _Chain:
            return self.chain(dot, first, cmd.args[1:], final)
        if len(cmd.args) > 1 or final is not _NO_ARG:
            self.fail(cmd, f"can't give argument to non-function {first}")
        return self.arg(dot, first, cmd)

    def arg(self, dot: Any, node: _Node, cmd: _Node | None = None) -> Any:
        """Evaluate one operand, with no arguments of its own."""
        t = type(node)
        if t is _Field:
            return self.field_chain(dot, dot, node, node.idents, (), _NO_ARG)
        if t is _Variable:
            value = self.var(node.name)
            if node.idents:
                return self.field_chain(dot, value, node, node.idents, (), _NO_ARG)
            return value
        if t is _Const:
            return node.value
        if t is _Dot:
            return dot
        if t is _Pipe:
            return self.pipeline(dot, node)
        if t is _Ident:
            return self.call_function(dot, node, _Command(node.pos, (node,)), _NO_ARG)
        if t is _Chain:
            return self.chain(dot, node, (), _NO_ARG)
        if t is _Nil:
            if cmd is not None:
                self.fail(cmd, "nil is not a command")
            return None
        raise AssertionError(f"unknown operand {node!r}")

    def chain(self, dot: Any, node: _Chain, args: tuple, final: Any) -> Any:
        if type(node.node) is _Nil:
            self.fail(node, f"indirection through explicit nil in {node}")
        receiver = self.arg(dot, node.node)
        return self.field_chain(dot, receiver, node, node.fields, args, final)

    def field_chain(
        self,
        dot: Any,
        receiver: Any,
        node: _Node,
        idents: tuple[str, ...],
        args: tuple,
        final: Any,
    ) -> Any:
        """receiver.A.B.C, where only the last field may take arguments."""
        for name in idents[:-1]:
            receiver = self.field(dot, receiver, name, node, (), _NO_ARG)
        return self.field(dot, receiver, idents[-1], node, args, final)

    def field(
        self, dot: Any, receiver: Any, name: str, node: _Node, args: tuple, final: Any
    ) -> Any:
        has_args = bool(args) or final is not _NO_ARG
        if type(receiver) is dict or isinstance(receiver, Mapping):
            if has_args:
                self.fail(node, f"{name} is not a method but has arguments")
            return receiver.get(name, MISSING)
        if receiver is None or receiver is MISSING:
            return MISSING  # a zero-valued struct field: stays missing, never errors
        if isinstance(receiver, (str, int, float, list, tuple, bytes)):
            self.fail(node, f"can't evaluate field {name} in type {_go_type(receiver)}")
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

    def call_function(self, dot: Any, ident: _Ident, cmd: _Command, final: Any) -> Any:
        if ident.fn is _and or ident.fn is _or:
            # Go evaluates and/or lazily and returns the deciding operand.
            arg_nodes = cmd.args[1:]
            if not arg_nodes and final is _NO_ARG:
                self.fail(
                    cmd, f"wrong number of args for {ident.name}: want at least 1 got 0"
                )
            want = ident.fn is _or
            value = None
            for a in arg_nodes:
                value = self.arg(dot, a)
                if _truth(value) == want:
                    return value
            return value if final is _NO_ARG else final
        return self.call(
            dot, ident.fn, ident.name, cmd, cmd.args[1:], final, ident.builtin
        )

    def call(
        self,
        dot: Any,
        fn: Callable[..., Any],
        name: str,
        node: _Node,
        arg_nodes: tuple,
        final: Any,
        builtin: bool,
    ) -> Any:
        args = [self.arg(dot, a) for a in arg_nodes]
        if final is not _NO_ARG:
            args.append(final)
        if not builtin:  # callers' functions never see the MISSING sentinel
            args = [None if a is MISSING else a for a in args]
        try:
            return fn(*args)
        except TemplateError:
            raise
        except _FuncError as e:
            self.fail(node, f"error calling {name}: {e}")
        except Exception as e:  # noqa: BLE001 - a function may fail any way; Go reports them alike
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
        params = [
            p
            for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        want = sum(1 for p in params if p.default is p.empty)
        variadic = any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values())
        want_s = f"at least {want}" if variadic else str(want)
        return f"wrong number of args for {name}: want {want_s} got {got}"
    except ValueError:  # no signature available
        return None


# ---------------------------------------------------------------------------
# variables(): which top-level data fields a template reads.


def _root_fields(trees: dict[str, list]) -> set[str]:
    """Field names looked up directly on the template's data, wherever that
    data is reachable: dot at top level, `$`, variables bound to it, and dot in
    templates invoked with it.  Fields of other values (.Content inside
    `range .Messages`) are not included."""
    found: set[str] = set()
    visited: set[tuple[str, bool]] = set()

    def is_root(node: _Node, dot_root: bool, root_vars: set[str]) -> bool:
        t = type(node)
        if t is _Dot:
            return dot_root
        if t is _Variable:
            return not node.idents and node.name in root_vars
        if t is _Pipe:
            return pipe_is_root(node, dot_root, root_vars)
        return False

    def pipe_is_root(pipe: _Pipe, dot_root: bool, root_vars: set[str]) -> bool:
        return (
            len(pipe.cmds) == 1
            and len(pipe.cmds[0].args) == 1
            and is_root(pipe.cmds[0].args[0], dot_root, root_vars)
        )

    def visit_arg(a: _Node, dot_root: bool, root_vars: set[str]) -> None:
        t = type(a)
        if (t is _Field and dot_root) or (
            t is _Variable and a.idents and a.name in root_vars
        ):
            found.add(a.idents[0])
        elif t is _Chain:
            visit_arg(a.node, dot_root, root_vars)
            if is_root(a.node, dot_root, root_vars):
                found.add(a.fields[0])
        elif t is _Pipe:
            visit_pipe(a, dot_root, root_vars)

    def visit_pipe(pipe: _Pipe, dot_root: bool, root_vars: set[str]) -> None:
        for cmd in pipe.cmds:
            args = cmd.args
            for a in args:
                visit_arg(a, dot_root, root_vars)
            # index . "Key" reads a field too
            if (
                type(args[0]) is _Ident
                and args[0].name == "index"
                and len(args) >= 3
                and is_root(args[1], dot_root, root_vars)
                and type(args[2]) is _Const
                and isinstance(args[2].value, str)
            ):
                found.add(args[2].value)
        rooted = pipe_is_root(pipe, dot_root, root_vars)
        for name in pipe.decl:
            (root_vars.add if rooted else root_vars.discard)(name)

    def visit(nodes: list, dot_root: bool, root_vars: set[str]) -> None:
        for n in nodes:
            t = type(n)
            if t is _Action:
                visit_pipe(n.pipe, dot_root, root_vars)
            elif t is _If or t is _With or t is _Range:
                visit_pipe(n.pipe, dot_root, root_vars)
                if t is _If:
                    body_root = dot_root
                elif t is _With:
                    body_root = pipe_is_root(n.pipe, dot_root, root_vars)
                else:
                    body_root = False
                    root_vars.difference_update(n.pipe.decl)  # they hold elements
                visit(n.body, body_root, root_vars)
                if n.else_body is not None:
                    visit(n.else_body, dot_root, root_vars)
            elif t is _TemplateCall:
                rooted = False
                if n.pipe is not None:
                    visit_pipe(n.pipe, dot_root, root_vars)
                    rooted = pipe_is_root(n.pipe, dot_root, root_vars)
                if (n.name, rooted) not in visited and n.name in trees:
                    visited.add((n.name, rooted))
                    visit(trees[n.name], rooted, {"$"} if rooted else set())

    visit(trees.get("", []), True, {"$"})
    return found


# ---------------------------------------------------------------------------


class Template:
    """A parsed Go text/template.

    >>> Template("{{ range .Messages }}{{ .Role }}: {{ .Content }}\\n{{ end }}").render(
    ...     {"Messages": [{"Role": "user", "Content": "hi"}]})
    'user: hi\\n'

    `funcs` adds functions (or replaces builtins) by name; they are called
    with the evaluated arguments and may raise to fail the render.
    """

    def __init__(
        self, source: str, funcs: Mapping[str, Callable[..., Any]] | None = None
    ) -> None:
        table = dict(_BUILTINS)
        for name, fn in (funcs or {}).items():
            if not callable(fn):
                raise TypeError(f"template function {name!r} is not callable")
            table[name] = fn
        self._source = source
        try:
            self._trees = _Parser(source, table).parse()
        except RecursionError:  # Go's parser has a depth limit (10,000) too; ours is Python's
            raise TemplateError("template: :1: max expression depth exceeded") from None
        self._root = self._trees.get("", [])
        self._fields = frozenset(_root_fields(self._trees))

    @property
    def source(self) -> str:
        return self._source

    def render(self, data: Any) -> str:
        """Execute the template with `data` as dot; raises TemplateExecError."""
        out = _Output()
        try:
            _State(self, "", out, data, 0).walk(data, self._root)
        except RecursionError:
            raise TemplateExecError(
                "template: exceeded maximum nesting depth"
            ) from None
        return "".join(out)

    def variables(self) -> set[str]:
        """Top-level data fields the template reads, e.g. {"System", "Messages"}."""
        return set(self._fields)

    def __repr__(self) -> str:
        return (
            f"Template({self._source[:40]!r}{'...' if len(self._source) > 40 else ''})"
        )
