"""The GGUF header reader, against synthetic files and the real test model."""

import os
import struct
import time
from pathlib import Path

import pytest

from corral.store.gguf import GGUFCache, GGUFError, human_number, read_gguf
from tests.support.gguf import ARR, BOOL, F32, F64, I8, I16, I32, I64, STR, U8, U16, U32, U64, gguf_bytes
from tests.support.model import TEST_MODEL as REAL_MODEL

LLAMA_KV = {
    "general.architecture": "llama",
    "general.name": "Tiny",
    "general.file_type": 15,
    "llama.context_length": 2048,
    "llama.embedding_length": 64,
    "llama.block_count": 2,
    "llama.rope.freq_base": 10000.0,
    "llama.attention.layer_norm_rms_epsilon": 1e-05,
    "tokenizer.ggml.tokens": ["<s>", "</s>", "a"],
    "tokenizer.chat_template": "{{ messages }}",
}
LLAMA_TENSORS = [("token_embd.weight", 12, [64, 1000]), ("output_norm.weight", 0, [64])]


def write(tmp_path: Path, data: bytes, name: str = "model.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- tests ---------------------------------------------------------------------------------


def test_reads_metadata_and_tensors(tmp_path):
    info = read_gguf(write(tmp_path, gguf_bytes(LLAMA_KV, LLAMA_TENSORS)))
    assert info.architecture == "llama"
    assert info.file_type == "Q4_K_M"
    assert info.context_length == 2048
    assert info.embedding_length == 64
    assert info.chat_template == "{{ messages }}"
    assert info.kv["tokenizer.ggml.tokens"] == ["<s>", "</s>", "a"]
    assert info.tensors == [
        {"name": "token_embd.weight", "type": "Q4_K", "shape": [64, 1000]},
        {"name": "output_norm.weight", "type": "F32", "shape": [64]},
    ]
    # Ollama's parameter count is the sum of tensor elements, patched into the KV.
    assert info.parameter_count == 64 * 1000 + 64
    assert info.kv["general.parameter_count"] == 64064
    assert not info.is_embedding
    assert not info.is_projector


def test_every_value_type(tmp_path):
    kv = {
        "u8": (U8, 255),
        "i8": (I8, -1),
        "u16": (U16, 65535),
        "i16": (I16, -2),
        "u32": (U32, 7),
        "i32": (I32, -3),
        "u64": (U64, 2**40),
        "i64": (I64, -(2**40)),
        "f32": (F32, 0.1),
        "f64": (F64, 0.1),
        "bool": (BOOL, True),
        "str": (STR, "héllo"),
        "ints": (ARR, (I32, [1, -2, 3])),
        "floats": (ARR, (F32, [0.5, 1e-05])),
        "bools": (ARR, (BOOL, [True, False])),
        "nested": (ARR, (ARR, [(STR, ["a"]), (STR, ["b", "c"])])),
        "empty": (ARR, (STR, [])),
    }
    info = read_gguf(write(tmp_path, gguf_bytes(kv)))
    assert info.kv | {"general.parameter_count": 0} == {
        "u8": 255,
        "i8": -1,
        "u16": 65535,
        "i16": -2,
        "u32": 7,
        "i32": -3,
        "u64": 2**40,
        "i64": -(2**40),
        "f32": 0.1,  # the shortest float32 form, as Go prints it, not 0.10000000149
        "f64": 0.1,
        "bool": True,
        "str": "héllo",
        "ints": [1, -2, 3],
        "floats": [0.5, 1e-05],
        "bools": [True, False],
        "nested": [["a"], ["b", "c"]],
        "empty": [],
        "general.parameter_count": 0,
    }


@pytest.mark.parametrize(
    ("kv", "embedding"),
    [
        ({"general.architecture": "bert"}, True),
        ({"general.architecture": "nomic-bert"}, True),
        ({"general.architecture": "qwen3", "qwen3.pooling_type": 3}, True),
        ({"general.architecture": "qwen3"}, False),
    ],
)
def test_embedding_models(tmp_path, kv, embedding):
    assert read_gguf(write(tmp_path, gguf_bytes(kv))).is_embedding is embedding


@pytest.mark.parametrize(
    "kv",
    [
        {"general.architecture": "clip", "general.type": "mmproj"},
        {"general.architecture": "clip", "clip.has_vision_encoder": True},
    ],
)
def test_projectors(tmp_path, kv):
    assert read_gguf(write(tmp_path, gguf_bytes(kv))).is_projector


def test_unknown_file_type(tmp_path):
    assert read_gguf(write(tmp_path, gguf_bytes({"general.architecture": "llama"}))).file_type == "unknown"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "invalid file magic"),
        (b"PK\x03\x04" + b"\0" * 64, "invalid file magic"),
        (b'{"not": "a model"}' + b" " * 40, "invalid file magic"),
        (gguf_bytes({}, version=1), "unsupported GGUF version 1"),
    ],
)
def test_not_gguf(tmp_path, data, message):
    with pytest.raises(GGUFError) as info:
        read_gguf(write(tmp_path, data))
    assert info.value.message == message
    assert info.value.status == 400


