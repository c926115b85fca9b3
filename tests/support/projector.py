"""A tiny vision projector (an "mmproj" GGUF) for the vision tests: random weights, real shapes.

llama.cpp's multimodal library (mtmd, in llama-cpp-python) loads it beside the test model, so the
whole image path runs for real: decode the image, resize it, run the CLIP encoder, project to the
text model's width and decode the embeddings. The weights are noise, so what the model then says
means nothing, but different images give different embeddings and (as a rule, not a promise)
different answers.

It is a LLaVA-1.5-style projector (``clip.projector_type = "mlp"``), the plainest kind clip.cpp
knows: every image is resized to one fixed square, there are no special tokens around it and the
text model decodes it causally, so an image is always exactly ``IMAGE_TOKENS`` embeddings. The
file is 0.65 MB (float32 throughout) and, once warm, an image encodes in under a millisecond on a
CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter

IMAGE_SIZE = 32  # every image is resized to this square (clip.vision.image_size)
PATCH_SIZE = 8
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 16 embeddings per image, whatever its size

WIDTH = 64  # the encoder's hidden size: as small as keeps 4 heads of 16
HEADS = 4
FFN = 128  # not WIDTH: clip.cpp takes ffn_down with ne[0] == WIDTH for an old swapped layout
BLOCKS = 2  # LLaVA reads the next-to-last block's output, so only block 0 runs
PROJ_HIDDEN = 128  # the projector MLP's hidden width
EPS = 1e-6
OUT_STD = 0.1  # mm.2's init scale: outputs spread about as SmolLM2's token embeddings (std ~0.12)


def write_projector(path: Path, *, n_embd: int = 576, seed: int = 0) -> Path:
    """Write the projector to ``path`` for a text model of width ``n_embd``; the same seed gives
    the same bytes. mtmd refuses a projector whose output width is not the text model's."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int, fan_in: int, scale: float = 1.0) -> np.ndarray:
        # Variance-preserving init: each layer's output stays about as large as its input, so
        # nothing grows towards inf and the layer norms see well-conditioned values.
        return (rng.standard_normal(shape) * (scale / np.sqrt(fan_in))).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)

    # Names and shapes are clip.cpp's (tools/mtmd/clip-impl.h, clip.cpp load_tensors). numpy
    # shapes are ggml's reversed: a linear layer is (out, in), the patch conv (out, 3, P, P).
    tensors: dict[str, np.ndarray] = {
        "v.patch_embd.weight": normal(WIDTH, 3, PATCH_SIZE, PATCH_SIZE, fan_in=3 * PATCH_SIZE**2),
        "v.patch_embd.bias": zeros(WIDTH),
        "v.position_embd.weight": normal(IMAGE_TOKENS, WIDTH, fan_in=1, scale=0.02),
        "v.pre_ln.weight": ones(WIDTH),
        "v.pre_ln.bias": zeros(WIDTH),
    }
    for block in range(BLOCKS):
        prefix = f"v.blk.{block}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors[f"{prefix}.{name}.weight"] = normal(WIDTH, WIDTH, fan_in=WIDTH)
            tensors[f"{prefix}.{name}.bias"] = zeros(WIDTH)
        for name in ("ln1", "ln2"):
            tensors[f"{prefix}.{name}.weight"] = ones(WIDTH)
            tensors[f"{prefix}.{name}.bias"] = zeros(WIDTH)
        tensors[f"{prefix}.ffn_up.weight"] = normal(FFN, WIDTH, fan_in=WIDTH)
        tensors[f"{prefix}.ffn_up.bias"] = zeros(FFN)
        tensors[f"{prefix}.ffn_down.weight"] = normal(WIDTH, FFN, fan_in=FFN)
        tensors[f"{prefix}.ffn_down.bias"] = zeros(WIDTH)
    # The LLaVA projector: mm.0 (linear), GELU, mm.2 (linear) out to the text model's width.
    tensors["mm.0.weight"] = normal(PROJ_HIDDEN, WIDTH, fan_in=WIDTH)
    tensors["mm.0.bias"] = zeros(PROJ_HIDDEN)
    tensors["mm.2.weight"] = normal(n_embd, PROJ_HIDDEN, fan_in=PROJ_HIDDEN, scale=OUT_STD)
    tensors["mm.2.bias"] = zeros(n_embd)

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(path, "clip")  # writes general.architecture = "clip"
    writer.add_type("mmproj")  # general.type: how the model store tells a projector from a model
    writer.add_name("corral-test-projector")
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type("mlp")
    # clip.cpp requires each of these keys, with exactly these GGUF types (it aborts otherwise).
    writer.add_vision_image_size(IMAGE_SIZE)
    writer.add_vision_patch_size(PATCH_SIZE)
    writer.add_vision_embedding_length(WIDTH)
    writer.add_vision_feed_forward_length(FFN)
    writer.add_vision_block_count(BLOCKS)
    writer.add_vision_head_count(HEADS)
    writer.add_vision_projection_dim(n_embd)  # read but unused by the "mlp" projector
    writer.add_vision_attention_layernorm_eps(EPS)
    writer.add_vision_image_mean([0.5, 0.5, 0.5])  # pixels to [-1, 1]
    writer.add_vision_image_std([0.5, 0.5, 0.5])
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
