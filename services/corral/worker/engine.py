"""Inference on one loaded model: one llama.cpp context, several sequences, one decode loop.

Every loaded model gets one ``Engine``. It owns a single llama.cpp context whose KV cache
holds ``n_parallel`` sequences, and a thread that runs the decode loop: each step takes one
token from every sequence that is generating plus a chunk of prompt from sequences still
reading theirs (so a long prompt never stalls running streams for long), runs one
``llama_decode``, samples each sequence with its own llama.cpp sampler chain, and hands
each token to its job through the job's ``emit`` callback. A job may also name a ``post``
hook (``loop.call_soon_threadsafe``): the tokens of one step then cross to the consumer's
thread in one handoff per step, not one per sequence.

The weights are loaded once (``LlamaModel``) however many sequences run. Sampling, grammar
included, happens inside llama.cpp: the per-token Python work is a few ctypes calls.
This module knows nothing about HTTP; ``corral.worker.inference`` turns its events into
Ollama responses.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import llama_cpp as lc
import numpy as np

from corral.api.errors import CorralError
from corral.worker.malloc import release_free_memory

if TYPE_CHECKING:
    from corral.worker.vision import Vision

logger = logging.getLogger(__name__)

_llama_logger = logging.getLogger("corral.llama_cpp")
_GGML_LOG_ERROR = 4  # ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 cont


@lc.llama_log_callback
def forward_llama_log(level: int, text: bytes, _user: object) -> None:
    # llama.cpp prints hundreds of lines per load; keep them at debug unless they are errors.
    message = text.decode("utf-8", errors="replace").rstrip()
    if message:
        _llama_logger.log(logging.ERROR if level == _GGML_LOG_ERROR else logging.DEBUG, "%s", message)


_backend_lock = threading.Lock()
_backend_ready = False


def _init_backend() -> None:
    # llama_backend_init and the log hook are process-wide: set them up once, before any load.
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            lc.llama_log_set(forward_llama_log, None)
            lc.llama_backend_init()
            _backend_ready = True


class EngineError(CorralError, RuntimeError):
    """llama.cpp refused to load or decode."""


class InputError(EngineError):
    """The job itself cannot run (a 400, not a 500)."""


class GrammarError(InputError):
    """llama.cpp could not compile a request's grammar: the request's fault, not the engine's."""


@dataclass(frozen=True)
class LoadOptions:
    """Everything that fixes a llama.cpp context; a change means a reload."""

    num_ctx: int = 4096
    num_batch: int = 512
    num_gpu: int = -1
    use_mmap: bool | None = None
    num_thread: int = 0
    n_parallel: int = 1
    flash_attention: bool | None = None  # None: llama.cpp's auto
    kv_cache_type: str = "f16"


@dataclass
class Sampling:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_last_n: int = 64
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = -1
    grammar: str | None = None


# Events a job receives, in order: any number of Token, then exactly one Done or Failed.
@dataclass
class Token:
    id: int
    piece: bytes
    # Only when the job asked for logprobs: this token's, and the top alternatives'.
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


@dataclass
class Done:
    reason: str  # "stop" | "length" | "cancel"
    prompt_tokens: int
    prompt_seconds: float
    generated_tokens: int
    generate_seconds: float
    tokens: list[int]  # the whole sequence: Ollama's deprecated ``context``
    cached: int = 0  # prompt tokens reused from the sequence's KV cache, not decoded again


@dataclass
class Failed:
    message: str
    bad_request: bool = False  # the job itself was at fault (its grammar): a 400, not a 500


Event = Token | Done | Failed


@dataclass
class GenerateJob:
    prompt: list[int]
    sampling: Sampling
    emit: Callable[[Event], None]
    num_predict: int = -1
    num_keep: int = 4
    shift: bool = True
    top_logprobs: int = -1  # -1: no logprobs; 0: the sampled token's only; n: plus the n likeliest
    # None: ``emit`` runs on the engine thread. Otherwise ``post(fn)`` must run ``fn`` on the
    # consumer's side (an event loop's call_soon_threadsafe); the engine posts once per step for
    # all jobs sharing the same hook, which saves a thread wake-up and a GIL handoff per token.
    post: Callable[[Callable[[], None]], object] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Images (corral.worker.vision.Media) by the prompt index where each one's run of
    # placeholder ids starts; the engine closes them when the job ends.
    media: dict[int, Any] = field(default_factory=dict)

    def cancel(self) -> None:
        self.cancelled.set()

    def close_media(self) -> None:
        for media in self.media.values():
            media.close()


