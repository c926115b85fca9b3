"""What a stored model is: its chat template, capabilities, and memory needs.

Shared by inference (capability checks before loading), ``/api/show``/``/api/tags``
(capabilities) and the loader (memory estimate), so all three agree.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from corral.store.gguf import kv_cache_bytes
from corral.worker.prompt import ChatTemplate

_CACHE_SIZE = 64  # distinct models described; each entry holds one parsed template

# Architectures that only embed (no causal decoding), as Ollama treats them.
_EMBEDDING_ARCHS = {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "t5encoder", "modern-bert"}


class ModelInspector:
    def __init__(self, gguf_cache: Any) -> None:
        self._gguf = gguf_cache
        self._cache: OrderedDict[tuple, tuple[ChatTemplate, list[str]]] = OrderedDict()

    def gguf(self, record: Any) -> Any | None:
        if record.model_path is None:
            return None
        return self._gguf.read(record.model_path)

    def describe(self, record: Any, info: Any = None) -> tuple[ChatTemplate, list[str]]:
        """``info``: the model's GGUF header when the caller has it (a remote store has no file)."""
        key = (record.digest, record.template)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        if info is None:
            info = self.gguf(record)
        jinja = info.chat_template if info is not None else None
        bos = eos = ""
        if info is not None:
            tokens = info.kv.get("tokenizer.ggml.tokens") or []
            bos_id = info.kv.get("tokenizer.ggml.bos_token_id")
            eos_id = info.kv.get("tokenizer.ggml.eos_token_id")
            if isinstance(bos_id, int) and 0 <= bos_id < len(tokens):
                bos = tokens[bos_id]
            if isinstance(eos_id, int) and 0 <= eos_id < len(tokens):
                eos = tokens[eos_id]
        template = ChatTemplate.build(record.template, jinja, bos=bos, eos=eos)
        embedding = info is not None and (info.architecture in _EMBEDDING_ARCHS or bool(info.is_embedding))
        caps = template.capabilities(embedding=embedding, vision=bool(record.projectors))
        self._cache[key] = (template, caps)
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return template, caps

    def capabilities(self, record: Any, info: Any = None) -> list[str]:
        return self.describe(record, info)[1]

    def memory_estimate(self, record: Any, *, num_ctx: int, n_parallel: int) -> int:
        """Weights (a projector's included) plus an f16 KV cache for every sequence: what
        loading will take."""
        weights = record.model_path.stat().st_size if record.model_path else 0
        weights += sum(path.stat().st_size for path in record.projectors if path.exists())
        info = self.gguf(record)
        if info is None:
            return weights
        return weights + kv_cache_bytes(info, num_ctx=num_ctx, n_parallel=n_parallel)
