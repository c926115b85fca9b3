"""``size_vram`` in /api/ps: the share of a loaded model a GPU worker holds in GPU memory."""

from __future__ import annotations

import pytest

from corral.worker.app import vram_bytes

SIZE = 3_000_000
N_LAYER = 29  # 30 offloadable layers with the output layer, as llama.cpp counts n_gpu_layers


@pytest.mark.parametrize(
    ("num_gpu", "expected"),
    [
        (-1, SIZE),  # Ollama's default: every layer that fits, which llama.cpp makes all
        (999, SIZE),
        (30, SIZE),  # the blocks and the output layer
        (15, SIZE // 2),
        (1, SIZE // 30),
        (0, 0),  # num_gpu 0: CPU only, as on a CPU worker
    ],
)
def test_vram_share_follows_the_offloaded_layers(num_gpu, expected):
    assert vram_bytes(SIZE, num_gpu, N_LAYER) == expected
