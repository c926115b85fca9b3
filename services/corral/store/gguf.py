"""A pure-Python reader for GGUF metadata: key/values and tensor descriptions, no weights.

Only the header is read (through mmap, so the 100 MB of weights after it are never
touched). Type and file-type names are llama.cpp's, which Ollama's agree with wherever
Ollama has one.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import re
import struct
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.api.errors import BadRequestError

logger = logging.getLogger(__name__)

# ggml_type ids (ggml.h) -> names.
TENSOR_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 4: "MXFP4", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0",
    9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K",
    16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
    22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}  # fmt: skip

# llama_ftype ids (general.file_type) -> names, as `ollama show` prints them.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 4: "MXFP4", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE",
}  # fmt: skip

# Architectures that are embedding-only whatever their metadata says.
EMBEDDING_ARCHITECTURES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "t5encoder"})

# GGUF value types -> struct codes (8 = string, 9 = array are handled apart).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# Arrays up to this size get float32 values rounded to their shortest form, as Go prints
# them; bigger ones (tokenizer scores) are left as read, since rounding costs ~µs each.
_PRETTY_FLOAT_LIMIT = 1024


class GGUFError(BadRequestError):
    """Not a GGUF file, or a damaged one."""


@dataclass
class GGUFInfo:
    kv: dict[str, Any]
    tensors: list[dict] = field(default_factory=list)
    version: int = 3

    @property
    def architecture(self) -> str:
        return str(self.kv.get("general.architecture", "unknown"))

    @property
    def kind(self) -> str:
        """``general.type``: "model", "adapter", "projector"/"mmproj", or "unknown"."""
        return str(self.kv.get("general.type", "unknown"))

    @property
    def parameter_count(self) -> int:
        return int(self.kv.get("general.parameter_count", 0))

    @property
    def file_type(self) -> str:
        value = self.kv.get("general.file_type")
        if not isinstance(value, int):
            return "unknown"
        return FILE_TYPES.get(value & ~1024, "unknown")  # 1024 = llama.cpp's "guessed" flag

    def arch_value(self, key: str) -> Any:
        return self.kv.get(f"{self.architecture}.{key}")

    @property
    def context_length(self) -> int | None:
        value = self.arch_value("context_length")
        return int(value) if isinstance(value, int) else None

    @property
    def embedding_length(self) -> int | None:
        value = self.arch_value("embedding_length")
        return int(value) if isinstance(value, int) else None

    @property
    def chat_template(self) -> str | None:
        value = self.kv.get("tokenizer.chat_template")
        return value if isinstance(value, str) and value else None

    @property
    def pooling(self) -> int | None:
        value = self.arch_value("pooling_type")
        return int(value) if isinstance(value, int) else None

    @property
    def is_embedding(self) -> bool:
        # Ollama's rule: a pooling type means the model embeds rather than generates.
        return self.architecture in EMBEDDING_ARCHITECTURES or self.pooling is not None

    @property
    def is_projector(self) -> bool:
        """A vision/audio projector (mmproj) rather than a language model."""
        if self.kind in ("projector", "mmproj"):
            return True
        block_count = self.arch_value("block_count")
        if not block_count and self.kv.get(f"{self.architecture}.vision.block_count"):
            return True
        return self.architecture == "clip" and not block_count


def read_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """Read a GGUF header; ``GGUFError`` (a 400) for anything that is not one."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise GGUFError("invalid file magic")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _Reader(buf).read()


class _Truncated(ValueError):
    """The header goes on past the bytes we have."""


class GGUFTruncatedError(GGUFError):
    pass