@dataclass
class EmbedJob:
    inputs: list[list[int]]
    done: Callable[[list[list[float]] | Exception], None]


class LlamaModel:
    """The weights and vocabulary of one GGUF, shared by every context using them."""

    def __init__(self, path: Path, options: LoadOptions) -> None:
        _init_backend()
        params = lc.llama_model_default_params()
        params.n_gpu_layers = 999 if options.num_gpu < 0 else options.num_gpu
        if options.use_mmap is not None:
            params.use_mmap = options.use_mmap
        model = lc.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise EngineError(f"unable to load model: {path}")
        self.ptr = model
        self.vocab = lc.llama_model_get_vocab(model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.n_embd = lc.llama_model_n_embd(model)
        self.n_layer = lc.llama_model_n_layer(model)
        self.n_ctx_train = lc.llama_model_n_ctx_train(model)
        self.size = lc.llama_model_size(model)
        self._pieces: dict[int, bytes] = {}

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (lc.llama_token * capacity)()
        n = lc.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
        if n < 0:
            capacity = -n
            buf = (lc.llama_token * capacity)()
            n = lc.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        # Bounded by the vocabulary size; saves a ctypes round trip per generated token.
        cached = self._pieces.get(token)
        if cached is None:
            buf = ctypes.create_string_buffer(64)
            n = lc.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = lc.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
            cached = buf.raw[:n]
            self._pieces[token] = cached
        return cached

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(lc.llama_vocab_is_eog(self.vocab, token))

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = lc.llama_model_meta_val_str(self.ptr, key.encode(), buf, 4096)
        return buf.value.decode("utf-8", errors="replace") if n >= 0 else None

    def close(self) -> None:
        if self.ptr:
            lc.llama_model_free(self.ptr)
            self.ptr = None


_KV_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml_type ids
_FLASH_ATTN = {None: -1, False: 0, True: 1}  # llama_flash_attn_type: auto, disabled, enabled


def _context_params(options: LoadOptions, *, n_ctx: int, n_seq: int, threads: int, embeddings: bool):
    params = lc.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = max(options.num_batch, 1) if not embeddings else n_ctx
    params.n_ubatch = params.n_batch if embeddings else min(params.n_batch, 512)
    params.n_seq_max = n_seq
    params.n_threads = threads
    params.n_threads_batch = threads
    params.embeddings = embeddings
    params.no_perf = True
    if not embeddings:
        # A step asks for at most one token's logits per sequence (a generated token, or a
        # prompt's last), as llama-server's context does. The default (one per batch position)
        # reserves the output layer for 512 rows: SmolLM2's compute buffer 98 -> 18 MiB.
        params.n_outputs_max = n_seq
        params.n_outputs_max_per_seq = 1
    # Generation: one KV stream per sequence, as llama-server does. Measured against one
    # shared pool (loadtest/reports/engine.md): in a shared pool every token attends over the
    # cells all slots keep cached (single stream 40 vs 51 tok/s once 8 slots held a prompt),
    # and a sequence's text depends on where its cells land. The cost: llama.cpp splits a
    # step mixing one-token decodes with a prompt chunk into several ubatches, so running
    # streams slow down more during another's prefill. Embeddings pack several sequences
    # into one pool.
    params.kv_unified = embeddings
    # Auto (llama-server's default) turns it on for the CPU: 8 sequences' decode step 70 -> 59 ms
    # and one stream 13.7 -> 12.3 ms per token with SmolLM2 on 2 cores.
    params.flash_attn_type = _FLASH_ATTN[options.flash_attention]
    kv = _KV_TYPES.get(options.kv_cache_type, 1)
    params.type_k = kv
    params.type_v = kv
    return params


# While sequences are generating, a step also decodes at most this share of a generating-only
# step's time worth of prompt tokens: a long prompt then stretches running streams' token gaps
# by at most ~(1 + share)x instead of stalling them for its whole prefill. On 2 cores a prompt
# token costs ~10 ms and 4 streams' step ~35 ms, so this is a few tokens a step: the long
# prompt's first token comes later, the running streams keep their pace.
PREFILL_SHARE = 0.6
MIN_PREFILL_CHUNK = 1  # tokens; a prompt always advances
FIRST_PREFILL_CHUNK = 4  # before the engine has timed a step like this one
# A prompt this short that has not begun goes into one step whole, whatever the budget: it
# lengthens one step, and its sequence starts generating at once. Chunking it would make a burst
# of chat turns wait for each other (64 prompts of 15 tokens: 19 s to the first token of the
# last one, against 1.7 s whole). Long prompts stay chunked, so running streams keep their pace.
WHOLE_PROMPT = 128
EMBED_SEQS = 16  # embedding inputs decoded together in one llama_decode
EMBED_MIN_CTX = 512  # the smallest embedding context (tokens): inputs packed together fill it


class _Slot:
    """One sequence of the context: the job on it and the tokens its KV cells hold."""

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.job: GenerateJob | None = None
        self.cached: list[int] = []  # tokens in the KV cache, kept after a job for prefix reuse
        self.pending: list[int] = []  # prompt tokens not yet decoded
        self.at = 0  # the prompt index of pending[0] (where the job's media are keyed)
        self.images = False  # its cells hold an image: no context shift
        self.sampler = None
        self.n_past = 0
        self.last: int | None = None
        self.generated = 0
        self.prompt_tokens = 0
        self.started = 0.0
        self.prompt_done_at = 0.0
        self.reused = 0  # prompt tokens the current job took from the cache
        self.fresh = False  # its prompt has not begun decoding
        self.last_alone = False  # the prompt's last token goes in a step of its own


# ``on_step(decode_s, host_s)``: the time one step spent inside ``llama_decode``, and the time
# the loop spent between the previous step's decode and this one (sampling, handing tokens
# over, building the batch); None when the loop was idle or busy with embeddings in between.
StepHook = Callable[[float, "float | None"], None]


class Engine:
    def __init__(
        self,
        model: LlamaModel,
        options: LoadOptions,
        *,
        threads: int,
        on_step: StepHook | None = None,
        vision: Vision | None = None,
    ) -> None:
        self.model = model
        self.vision = vision  # the projector, for a model that takes images
        self.options = options
        self.threads = threads
        self.n_parallel = max(1, options.n_parallel)
        self.n_ctx = max(4, options.num_ctx)
        params = _context_params(
            options, n_ctx=self.n_ctx * self.n_parallel, n_seq=self.n_parallel, threads=threads, embeddings=False
        )
        ctx = lc.llama_init_from_model(model.ptr, params)
        if not ctx:
            raise EngineError("failed to create llama.cpp context")
        self.ctx = ctx
        self.mem = lc.llama_get_memory(ctx)
        # Write the whole KV cache once, now: the system counts its pages only as they are first
        # written, so a worker's memory would creep up to its allocation over minutes as
        # conversations fill the cache (and a shortage would show mid-generation, not at load).
        lc.llama_memory_clear(self.mem, True)
        self.n_batch = params.n_batch
        self.batch = lc.llama_batch_init(self.n_batch, 0, 1)
        self._embed_ctx = None
        self._slots = [_Slot(i) for i in range(self.n_parallel)]
        self._eog: dict[int, bool] = {}
        # Step timings (EMA, seconds) that size prompt chunks while other sequences generate:
        # a generating-only step by how many sequences it carries, and what each prompt token
        # added to such a step (a chunk costs more than its share of a prompt-only step: llama.cpp
        # decodes it in a micro-batch of its own).
        self._decode_step_s: dict[int, float] = {}
        self._prompt_token_s = 0.0
        self._on_step = on_step
        self._last_decode_end = 0.0  # 0: the loop waited for work (or embedded) since
        # Events of the current step, delivered together at its end (see GenerateJob.post).
        self._outbox: list[tuple[GenerateJob, Event]] = []
        # Unbounded on purpose: the scheduler admits at most n_parallel generate jobs.
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="corral-engine", daemon=True)
        self._thread.start()

    # -- public, thread-safe ------------------------------------------------------------

    def submit(self, job: GenerateJob | EmbedJob) -> None:
        if self._closed.is_set():
            raise EngineError("model is unloading")
        self._inbox.put(job)

    def close(self) -> None:
        """Stop the loop (jobs in flight get Failed), then free llama.cpp memory."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._inbox.put(None)
        self._thread.join()
        for slot in self._slots:
            self._free_sampler(slot)
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.ctx)
        if self._embed_ctx:
            lc.llama_free(self._embed_ctx)
        if self.vision is not None:
            self.vision.close()
        self.model.close()
        release_free_memory()

    # -- the decode loop (engine thread only) -------------------------------------------------

    def _run(self) -> None:
        waiting: list[GenerateJob] = []
        try:
            while True:
                busy = bool(waiting) or any(s.job for s in self._slots)
                if not busy:
                    self._last_decode_end = 0.0
                if not self._drain_inbox(waiting, block=not busy):
                    break
                waiting = self._assign(waiting)
                self._step()
                self._flush()
        except Exception as exc:  # a bug here must not leave requests hanging
            logger.exception("decode loop crashed")
            self._fail_all(waiting, f"engine failure: {exc}")
            return
        self._fail_all(waiting, "model unloaded")

    def _drain_inbox(self, waiting: list[GenerateJob], *, block: bool) -> bool:
        """Take every submitted job; wait for one only when idle. False means: stop."""
        embeds: list[EmbedJob] = []
        stop = False
        try:
            item = self._inbox.get(block=block)
            while True:
                if item is None:
                    stop = True
                    break
                if isinstance(item, EmbedJob):
                    embeds.append(item)
                else:
                    waiting.append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass
        if embeds:
            self._embed(embeds)
            self._last_decode_end = 0.0
        return not stop

    def _emit(self, job: GenerateJob, event: Event) -> None:
        if isinstance(event, (Done, Failed)):
            job.close_media()  # its last event: nothing decodes its images any more
        self._outbox.append((job, event))

    def _flush(self) -> None:
        """Hand this step's events over: one post per consumer, or straight to ``emit``."""
        if not self._outbox:
            return
        events, self._outbox = self._outbox, []
        posts: dict[Callable, list[tuple[Callable[[Event], None], Event]]] = {}
        for job, event in events:
            if job.post is None:
                job.emit(event)
            else:
                posts.setdefault(job.post, []).append((job.emit, event))
        for post, items in posts.items():
            try:
                post(functools.partial(_deliver, items))
            except RuntimeError:  # the consumer's loop is closed: nobody is listening
                logger.debug("dropped %d events for a closed consumer", len(items))

    def _fail_all(self, waiting: list[GenerateJob], message: str) -> None:
        for job in waiting:
            self._emit(job, Failed(message))
        for slot in self._slots:
            if slot.job:
                self._emit(slot.job, Failed(message))
                slot.job = None
        self._flush()
        self._closed.set()

    def _assign(self, waiting: list[GenerateJob]) -> list[GenerateJob]:
        """Put waiting jobs on free slots: the one whose cache shares the longest prefix with
        the prompt (the next turn of a chat), else the first free one."""
        left = []
        for job in waiting:
            if job.cancelled.is_set():
                self._emit(job, Done("cancel", 0, 0.0, 0, 0.0, []))
                continue
            free = [s for s in self._slots if s.job is None]
            if not free:
                left.append(job)
                continue
            # Ties go to the first free slot: the other slots keep their caches for their chats.
            slot = max(free, key=lambda s: _common_prefix(s.cached, job.prompt))
            try:
                self._start(slot, job)
            except Exception as exc:
                slot.job = None
                self._free_sampler(slot)
                self._emit(job, Failed(str(exc), bad_request=isinstance(exc, InputError)))
        return left

    def _start(self, slot: _Slot, job: GenerateJob) -> None:
        prompt = self._fit_prompt(job)
        # Reuse the cached prefix (llama-server's cache_prompt), but always decode at least
        # one token to get logits.
        keep = self._reusable(slot, job, min(_common_prefix(slot.cached, prompt), len(prompt) - 1))
        if not lc.llama_memory_seq_rm(self.mem, slot.seq, keep, -1):
            keep = 0
            lc.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
        slot.cached = prompt[:keep]
        slot.pending = prompt[keep:]
        slot.at = keep
        slot.images = any(t < 0 for t in slot.cached) or bool(job.media)
        slot.fresh = True
        # llama.cpp's CPU kernels round the last prompt token's logits differently when it is
        # decoded alone than inside a chunk (measured: up to 0.8 apart, enough to flip a greedy
        # choice). A request that promises repeatable text (greedy, or a seed) therefore always
        # decodes that token in a step of its own: sent again, it reuses everything before it from
        # the cache and gets the very same logits. (Reusing part of a prompt, as a chat's next
        # turn does, can still round differently from a cold start, as in llama-server.)
        slot.last_alone = job.sampling.seed >= 0 or job.sampling.temperature <= 0
        slot.n_past = keep
        slot.sampler = self._make_sampler(job.sampling)
        slot.job = job
        # Penalties look at recent history, so feed them the prompt as llama-server does;
        # not when a grammar is in the chain, since it must only see generated text.
        if job.sampling.grammar is None and job.sampling.repeat_last_n:
            for tok in prompt[-job.sampling.repeat_last_n :]:
                if tok >= 0:  # not an image's placeholder
                    lc.llama_sampler_accept(slot.sampler, tok)
        slot.last = None
        slot.generated = 0
        slot.prompt_tokens = len(prompt)
        slot.started = time.perf_counter()
        slot.prompt_done_at = 0.0
        slot.reused = keep

    def _reusable(self, slot: _Slot, job: GenerateJob, keep: int) -> int:
        """How much of the cached prefix a prompt may keep: never part of an image (it is
        decoded whole), and with M-RoPE nothing from the first image on (its positions are
        not its token count)."""
        if self.vision is not None and self.vision.mrope:
            images = [i for i, t in enumerate(slot.cached[:keep]) if t < 0]
            return min([keep, *images[:1]])
        for start, media in job.media.items():
            if start < keep < start + media.n_tokens:
                return start
        return keep

    def _fit_prompt(self, job: GenerateJob) -> list[int]:
        """Ollama's truncation: keep num_keep tokens, then as much of the end as fits."""
        prompt = job.prompt or [lc.llama_vocab_bos(self.model.vocab)]
        room = self.n_ctx - 1
        if len(prompt) <= room:
            return prompt
        if job.media:  # an image is not cut in half, nor dropped (as llama-server, for Ollama)
            raise InputError("the input length exceeds the context length")
        keep = min(max(job.num_keep, 0), room // 2)
        return prompt[:keep] + prompt[len(prompt) - (room - keep) :]

    def _make_sampler(self, s: Sampling):
        params = lc.llama_sampler_chain_default_params()
        params.no_perf = True
        chain = lc.llama_sampler_chain_init(params)
        add = lambda smpl: lc.llama_sampler_chain_add(chain, smpl)  # noqa: E731
        if s.grammar:
            grammar = lc.llama_sampler_init_grammar(self.model.vocab, s.grammar.encode(), b"root")
            if not grammar:
                lc.llama_sampler_free(chain)
                raise GrammarError("invalid format: llama.cpp could not compile its grammar")
            add(grammar)
        if s.repeat_last_n != 0 and (
            s.repeat_penalty != 1.0 or s.presence_penalty != 0.0 or s.frequency_penalty != 0.0
        ):
            last_n = self.n_ctx if s.repeat_last_n < 0 else s.repeat_last_n
            add(
                lc.llama_sampler_init_penalties(
                    self.model.n_vocab, last_n, s.repeat_penalty, s.frequency_penalty, s.presence_penalty
                )
            )
        if s.temperature <= 0:
            add(lc.llama_sampler_init_greedy())
            return chain
        if s.top_k > 0:
            add(lc.llama_sampler_init_top_k(s.top_k))
        if 0 < s.typical_p < 1.0:
            add(lc.llama_sampler_init_typical(s.typical_p, 1))
        if 0 < s.top_p < 1.0:
            add(lc.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0:
            add(lc.llama_sampler_init_min_p(s.min_p, 1))
        add(lc.llama_sampler_init_temp(s.temperature))
        seed = lc.LLAMA_DEFAULT_SEED if s.seed < 0 else s.seed & 0xFFFFFFFF
        add(lc.llama_sampler_init_dist(seed))
        return chain

    def _free_sampler(self, slot: _Slot) -> None:
        if slot.sampler is not None:
            lc.llama_sampler_free(slot.sampler)
            slot.sampler = None

    def _finish(self, slot: _Slot, event: Event) -> None:
        job = slot.job
        slot.job = None
        self._free_sampler(slot)
        if isinstance(event, Failed) or (isinstance(event, Done) and event.reason == "cancel"):
            # Nothing worth keeping: free the cells at once.
            lc.llama_memory_seq_rm(self.mem, slot.seq, -1, -1)
            slot.cached = []
        assert job is not None
        self._emit(job, event)

    def _done_event(self, slot: _Slot, reason: str, *, last: int | None = None) -> Done:
        now = time.perf_counter()
        prompt_end = slot.prompt_done_at or now
        tokens = slot.cached + ([last] if last is not None else [])
        if slot.images:  # images' placeholder ids are no tokens a client could send back
            tokens = [t for t in tokens if t >= 0]
        return Done(
            reason=reason,
            prompt_tokens=slot.prompt_tokens,
            prompt_seconds=prompt_end - slot.started,
            generated_tokens=slot.generated,
            generate_seconds=now - prompt_end,
            tokens=tokens,
            cached=slot.reused,
        )

    def _shift(self, slot: _Slot) -> bool:
        """Ollama's context shift: drop half of what follows num_keep to make room."""
        job = slot.job
        assert job is not None
        if not job.shift or slot.images:  # an image's cells cannot move (nor half of it go)
            return False
        keep = min(max(job.num_keep, 0), slot.n_past // 2)
        discard = (slot.n_past - keep) // 2
        if discard <= 0:
            return False
        lc.llama_memory_seq_rm(self.mem, slot.seq, keep, keep + discard)
        lc.llama_memory_seq_add(self.mem, slot.seq, keep + discard, slot.n_past, -discard)
        slot.cached = slot.cached[:keep] + slot.cached[keep + discard :]
        slot.n_past -= discard
        return True

    def _prompt_budget(self, generating: int) -> int:
        """Prompt tokens this step may take: all it can while nobody waits for a token,
        else about PREFILL_SHARE of a generating step's time."""
        if not generating:
            return self.n_batch
        step_s = self._decode_step_s.get(generating, 0.0)
        if step_s <= 0 or self._prompt_token_s <= 0:
            return FIRST_PREFILL_CHUNK
        return max(MIN_PREFILL_CHUNK, int(PREFILL_SHARE * step_s / self._prompt_token_s))

    def _step(self) -> None:
        batch = self.batch
        n = 0
        sample_at: list[tuple[_Slot, int]] = []
        for slot in self._slots:
            job = slot.job
            if job is None:
                continue
            if job.cancelled.is_set():
                self._finish(slot, self._done_event(slot, "cancel"))
                continue
            if slot.last is not None:
                # Cells, not positions: with M-RoPE an image takes more cells than positions.
                if max(slot.n_past, len(slot.cached)) >= self.n_ctx and not self._shift(slot):
                    self._finish(slot, self._done_event(slot, "length"))
                    continue
                _put(batch, n, slot.last, slot.n_past, slot.seq, True)
                slot.cached.append(slot.last)
                slot.n_past += 1
                sample_at.append((slot, n))
                n += 1
        generating = n
        # Prompt chunks fill whatever room the generating sequences left in this step.
        budget = self._prompt_budget(generating)
        room = self.n_batch - n
        image: _Slot | None = None  # a sequence whose prompt goes on with an image: one a step
        for slot in self._slots:
            if slot.job is None or not slot.pending:
                continue
            if room <= 0:
                break
            if slot.at in slot.job.media:
                image = image or slot
                continue
            # Text up to the next image (decoded on its own), or to the end of the prompt.
            run = min([len(slot.pending), *(start - slot.at for start in slot.job.media if start > slot.at)])
            ready = len(slot.pending) - 1 if slot.last_alone and run == len(slot.pending) > 1 else run
            # A short prompt not yet begun, or a last token held back to go alone, goes whole.
            whole = (slot.fresh and ready <= WHOLE_PROMPT) or (slot.last_alone and len(slot.pending) == 1)
            take = min(ready if whole else budget, ready, room)
            if take <= 0:
                continue
            slot.fresh = False
            chunk = slot.pending[:take]
            slot.pending = slot.pending[take:]
            slot.at += take
            budget -= take
            room -= take
            for i, tok in enumerate(chunk):
                last = not slot.pending and i == len(chunk) - 1
                _put(batch, n, tok, slot.n_past, slot.seq, last)
                slot.n_past += 1
                if last:
                    sample_at.append((slot, n))
                n += 1
            slot.cached.extend(chunk)
        if n:
            self._decode(n, generating, sample_at)
        if image is not None:
            self._decode_image(image)

    def _decode(self, n: int, generating: int, sample_at: list[tuple[_Slot, int]]) -> None:
        """One llama_decode of the batch's ``n`` tokens, then a token for each of ``sample_at``."""
        batch = self.batch
        batch.n_tokens = n
        started = time.perf_counter()
        rc = lc.llama_decode(self.ctx, batch)
        ended = time.perf_counter()
        elapsed = ended - started
        if self._on_step is not None:
            previous_end, self._last_decode_end = self._last_decode_end, ended
            self._on_step(elapsed, started - previous_end if previous_end else None)
        if rc != 0:
            for slot, _ in sample_at:
                if slot.job is not None:
                    self._finish(slot, Failed(f"llama_decode failed ({rc})"))
            return
        self._time_step(generating, n - generating, elapsed)
        for slot, index in sample_at:
            self._sample(slot, index)

    def _decode_image(self, slot: _Slot) -> None:
        """The image that comes next in the slot's prompt, whole: the vision encoder, then its
        embeddings in a decode of their own. Other sequences wait this long, once."""
        job = slot.job
        assert job is not None and self.vision is not None
        media = job.media[slot.at]
        try:
            # Text always follows an image (worker/vision.py refuses a prompt ending with one).
            slot.n_past = self.vision.eval(media, self.ctx, slot.n_past, slot.seq, self.n_batch)
        except EngineError as exc:
            self._finish(slot, Failed(str(exc)))
            return
        finally:
            self._last_decode_end = 0.0  # not a step: the next one's host time starts afresh
        slot.fresh = False
        slot.cached.extend(slot.pending[: media.n_tokens])
        slot.pending = slot.pending[media.n_tokens :]
        slot.at += media.n_tokens

    def _sample(self, slot: _Slot, index: int) -> None:
        """The next token of the slot's job, from the logits at batch ``index``."""
        job = slot.job
        if job is None:
            return
        if not slot.prompt_done_at:
            slot.prompt_done_at = time.perf_counter()
        # On the CPU. llama.cpp can also run a chain inside the decode graph
        # (llama_set_sampler); on this 2-core CPU that made a greedy step of 8 SmolLM2
        # sequences 49 -> 58 ms while saving 0.5 ms here, so it is not used. Untried on a GPU.
        token = lc.llama_sampler_sample(slot.sampler, self.ctx, index)
        if self._is_eog(token):
            self._finish(slot, self._done_event(slot, "stop"))
            return
        slot.generated += 1
        slot.last = token
        event = Token(token, self.model.piece(token))
        if job.top_logprobs >= 0:
            event.logprob, event.top = self._logprobs(index, token, job.top_logprobs)
        self._emit(job, event)
        if 0 <= job.num_predict <= slot.generated:
            # The last token was sampled but never decoded: not in the KV cache.
            slot.last = None
            self._finish(slot, self._done_event(slot, "length", last=token))

    def _time_step(self, generating: int, prompt: int, elapsed: float) -> None:
        """Learn what a generating step and a prompt token in it cost (exponential averages)."""
        if not generating:
            return
        if prompt == 0:
            self._decode_step_s[generating] = _ema(self._decode_step_s.get(generating, 0.0), elapsed)
            return
        step_s = self._decode_step_s.get(generating, 0.0)
        if step_s > 0:
            self._prompt_token_s = _ema(self._prompt_token_s, max(elapsed - step_s, 0.0) / prompt)

    def _is_eog(self, token: int) -> bool:
        # Cached: one ctypes call per distinct token instead of one per generated token.
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = self.model.is_eog(token)
        return eog

    def _logprobs(self, index: int, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
        """Log-softmax of the model's raw logits at ``index`` (only for jobs that ask)."""
        logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(self.ctx, index), shape=(self.model.n_vocab,))
        peak = float(logits.max())
        log_total = peak + math.log(float(np.exp(logits - peak).sum()))
        best: list[tuple[int, float]] = []
        if top > 0:
            ids = np.argpartition(-logits, top - 1)[:top]
            ids = ids[np.argsort(-logits[ids])]
            best = [(int(i), float(logits[i]) - log_total) for i in ids]
        return float(logits[token]) - log_total, best

    # -- embeddings ---------------------------------------------------------------------

    def _embed(self, jobs: list[EmbedJob]) -> None:
        """Every input of every waiting job, packed into as few decodes as fit."""
        try:
            flat = [tokens for job in jobs for tokens in job.inputs]
            vectors = self._embed_inputs(flat)
        except Exception as exc:
            for job in jobs:
                job.done(exc)
            return
        at = 0
        for job in jobs:
            job.done(vectors[at : at + len(job.inputs)])
            at += len(job.inputs)

    def _embed_context(self, longest: int):
        """The embedding context, large enough for an input of ``longest`` tokens: the smallest
        power of two from EMBED_MIN_CTX up to the model's context. A decode takes each input
        whole (pooling needs every token of a sequence in one micro-batch), so the compute
        buffer grows with the square of this size: sized to the longest input seen, a model
        that embeds short texts keeps it small (at 4,096 tokens SmolLM2's takes 1.2 GiB)."""
        room = min(self.n_ctx, max(EMBED_MIN_CTX, 1 << max(0, longest - 1).bit_length()))
        if self._embed_ctx is not None and self._embed_batch_size >= room:
            return self._embed_ctx
        if self._embed_ctx is not None:  # a longer input than so far: a larger context
            lc.llama_free(self._embed_ctx)
            self._embed_ctx = None
            release_free_memory()
        params = _context_params(self.options, n_ctx=room, n_seq=EMBED_SEQS, threads=self.threads, embeddings=True)
        ctx = lc.llama_init_from_model(self.model.ptr, params)
        if ctx and lc.llama_pooling_type(ctx) == lc.LLAMA_POOLING_TYPE_NONE:
            # A generative model has no pooling of its own: average its token states.
            lc.llama_free(ctx)
            params.pooling_type = lc.LLAMA_POOLING_TYPE_MEAN
            ctx = lc.llama_init_from_model(self.model.ptr, params)
        if not ctx:
            raise EngineError("failed to create embedding context")
        self._embed_ctx = ctx
        self._embed_batch_size = params.n_batch
        return ctx

    def _embed_inputs(self, inputs: list[list[int]]) -> list[list[float]]:
        ctx = self._embed_context(max((len(tokens) for tokens in inputs), default=1))
        room = self._embed_batch_size
        mem = lc.llama_get_memory(ctx)
        bos = lc.llama_vocab_bos(self.model.vocab)
        inputs = [tokens[:room] or [bos] for tokens in inputs]
        out: list[list[float]] = [[] for _ in inputs]
        batch = lc.llama_batch_init(room, 0, 1)
        try:
            # Longest first, then fill each decode with as many as fit (tokens and sequences).
            order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
            while order:
                group: list[int] = []
                used = 0
                for i in order:
                    if len(group) < EMBED_SEQS and used + len(inputs[i]) <= room:
                        group.append(i)
                        used += len(inputs[i])
                order = [i for i in order if i not in group]
                lc.llama_memory_clear(mem, True)
                n = 0
                for seq, i in enumerate(group):
                    for pos, tok in enumerate(inputs[i]):
                        _put(batch, n, tok, pos, seq, True)
                        n += 1
                batch.n_tokens = n
                rc = lc.llama_decode(ctx, batch)
                if rc != 0:
                    raise EngineError(f"llama_decode failed ({rc})")
                for seq, i in enumerate(group):
                    out[i] = lc.llama_get_embeddings_seq(ctx, seq)[: self.model.n_embd]
            return out
        finally:
            lc.llama_batch_free(batch)


def _deliver(items: list[tuple[Callable[[Event], None], Event]]) -> None:
    for emit, event in items:
        emit(event)


def _ema(current: float, sample: float, weight: float = 0.2) -> float:
    return sample if current <= 0 else current + weight * (sample - current)


def _put(batch, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
    batch.token[i] = token
    batch.pos[i] = pos
    batch.n_seq_id[i] = 1
    batch.seq_id[i][0] = seq
    batch.logits[i] = logits


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
