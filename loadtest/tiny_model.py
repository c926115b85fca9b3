#!/usr/bin/env python
"""A tiny GGUF for measuring an engine's per-step overhead on a CPU. Not a usable model.

On a GPU a decode step of SmolLM2 takes ~1.3 ms, so what a server does around ``llama_decode``
(batch building, sampling, handing tokens to HTTP responses) is a visible share of it; on this
2-core CPU the same step takes ~13 ms and hides it. This writes a model with SmolLM2's own
tokenizer (copied from the given GGUF: same vocabulary, same chat template) but only a few
narrow layers of seeded random weights, so a step on the CPU is in the GPU's range and
``bench_engine.py --model`` shows the overhead here.

The text it writes is noise. Its end-of-generation tokens get an all-zero embedding row, so
their logit is 0 while the best of ~49k random ones is well above it: streams run to
``num_predict`` like the real model's do on the benchmark's prompt.

    .venv/bin/python loadtest/tiny_model.py /tmp/tiny.gguf            # from the test model
    .venv/bin/python loadtest/tiny_model.py /tmp/tiny.gguf --embd 64 --layers 2
    .venv/bin/python loadtest/bench_engine.py --model /tmp/tiny.gguf --threads 1 --out /tmp/engine-tiny.md

It needs the ``gguf`` package from the llama.cpp sources that bench_engine.py unpacks (or
``pip install gguf``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import CACHE, DEFAULT_MODEL, LLAMA_CPP_VERSION, OVERHEAD_MODEL  # noqa: E402

GGUF_PY = CACHE / f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/gguf-py"
HEAD_DIM = 16
SEED = 7


def _gguf():
    try:
        import gguf
    except ImportError:
        if not GGUF_PY.is_dir():
            sys.exit(f"gguf-py not found: run `loadtest/bench_engine.py --build-only` first (it unpacks {GGUF_PY}), "
                     f"or pip install gguf")
        sys.path.insert(0, str(GGUF_PY))
        import gguf
    return gguf


def write(source: Path, out: Path, *, embd: int, layers: int, ff: int) -> None:
    gguf = _gguf()
    reader = gguf.GGUFReader(str(source))
    arch = reader.fields["general.architecture"].contents()
    if arch != "llama":
        sys.exit(f"{source}: architecture {arch!r}; only llama-architecture tokenizers are copied")
    writer = gguf.GGUFWriter(str(out), "llama")
    # The tokenizer, as it is: llama.cpp reads it the same way as the real model's.
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        value = field.contents()
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, value, vtype, sub_type=field.types[-1])
        else:
            writer.add_key_value(key, value, vtype)
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].contents())
    heads = embd // HEAD_DIM
    kv_heads = max(1, heads // 2)
    writer.add_name(f"{OVERHEAD_MODEL}-{embd}x{layers}")
    writer.add_context_length(8192)
    writer.add_embedding_length(embd)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(100000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    rng = np.random.default_rng(SEED)

    def weights(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float16)

    # Tied embeddings, as SmolLM2's: the output layer is token_embd.
    embedding = (rng.standard_normal((n_vocab, embd))).astype(np.float16)
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    control = [i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL]
    eos = reader.fields.get("tokenizer.ggml.eos_token_id")
    end_ids = set(control) | ({int(eos.contents())} if eos else set())
    embedding[sorted(end_ids)] = 0  # never the best logit: streams run to num_predict
    writer.add_tensor("token_embd.weight", embedding)
    writer.add_tensor("output_norm.weight", np.ones(embd, dtype=np.float32))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weights(heads * HEAD_DIM, embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weights(kv_heads * HEAD_DIM, embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weights(kv_heads * HEAD_DIM, embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weights(embd, heads * HEAD_DIM))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(embd, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weights(ff, embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weights(ff, embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weights(embd, ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="where to write the GGUF")
    p.add_argument("--source", type=Path, default=DEFAULT_MODEL, help="GGUF whose tokenizer to copy")
    p.add_argument("--embd", type=int, default=64, help=f"embedding width, a multiple of {HEAD_DIM} (default 64)")
    p.add_argument("--layers", type=int, default=2, help="transformer blocks (default 2)")
    p.add_argument("--ff", type=int, default=128, help="feed-forward width (default 128)")
    args = p.parse_args(argv)
    if args.embd < HEAD_DIM or args.embd % HEAD_DIM or args.layers < 1 or args.ff < 1:
        p.error(f"--embd must be a positive multiple of {HEAD_DIM}; --layers and --ff at least 1")
    write(args.source, args.out, embd=args.embd, layers=args.layers, ff=args.ff)
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB, {args.layers} × {args.embd} wide, "
          f"tokenizer from {args.source.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