def read_gguf_prefix(fetch: Callable[[int], bytes], size: int, *, first: int = 2 << 20) -> GGUFInfo:
    """Read a GGUF header from a file we can only fetch prefixes of (a blob in a registry).

    ``fetch(n)`` returns the first ``n`` bytes. The header (vocabulary included) is a few
    MB even for big models, so this asks for 2 MB and doubles until the header fits.
    """
    n = min(first, size)
    while True:
        data = fetch(n)
        try:
            if len(data) < 24:
                raise GGUFError("invalid file magic")
            return _Reader(data).read()
        except GGUFTruncatedError:
            if n >= size:
                raise GGUFError("invalid GGUF file: unexpected end of file") from None
            n = min(n * 2, size)


class _Reader:
    def __init__(self, buf: mmap.mmap | bytes) -> None:
        self.buf = buf
        self.pos = 0
        self.order = "<"

    def read(self) -> GGUFInfo:
        magic = self.buf[:4]
        if magic == b"GGUF":
            version = struct.unpack_from("<I", self.buf, 4)[0]
            if version > 0xFFFF:  # a big-endian file keeps the magic but swaps the rest
                self.order = ">"
                version = struct.unpack_from(">I", self.buf, 4)[0]
        elif magic == b"FUGG":
            self.order = ">"
            version = struct.unpack_from(">I", self.buf, 4)[0]
        else:
            raise GGUFError("invalid file magic")
        if version not in (2, 3):
            raise GGUFError(f"unsupported GGUF version {version}")
        self.pos = 8
        try:
            n_tensors = self._scalar("Q")
            n_kv = self._scalar("Q")
            kv: dict[str, Any] = {}
            for _ in range(n_kv):
                key = self._string()
                kv[key] = self._value(self._scalar("I"))
            tensors, parameters = [], 0
            for _ in range(n_tensors):
                name = self._string()
                n_dims = self._scalar("I")
                shape = list(self._unpack(f"{n_dims}Q", 8 * n_dims))
                kind = self._scalar("I")
                self.pos += 8  # data offset: not needed for metadata
                tensors.append({"name": name, "type": TENSOR_TYPES.get(kind, "unknown"), "shape": shape})
                parameters += math.prod(shape)
        except _Truncated as exc:
            raise GGUFTruncatedError(f"invalid GGUF file: {exc}") from exc
        except (struct.error, IndexError, ValueError, OverflowError, MemoryError) as exc:
            raise GGUFError(f"invalid GGUF file: {exc}") from exc
        # Ollama patches the count over whatever the file says; model_info shows it.
        kv["general.parameter_count"] = parameters
        return GGUFInfo(kv=kv, tensors=tensors, version=version)

    def _unpack(self, fmt: str, size: int) -> tuple:
        if self.pos + size > len(self.buf):
            raise _Truncated("unexpected end of file")
        values = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += size
        return values

    def _scalar(self, code: str) -> Any:
        return self._unpack(code, struct.calcsize(code))[0]

    def _string(self) -> str:
        length = self._scalar("Q")
        end = self.pos + length
        if end > len(self.buf):
            raise _Truncated("string runs past the end of the file")
        data = self.buf[self.pos : end]
        self.pos = end
        return data.decode("utf-8", errors="replace")

    def _value(self, kind: int) -> Any:
        if kind == _STRING:
            return self._string()
        if kind == _ARRAY:
            return self._array()
        code = _SCALARS.get(kind)
        if code is None:
            raise ValueError(f"invalid type: {kind}")
        value = self._scalar(code)
        return _shortest_float32(value) if code == "f" else value

    def _array(self) -> list:
        kind = self._scalar("I")
        count = self._scalar("Q")
        if kind == _STRING:
            return self._strings(count)
        if kind == _ARRAY:
            return [self._array() for _ in range(count)]
        code = _SCALARS.get(kind)
        if code is None:
            raise ValueError(f"invalid array type: {kind}")
        width = struct.calcsize(code)
        end = self.pos + width * count
        if end > len(self.buf):
            raise _Truncated("array runs past the end of the file")
        if code == "?":
            values: list = [b != 0 for b in self.buf[self.pos : end]]
        else:
            typed = array(code)
            typed.frombytes(self.buf[self.pos : end])
            if self.order == ">" and width > 1:
                typed.byteswap()
            values = typed.tolist()
            if code == "f" and count <= _PRETTY_FLOAT_LIMIT:
                values = [_shortest_float32(v) for v in values]
        self.pos = end
        return values

    def _strings(self, count: int) -> list[str]:
        # The tokenizer vocabulary is tens of thousands of strings: keep this loop tight.
        buf, pos, size = self.buf, self.pos, len(self.buf)
        unpack = struct.Struct(self.order + "Q").unpack_from
        out: list[str] = []
        append = out.append
        for _ in range(count):
            if pos + 8 > size:
                raise _Truncated("string runs past the end of the file")
            (length,) = unpack(buf, pos)
            pos += 8
            end = pos + length
            if end > size:
                raise _Truncated("string runs past the end of the file")
            append(buf[pos:end].decode("utf-8", errors="replace"))
            pos = end
        self.pos = pos
        return out


