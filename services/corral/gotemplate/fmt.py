"""Go's fmt, as templates print: %v for a value, and the print, printf and println functions."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from corral.gocompat import format_float, quote
from corral.gotemplate.values import MISSING, FuncError, go_type, is_stringer

_FMT_TOO_LARGE = 1_000_000  # Go's fmt: a width or precision past this is refused (tooLarge)


def sorted_items(m: Mapping) -> list:
    """Map entries in key order, as Go's fmt and range both visit them."""
    try:
        return sorted(m.items(), key=lambda kv: kv[0])
    except TypeError:  # mixed key types: group by type, like Go's fmtsort
        return sorted(m.items(), key=lambda kv: (go_type(kv[0]), fmt_v(kv[0])))


def fmt_v(v: Any) -> str:
    """fmt's %v: how print, printf "%v" and nested values render."""
    t = type(v)
    if t is str:
        return v
    if t is int:
        return str(v)
    if t is bool:
        return "true" if v else "false"
    if t is float:
        return format_float(v)
    return _fmt_one(v, "v", "", None, None)


def print_value(v: Any) -> str:
    """How an action ({{ pipeline }}) writes its value."""
    if type(v) is str:
        return v
    if v is MISSING:
        return ""
    if v is None:  # Go prints a nil interface as "<no value>"
        return "<no value>"
    return fmt_v(v)


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
        return quote(chr(v), "'")
    if verb == "U":
        return f"U+{v:04X}"
    base = {"d": "d", "v": "d", "b": "b", "o": "o", "O": "o", "x": "x", "X": "X"}.get(verb)
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
        s = format_float(v)
        return s if s[0] in "+-" else _sign(False, flags) + s
    if verb in "vgG" and prec is None:
        s = format_float(abs(v))
        s = s.upper() if verb == "G" else s
    else:
        s = format(abs(v), f".{6 if prec is None else prec}{'f' if verb == 'F' else verb}")
    return _sign(math.copysign(1.0, v) < 0, flags) + s


def _bad_verb(v: Any, verb: str) -> str:
    if v is None:
        return f"%!{verb}(<nil>)"
    return f"%!{verb}({go_type(v)}={fmt_v(v)})"


def _fmt_one(v: Any, verb: str, flags: str, width: int | None, prec: int | None) -> str:
    """Format one printf operand.  Containers apply the verb to each element,
    as Go's fmt does ('%d' of [1 2] is "[1 2]")."""
    if v is MISSING:
        v = ""
    if verb == "T":
        return _pad(go_type(v), flags, width)
    numeric = False
    s: str | None  # None: the verb does not apply to the value
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
    elif isinstance(v, str) or (is_stringer(v) and verb in "vsqxX"):
        text = str(v)
        if verb in "vs":
            s = text if prec is None else text[:prec]
        elif verb == "q":
            s = quote(text)
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
                for k, e in sorted_items(v)
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


def sprintf(format_: str, *args: Any) -> str:
    """fmt.Sprintf, including Go's in-band error notes (%!d(MISSING), ...)."""
    if not isinstance(format_, str):
        raise FuncError(f"wrong type for value; expected string; got {go_type(format_)}")
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
        assert spec is not None  # every part of the pattern is optional
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
        extra = ", ".join("<nil>" if a is None else f"{go_type(a)}={fmt_v(a)}" for a in args[argn:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def sprint(*args: Any) -> str:
    """fmt.Sprint: spaces go between operands when neither is a string."""
    out = []
    prev_string = False
    for n, a in enumerate(args):
        if a is MISSING:
            a = ""
        is_string = isinstance(a, str)
        if n and not is_string and not prev_string:
            out.append(" ")
        out.append("<nil>" if a is None else fmt_v(a))
        prev_string = is_string
    return "".join(out)


def sprintln(*args: Any) -> str:
    """fmt.Sprintln: always space-separated, newline-terminated."""
    return " ".join("<nil>" if a is None else fmt_v("" if a is MISSING else a) for a in args) + "\n"
