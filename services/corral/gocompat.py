"""Go's ways of writing values, for the places where Ollama's output is what Go wrote.

Clients and tests compare Ollama's messages, Modelfiles and stored JSON byte for byte, and
each of them comes out of one of Go's standard formatters. One copy of each lives here:

- ``quote``: ``strconv.Quote`` (``name "x" is invalid``, ``%#v``, ``printf "%q"``);
- ``format_float``: ``strconv.FormatFloat(f, 'g', -1, 64)``, as ``%v`` prints a float, and the
  variant ``encoding/json`` writes;
- ``type_name``: ``%T`` of a value, for type errors (``Unsupported type: '[]interface {}'``);
- ``marshal``/``encode``: ``json.Marshal`` and ``json.Encoder.Encode``, so a layer Corral writes
  has the digest Ollama's would.

Decoding requests as Go does is ``corral.api.gojson``'s job.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import types
from collections.abc import Mapping
from typing import Any

__all__ = ["encode", "format_float", "marshal", "quote", "type_name"]


# -- strconv ------------------------------------------------------------------------------

_QUOTE_ESCAPES = types.MappingProxyType(
    {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v", "\\": "\\\\"}
)


def quote(text: str, q: str = '"') -> str:
    """``strconv.Quote`` (``strconv.QuoteRune`` with ``q="'"``)."""
    out = [q]
    for ch in text:
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


def _float_digits(f: float) -> tuple[str, int]:
    """Shortest round-trip digits of abs(f) and the decimal point position, such that
    abs(f) == 0.DIGITS * 10**dp (``repr`` is already shortest)."""
    mant, _, exp = repr(abs(f)).partition("e")
    ip, _, fp = mant.partition(".")
    raw = ip + fp
    digits = raw.lstrip("0")
    dp = len(ip) + int(exp or 0) - (len(raw) - len(digits))
    return digits.rstrip("0") or "0", dp


def format_float(f: float, *, json: bool = False, plain: bool = False) -> str:
    """A float as Go's ``%v`` prints it (strconv 'g', shortest), with ``json=True`` as
    ``encoding/json`` writes it, with ``plain=True`` as ``FormatFloat(f, 'f', -1)`` does (never
    an exponent). They differ only in when they use an exponent."""
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    digits, dp = _float_digits(f)
    sign = "-" if f < 0 else ""
    exp = dp - 1
    if not plain and ((exp < -6 or exp >= 21) if json else (exp < -4 or exp >= 6)):
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        # %v always writes two exponent digits; json trims "e-07" to "e-7".
        num = str(abs(exp)) if json else f"{abs(exp):02d}"
        return f"{sign}{mant}e{'-' if exp < 0 else '+'}{num}"
    if dp <= 0:
        return f"{sign}0.{'0' * -dp}{digits}"
    if dp >= len(digits):
        return sign + digits + "0" * (dp - len(digits))
    return f"{sign}{digits[:dp]}.{digits[dp:]}"


# -- fmt's %T -------------------------------------------------------------------------------


def type_name(value: Any, *, decoded: bool = True) -> str:
    """Go's ``%T``. ``decoded``: the value is what ``encoding/json`` put in an ``interface{}``,
    where every number is a float64; otherwise a Python int stands for Go's int. A value of
    no Go kind is named by its Python class."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "float64" if decoded else "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "[]interface {}"
    if isinstance(value, Mapping):
        return "map[string]interface {}"
    return type(value).__name__


# -- encoding/json --------------------------------------------------------------------------


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


def marshal(value: Any, *, sort_keys: bool = False) -> str:
    """``json.Marshal``: compact, with <, > and & escaped. Map keys keep insertion order (Ollama's
    argument and schema maps are ordered) unless ``sort_keys``, as Go sorts a Go map's. A class
    with ``__json__()`` is encoded as what that returns (Go's ``json.Marshaler``). Raises
    ValueError for NaN/Inf or an object of no JSON kind."""
    out: list[str] = []
    _json_into(value, out, sort_keys)
    return "".join(out)


def encode(value: Any, *, sort_keys: bool = False) -> bytes:
    """What ``json.Encoder.Encode`` writes: ``marshal`` and a newline, as UTF-8."""
    return (marshal(value, sort_keys=sort_keys) + "\n").encode()


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, float):
        return format_float(key)
    return str(key).lower() if isinstance(key, bool) else str(key)


def _json_into(v: Any, out: list[str], sort_keys: bool) -> None:
    if v is None:
        out.append("null")
    elif v is True or v is False:
        out.append("true" if v else "false")
    elif isinstance(v, str):
        out.append('"' + v.translate(_JSON_ESCAPES) + '"')
    elif isinstance(v, int):
        out.append(str(int(v)))
    elif isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"json: unsupported value: {format_float(v)}")
        out.append(format_float(v, json=True))
    elif hasattr(type(v), "__json__"):
        _json_into(v.__json__(), out, sort_keys)
    elif isinstance(v, Mapping):
        items = [(_json_key(k), e) for k, e in v.items()]
        out.append("{")
        for n, (k, e) in enumerate(sorted(items, key=lambda item: item[0]) if sort_keys else items):
            if n:
                out.append(",")
            _json_into(k, out, sort_keys)
            out.append(":")
            _json_into(e, out, sort_keys)
        out.append("}")
    elif isinstance(v, (list, tuple)):
        out.append("[")
        for n, e in enumerate(v):
            if n:
                out.append(",")
            _json_into(e, out, sort_keys)
        out.append("]")
    elif isinstance(v, (bytes, bytearray)):  # Go encodes []byte as base64
        out.append('"' + base64.b64encode(v).decode() + '"')
    elif dataclasses.is_dataclass(v) and not isinstance(v, type):
        _json_into({f.name: getattr(v, f.name) for f in dataclasses.fields(v)}, out, sort_keys)
    elif hasattr(v, "__dict__"):
        _json_into({k: e for k, e in vars(v).items() if not k.startswith("_")}, out, sort_keys)
    else:
        raise ValueError(f"json: unsupported type: {type(v).__name__}")