def _shortest_float32(value: float) -> float:
    """The shortest decimal that reads back as the same float32, as Go prints float32s."""
    if not math.isfinite(value):
        return value
    packed = struct.pack("<f", value)
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack("<f", candidate) == packed:
            return candidate
    return value


def kv_cache_bytes(info: GGUFInfo, *, num_ctx: int, n_parallel: int) -> int:
    """An f16 KV cache for ``n_parallel`` sequences of ``num_ctx`` tokens: what loading adds
    to the weights. Shared by the worker (what it loads) and the router (where it fits)."""
    arch = info.architecture
    kv = info.kv
    layers = int(kv.get(f"{arch}.block_count") or 0)
    embd = int(kv.get(f"{arch}.embedding_length") or 0)
    heads = int(kv.get(f"{arch}.attention.head_count") or 1) or 1
    kv_heads = int(kv.get(f"{arch}.attention.head_count_kv") or heads)
    return 2 * layers * num_ctx * n_parallel * (embd * kv_heads // heads) * 2


def human_number(n: int) -> str:
    """Ollama's ``format.HumanNumber``: 134515008 -> "134.52M", 8030261248 -> "8.0B"."""
    if n >= 1_000_000_000:
        value = n / 1_000_000_000
        return f"{value:.0f}B" if value == math.floor(value) else f"{value:.1f}B"
    if n >= 1_000_000:
        value = n / 1_000_000
        return f"{value:.0f}M" if value == math.floor(value) else f"{value:.2f}M"
    if n >= 1_000:
        return f"{n / 1_000:.0f}K"
    return str(n)


# A blob in Ollama's layout: its name is the sha256 of its bytes.
_BLOB_NAME = re.compile(r"sha256-[0-9a-f]{64}")


class GGUFCache:
    """Recently read headers, keyed by the file (path, inode, size, mtime) so a replaced file
    is re-read. A blob's bytes are its name, so its mtime is left out of its key: the worker's
    blob cache touches a blob each time it is used (least-recently-used pruning), and a key
    with the mtime in it would parse the header again after every touch, keeping up to
    ``maxsize`` copies of one vocabulary.

    Bounded because one entry holds a whole vocabulary (~10 MB of Python strings for a
    50k-token model); a handful covers the models a server actually shows or loads.
    Thread-safe, since reads run in worker threads.
    """

    def __init__(self, maxsize: int = 8) -> None:
        self.maxsize = maxsize
        self._entries: OrderedDict[tuple[str, int, int, int], GGUFInfo] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, path: str | os.PathLike[str]) -> GGUFInfo:
        stat = os.stat(path)
        path = Path(path)
        changed = 0 if _BLOB_NAME.fullmatch(path.name) else stat.st_mtime_ns
        key = (str(path), stat.st_ino, stat.st_size, changed)
        with self._lock:
            info = self._entries.get(key)
            if info is not None:
                self._entries.move_to_end(key)
                return info
        info = read_gguf(path)
        with self._lock:
            self._entries[key] = info
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
        return info

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
