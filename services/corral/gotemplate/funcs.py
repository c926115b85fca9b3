"""The builtin functions: Go's funcs.go, plus Ollama's json and currentDate."""

from __future__ import annotations

import datetime
import types
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from corral.gocompat import marshal
from corral.gotemplate.fmt import fmt_v, sprint, sprintf, sprintln
from corral.gotemplate.values import MISSING, FuncError, go_type, truth

# They receive MISSING as-is so they can treat it like a zero value.


def and_(*args: Any) -> Any:
    # The executor short-circuits and/or itself; this is the eager fallback.
    if not args:
        raise FuncError("wrong number of args for and: want at least 1 got 0")
    for a in args:
        if not truth(a):
            return a
    return args[-1]


def or_(*args: Any) -> Any:
    if not args:
        raise FuncError("wrong number of args for or: want at least 1 got 0")
    for a in args:
        if truth(a):
            return a
    return args[-1]


def _not(arg: Any) -> bool:
    return not truth(arg)


_KINDS = types.MappingProxyType({bool: "bool", int: "int", float: "float", str: "string"})


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
        raise FuncError("missing argument for comparison")
    k1 = _basic_kind(arg1)
    for arg in args:
        k2 = _basic_kind(arg)
        if k1 != k2:
            if k1 == "nil" or k2 == "nil":
                continue
            raise FuncError("incompatible types for comparison")
        if k1 == "nil":
            return True
        if k1 == "other" and isinstance(arg1, (list, tuple, Mapping, set)):
            raise FuncError(f"non-comparable type {fmt_v(arg1)}: {go_type(arg1)}")
        if arg1 == arg:
            return True
    return False


def _ne(arg1: Any, arg2: Any) -> bool:
    return not _eq(arg1, arg2)


def _lt(arg1: Any, arg2: Any) -> bool:
    k1, k2 = _basic_kind(arg1), _basic_kind(arg2)
    if k1 not in ("int", "float", "string") or k2 not in ("int", "float", "string"):
        raise FuncError("invalid type for comparison")
    if k1 != k2:
        raise FuncError("incompatible types for comparison")
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
    raise FuncError(f"len of type {go_type(item)}")


def _index_arg(ix: Any, cap: int) -> int:
    if isinstance(ix, bool) or not isinstance(ix, int):
        if ix is None or ix is MISSING:
            raise FuncError("cannot index slice/array with nil")
        raise FuncError(f"cannot index slice/array with type {go_type(ix)}")
    if ix < 0 or ix > cap:
        raise FuncError(f"index out of range: {ix}")
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
                raise FuncError(f"value has type {go_type(ix)}; should be string") from None
        elif isinstance(item, (list, tuple, bytes)):
            x = _index_arg(ix, len(item))
            if x == len(item):
                raise FuncError(f"index out of range: {x}")
            item = item[x]
        elif isinstance(item, str):  # Go indexes strings by byte, yielding a number
            seq = item.encode("utf-8", "surrogatepass")
            x = _index_arg(ix, len(seq))
            if x == len(seq):
                raise FuncError(f"index out of range: {x}")
            item = seq[x]
        else:
            raise FuncError(f"can't index item of type {go_type(item)}")
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    """slice x 1 2 is x[1:2]; a third index is Go's capacity bound."""
    if item is None or item is MISSING:
        item = []
    if len(indexes) > 3:
        raise FuncError(f"too many slice indexes: {len(indexes)}")
    seq: str | bytes | list | tuple
    if isinstance(item, str):
        if len(indexes) == 3:
            raise FuncError("cannot 3-index slice a string")
        seq = _utf8(item)
    elif isinstance(item, (list, tuple)):
        seq = item
    else:
        raise FuncError(f"can't slice item of type {go_type(item)}")
    idx = [0, len(seq), len(seq)]
    for n, ix in enumerate(indexes):
        idx[n] = _index_arg(ix, len(seq))
    if idx[0] > idx[1]:
        raise FuncError(f"invalid slice index: {idx[0]} > {idx[1]}")
    if len(indexes) == 3 and idx[1] > idx[2]:
        raise FuncError(f"invalid slice index: {idx[1]} > {idx[2]}")
    out = seq[idx[0] : idx[1]]
    return out.decode("utf-8", "replace") if isinstance(out, bytes) else out


def _eval_args(args: tuple) -> str:
    """The single string that html/js/urlquery escape (Go's evalArgs)."""
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return sprint(*("<no value>" if a is None else "" if a is MISSING else a for a in args))


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
        return marshal(v)
    except ValueError:
        return ""  # Ollama ignores json.Marshal's error and prints nothing


def _current_date(*_args: Any) -> str:
    # Ollama accepts (and ignores) a format argument.
    return datetime.date.today().strftime("%Y-%m-%d")


BUILTINS: Mapping[str, Callable[..., Any]] = types.MappingProxyType(
    {
        "and": and_,
        "or": or_,
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
        "print": sprint,
        "printf": sprintf,
        "println": sprintln,
        "html": _html,
        "js": _js,
        "urlquery": _urlquery,
        "json": _json_func,
        "currentDate": _current_date,
    }
)
