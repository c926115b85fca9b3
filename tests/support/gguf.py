"""A GGUF writer for tests: headers and metadata of any shape, no tensor data, as small as a
test needs (the readers under test see only what a header says)."""

from __future__ import annotations

import struct
from typing import Any

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_CODES = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q", I64: "q", F64: "d"}


def _str(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _typed(value):
    """(gguf type, value); tuples pass explicit types, e.g. (U64, 5) or (ARR, (I32, [1, 2]))."""
    if isinstance(value, tuple):
        return value
    if isinstance(value, bool):
        return BOOL, value
    if isinstance(value, int):
        return U32, value
    if isinstance(value, float):
        return F32, value
    if isinstance(value, str):
        return STR, value
    return ARR, (_typed(value[0])[0] if value else STR, value)


def _encode(kind, value) -> bytes:
    if kind == STR:
        return _str(value)
    if kind == ARR:
        item_kind, items = value
        return struct.pack("<IQ", item_kind, len(items)) + b"".join(_encode(item_kind, item) for item in items)
    return struct.pack("<" + _CODES[kind], value)


def gguf_bytes(kv: dict[str, Any], tensors: Any = (), *, version: int = 3, magic: bytes = b"GGUF") -> bytes:
    """A GGUF file: ``kv`` typed by ``_typed``; ``tensors`` as (name, ggml type, shape)."""
    out = [magic, struct.pack("<IQQ", version, len(tensors), len(kv))]
    for key, value in kv.items():
        kind, typed = _typed(value)
        out += [_str(key), struct.pack("<I", kind), _encode(kind, typed)]
    for name, kind, shape in tensors:
        out += [
            _str(name),
            struct.pack("<I", len(shape)),
            struct.pack(f"<{len(shape)}Q", *shape),
            struct.pack("<IQ", kind, 0),
        ]
    data = b"".join(out)
    return data + b"\0" * (-len(data) % 32)