def test_truncated_file_is_an_error_not_a_crash(tmp_path):
    data = gguf_bytes(LLAMA_KV, LLAMA_TENSORS)
    for cut in (30, len(data) // 2, len(data) - 40):
        with pytest.raises(GGUFError):
            read_gguf(write(tmp_path, data[:cut]))


def test_big_endian_file(tmp_path):
    def be_str(text):
        return struct.pack(">Q", len(text)) + text.encode()

    data = b"GGUF" + struct.pack(">IQQ", 3, 1, 1) + be_str("general.architecture") + struct.pack(">I", STR)
    data += be_str("llama") + be_str("w") + struct.pack(">I", 1) + struct.pack(">Q", 10) + struct.pack(">IQ", 0, 0)
    info = read_gguf(write(tmp_path, data + b"\0" * 32))
    assert info.architecture == "llama"
    assert info.tensors == [{"name": "w", "type": "F32", "shape": [10]}]


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (999, "999"),
        (1000, "1K"),
        (135000, "135K"),
        (1000000, "1M"),
        (125000000, "125M"),
        (134515008, "134.52M"),
        (500500000, "500.50M"),
        (1000000000, "1B"),
        (2800000000, "2.8B"),
        (3212749888, "3.2B"),
        (8030261248, "8.0B"),
        (1000000000000, "1000B"),
    ],
)
def test_human_number(n, text):
    assert human_number(n) == text


def test_cache_reuses_and_notices_changes(tmp_path):
    cache = GGUFCache(maxsize=2)
    path = write(tmp_path, gguf_bytes(LLAMA_KV))
    first = cache.read(path)
    assert cache.read(path) is first
    write(tmp_path, gguf_bytes({**LLAMA_KV, "general.architecture": "qwen2", "extra": "x"}))
    assert cache.read(path).architecture == "qwen2"


def test_a_used_blob_is_not_parsed_again(tmp_path):
    # The worker's blob cache touches a blob on every use; its bytes are its name, so the
    # header read before still holds (a cache keyed on mtime filled itself with copies).
    cache = GGUFCache(maxsize=4)
    path = write(tmp_path, gguf_bytes(LLAMA_KV), "sha256-" + "ab" * 32)
    first = cache.read(path)
    os.utime(path, (time.time() + 60, time.time() + 60))
    assert cache.read(path) is first
    other = write(tmp_path, gguf_bytes(LLAMA_KV), "model.gguf")
    before = cache.read(other)
    os.utime(other, (time.time() + 60, time.time() + 60))
    assert cache.read(other) is not before  # a file of any other name may have changed


def test_cache_is_bounded(tmp_path):
    cache = GGUFCache(maxsize=2)
    paths = [write(tmp_path, gguf_bytes(LLAMA_KV), f"m{i}.gguf") for i in range(3)]
    infos = [cache.read(p) for p in paths]
    assert cache.read(paths[2]) is infos[2]
    assert cache.read(paths[0]) is not infos[0]  # evicted, read again


@pytest.mark.skipif(not REAL_MODEL.is_file(), reason="real test model not present")
def test_real_model():
    started = time.perf_counter()
    info = read_gguf(REAL_MODEL)
    elapsed = time.perf_counter() - started
    assert info.architecture == "llama"
    assert info.file_type == "Q4_1"
    assert info.parameter_count == 134515008
    assert human_number(info.parameter_count) == "134.52M"
    assert info.context_length == 8192
    assert info.embedding_length == 576
    assert len(info.kv["tokenizer.ggml.tokens"]) == 49152
    assert info.kv["tokenizer.ggml.tokens"][2] == "<|im_end|>"
    assert "<|im_start|>" in (info.chat_template or "")
    assert len(info.tensors) == 272
    assert not info.is_embedding
    # Reading ~100k vocabulary strings must stay cheap: show and create do it.
    assert elapsed < 1.0
