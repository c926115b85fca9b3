"""Ollama's inference endpoints on one worker: generate, chat, embed, embeddings.

Each call checks the request, resolves the model in the store, gets a slot from the
scheduler (loading the model if needed), renders the prompt, runs the engine and yields
Ollama's native response chunks. Everything that can fail before the first chunk fails
before it, so the route can still answer with a status code. The OpenAI endpoints reuse
these through ``corral.api.openai``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from corral.api.durations import parse_keep_alive
from corral.api.errors import (
    BadRequestError,
    CapabilityError,
    CorralError,
    InvalidNameError,
    NotFoundError,
    embed_model_not_found,
    model_not_found,
)
from corral.api.options import OPTIONS, RUNNER_OPTIONS, validate_options
from corral.api.streams import iso_now
from corral.store.names import is_valid_name
from corral.worker import engine as eng
from corral.worker.grammar import format_grammar
from corral.worker.metrics import WorkerMetrics
from corral.worker.prompt import ChatTemplate, Think, looks_like_tool_call, parse_tool_calls
from corral.worker.scheduler import Lease, Scheduler
from corral.worker.settings import WorkerSettings
from corral.worker.textstream import TextStream, ThinkingSplitter
from corral.worker.vision import IMAGE_TAG, Prompt, tag_images

logger = logging.getLogger(__name__)
T = TypeVar("T")

_THINK_LEVELS = ("high", "medium", "low", "max")
# Prompt text longer than this is rendered and tokenized in a thread, not on the event loop: a
# megabyte takes the tokenizer ~0.5 s, during which no other request would be answered.
OFF_LOOP_CHARS = 64 * 1024
# Ollama's bound on open-ended generation (num_predict < 0, or more than this): ten contexts.
PREDICT_CONTEXTS = 10


@dataclass
class Model:
    """A resolved model: its store record plus what we derived from it."""

    requested: str  # the name as the client wrote it: responses echo it
    record: Any
    template: ChatTemplate
    capabilities: list[str]
    context_length: int | None = None  # what it was trained for (its GGUF's), when known


class Inference:
    def __init__(
        self,
        *,
        store: Any,
        scheduler: Scheduler,
        settings: WorkerSettings,
        metrics: WorkerMetrics,
        inspector: Any,
        usage: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.store = store
        # Told each request's tokens (model, prompt, generated), for the key that made it.
        self.usage = usage or (lambda model, prompt, generated: None)
        self.scheduler = scheduler
        self.settings = settings
        self.metrics = metrics
        # What a record is: describe(record) -> (ChatTemplate, capabilities), shared with /api/show
        # and /api/tags; gguf(record) -> its parsed header.
        self._inspector = inspector

    # -- resolution and checks ---------------------------------------------------------

    async def resolve(self, name: Any, *, embed: bool = False, required_message: str | None = None) -> Model:
        if not isinstance(name, str) or not name:
            if required_message:
                raise BadRequestError(required_message)
            raise (embed_model_not_found("") if embed else model_not_found(name or ""))
        if not is_valid_name(name):
            raise InvalidNameError()
        try:
            record = await self.store.get(name)
        except NotFoundError:
            raise (embed_model_not_found(name) if embed else model_not_found(name)) from None
        if record.model_path is None:
            raise BadRequestError(f"model '{name}' has no weights to run")
        template, caps = self._inspector.describe(record)
        info = self._inspector.gguf(record)
        return Model(name, record, template, caps, info.context_length if info is not None else None)

    def _options(self, model: Model, request_options: Any) -> dict[str, Any]:
        # The Modelfile's parameters go through the same checks and bounds as the request's.
        merged = validate_options({k: v for k, v in model.record.params.items() if k in OPTIONS})
        merged.update(validate_options(request_options))
        return merged

    def _load_options(self, model: Model, options: dict[str, Any], *, embedding: bool = False) -> eng.LoadOptions:
        s = self.settings
        num_ctx = max(4, int(options.get("num_ctx") or s.default_num_ctx))
        if model.context_length and num_ctx > model.context_length:
            # As Ollama does: a context beyond what the model was trained for is clamped (a
            # num_ctx of a billion would otherwise allocate a KV cache for it).
            logger.warning(
                "requested context size too large for model: num_ctx=%d n_ctx_train=%d", num_ctx, model.context_length
            )
            num_ctx = model.context_length
        return eng.LoadOptions(
            num_ctx=num_ctx,
            num_batch=min(int(options.get("num_batch") or 512), num_ctx),
            num_gpu=int(options.get("num_gpu", -1)),
            use_mmap=options.get("use_mmap"),
            num_thread=int(options.get("num_thread") or 0),
            # Embedding models always run one sequence, as in Ollama.
            n_parallel=1 if embedding else s.OLLAMA_NUM_PARALLEL,
            flash_attention=s.OLLAMA_FLASH_ATTENTION,
            kv_cache_type=s.OLLAMA_KV_CACHE_TYPE,
        )

    @staticmethod
    def _sampling(options: dict[str, Any], grammar: str | None) -> eng.Sampling:
        d = {k: o.default for k, o in OPTIONS.items() if k not in RUNNER_OPTIONS}
        d.update(options)
        return eng.Sampling(
            temperature=float(d["temperature"]),
            top_k=int(d["top_k"]),
            top_p=float(d["top_p"]),
            min_p=float(d["min_p"]),
            typical_p=float(d["typical_p"]),
            repeat_last_n=int(d["repeat_last_n"]),
            repeat_penalty=float(d["repeat_penalty"]),
            presence_penalty=float(d["presence_penalty"]),
            frequency_penalty=float(d["frequency_penalty"]),
            seed=int(d["seed"]),
            grammar=grammar,
        )

    @staticmethod
    def _think(value: Any) -> Think:
        if value is None or isinstance(value, bool):
            return value
        if not isinstance(value, str):
            raise BadRequestError('think must be a boolean or string ("high", "medium", "low", "max", true, or false)')
        if value in _THINK_LEVELS:
            return value  # on, and the template's .ThinkLevel
        raise BadRequestError(
            f"invalid think value: {json.dumps(value, ensure_ascii=False)} "
            '(must be "high", "medium", "low", "max", true, or false)'
        )

    @staticmethod
    def _check_think(model: Model, name: str, think: Think, *, relax: bool = False) -> Think:
        """Ollama: think on a model that can't is a 400 (``relax``: unset); unset on one that can means on."""
        capable = "thinking" in model.capabilities
        if think and not capable:
            if relax:
                return None
            raise CapabilityError(f'"{name}" does not support thinking')
        if think is None and capable:
            return True
        return think

    @staticmethod
    def _check_logprobs(body: dict[str, Any]) -> None:
        top = body.get("top_logprobs")
        if top is not None and (not isinstance(top, int) or not 0 <= top <= 20):
            raise BadRequestError("top_logprobs must be between 0 and 20")

    @staticmethod
    def _check_images(images: Any) -> list[bytes]:
        if images is None:
            return []
        if not isinstance(images, list):
            raise BadRequestError("images must be a list of base64 strings")
        decoded = []
        for image in images:
            if not isinstance(image, str):
                raise BadRequestError("images must be a list of base64 strings")
            try:
                decoded.append(base64.b64decode(image, validate=True))
            except (binascii.Error, ValueError):
                raise BadRequestError("illegal base64 data in images") from None
        return decoded

    # -- /api/generate -----------------------------------------------------------------------

    async def generate(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        started = time.perf_counter()
        model = await self.resolve(body.get("model"))
        name: str = body["model"]  # resolve() takes nothing but a model name
        raw = bool(body.get("raw"))
        if raw and (body.get("template") or body.get("system") or body.get("context")):
            raise BadRequestError("raw mode does not support template, system, or context")
        self._check_logprobs(body)
        think = self._think(body.get("think"))
        if "completion" not in model.capabilities:
            raise CapabilityError(f'"{name}" does not support generate')
        think = self._check_think(model, name, think)
        suffix = body.get("suffix") or ""
        if suffix and "insert" not in model.capabilities:
            raise CapabilityError(
                f"{model.record.name.host}/{model.record.name.namespace}/"
                f"{model.record.name.model}:{model.record.name.tag} does not support insert"
            )
        images = self._check_images(body.get("images"))
        if images and "vision" not in model.capabilities:
            raise CapabilityError(f'"{name}" does not support vision')
        options = self._options(model, body.get("options"))
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        grammar = await _grammar(body.get("format"))
        prompt = body.get("prompt") or ""
        load = self._load_options(model, options)

        if not prompt and not suffix:
            yield await self._load_or_unload(model, load, keep_alive, {"response": ""})
            return

        prefix = list(body.get("context") or [])  # ints: checked against the vocabulary once loaded
        if images and not (raw and IMAGE_TAG.search(prompt)):
            prompt = tag_images(prompt, 0, len(images))  # Ollama's [img-N] in front of the prompt
        if raw:
            text = prompt
        else:
            template = model.template
            if body.get("template"):
                template = ChatTemplate.build(body["template"], None)
            system = body.get("system")
            if system is None:
                system = model.record.system
            if prefix:
                text = template.render_generate(prompt, system=None, suffix=suffix, think=think)
            else:
                text = self._generate_text(model, template, prompt, system, suffix, think)
        if body.get("_debug_render_only"):
            yield self._debug_render(name, text, len(images), {"response": ""})
            return

        lease = await self._acquire(model, load, keep_alive)
        try:
            llama = lease.runner.engine.model
            if any(not 0 <= t < llama.n_vocab for t in prefix):
                raise BadRequestError("context holds a token outside the model's vocabulary")
            if images:
                encoded = await self._with_images(lease, text, images, add_special=not prefix)
                tokens = prefix + encoded.tokens
                media = {len(prefix) + start: m for start, m in encoded.media.items()}
            else:
                tokens = prefix + await _off_loop(len(text), llama.tokenize, text, add_special=not prefix)
                media = {}
            sampling = self._sampling(options, grammar)
            async for chunk in self._run(
                lease,
                name,
                tokens,
                sampling,
                options,
                body,
                started,
                media=media,
                kind="generate",
                tools=None,
                raw=raw,
                thinking_opened=_opens_thinking(text) if think and not raw else None,
            ):
                yield chunk
        finally:
            lease.release()

    def _generate_text(
        self, model: Model, template: ChatTemplate, prompt: str, system: str | None, suffix: str, think: Think
    ) -> str:
        messages = list(model.record.messages or [])
        if messages and template.go is not None and "Messages" in template.variables and not suffix:
            history = ([{"role": "system", "content": system}] if system else []) + messages
            return template.render_chat(history + [{"role": "user", "content": prompt}], think=think)
        return template.render_generate(prompt, system=system, suffix=suffix, think=think)

    # -- /api/chat ------------------------------------------------------------------------------

    async def chat(self, body: dict[str, Any], *, relax_thinking: bool = False) -> AsyncIterator[dict[str, Any]]:
        """``relax_thinking``: think on a model that cannot is dropped instead of refused (/v1/messages)."""
        started = time.perf_counter()
        model = await self.resolve(body.get("model"), required_message="model is required")
        name: str = body["model"]  # resolve() takes nothing but a model name
        self._check_logprobs(body)
        think = self._think(body.get("think"))
        messages = self._messages(body.get("messages"))
        if len(messages) > self.settings.CORRAL_MAX_MESSAGES:
            raise BadRequestError(f"too many messages: {len(messages)} (at most {self.settings.CORRAL_MAX_MESSAGES})")
        tools = body.get("tools") or None
        if tools is not None and not isinstance(tools, list):
            raise BadRequestError("tools must be a list")
        if "completion" not in model.capabilities:
            raise CapabilityError(f'"{name}" does not support chat')
        if tools and "tools" not in model.capabilities:
            n = model.record.name
            raise CapabilityError(f"{n.host}/{n.namespace}/{n.model}:{n.tag} does not support tools")
        think = self._check_think(model, name, think, relax=relax_thinking)
        if any(m.get("images") for m in messages) and "vision" not in model.capabilities:
            raise CapabilityError(f'"{name}" does not support vision')
        options = self._options(model, body.get("options"))
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        grammar = await _grammar(body.get("format"))
        load = self._load_options(model, options)

        if not messages:
            yield await self._load_or_unload(model, load, keep_alive, {"message": {"role": "assistant", "content": ""}})
            return

        history, images = _tagged(list(model.record.messages or []) + messages)
        if model.record.system and (not history or history[0].get("role") != "system"):
            history.insert(0, {"role": "system", "content": model.record.system})
        if body.get("_debug_render_only"):
            text = model.template.render_chat(history, tools=tools, think=think)
            yield self._debug_render(name, text, len(images), {"message": {"role": "", "content": ""}})
            return
        lease = await self._acquire(model, load, keep_alive)
        try:
            engine = lease.runner.engine
            llama = engine.model
            size = sum(len(m.get("content") or "") for m in history)
            truncate = body.get("truncate", True) is not False
            media: dict[int, Any] = {}
            # With images, the fit counts each as the size images had so far; if that was off
            # (the model's first images), the exact count decides, and the fit is made again once.
            for attempt in range(2 if images else 1):
                per_image = engine.vision.tokens_per_image if engine.vision is not None else 0
                text, tokens = await _off_loop(
                    size,
                    self._fit_chat,
                    llama,
                    model.template,
                    history,
                    tools,
                    think,
                    limit=load.num_ctx - 1,
                    truncate=truncate,
                    images=len(images),
                    image_tokens=per_image,
                )
                if images:
                    encoded = await self._with_images(lease, text, images, add_special=True)
                    tokens, media = encoded.tokens, encoded.media
                    if len(tokens) < load.num_ctx or not truncate or attempt:
                        break
                    encoded.close()
            sampling = self._sampling(options, grammar)
            async for chunk in self._run(
                lease,
                name,
                tokens,
                sampling,
                options,
                body,
                started,
                media=media,
                kind="chat",
                tools=tools,
                raw=False,
                thinking_opened=_opens_thinking(_text_of(llama, tokens[-8:])) if think else None,
            ):
                yield chunk
        finally:
            lease.release()

    @staticmethod
    def _fit_chat(
        llama: Any,
        template: ChatTemplate,
        history: list[dict],
        tools: list[dict] | None,
        think: Think,
        *,
        limit: int,
        truncate: bool,
        images: int = 0,
        image_tokens: int = 0,
    ) -> tuple[str, list[int]]:
        """Ollama's chat truncation: drop the oldest non-system messages until the prompt fits.
        Returns the prompt's text and tokens (an image's tag counts as ``image_tokens``, the
        size of the last image the model took).

        System messages and the latest message always stay; fewer messages never render
        longer, so the number to drop is found by bisection.
        """

        def render(drop: int) -> tuple[str, list[int], int]:
            dropped = set(droppable[:drop])
            kept = [m for i, m in enumerate(history) if i not in dropped]
            text = template.render_chat(kept, tools=tools, think=think)
            tokens = llama.tokenize(text, add_special=True)
            tagged = sum(1 for tag in IMAGE_TAG.finditer(text) if int(tag.group(1)) < images) if images else 0
            return text, tokens, len(tokens) + tagged * image_tokens

        droppable = [i for i, m in enumerate(history) if m.get("role") != "system"][:-1]
        text, tokens, size = render(0)
        if size <= limit or not truncate or not droppable:
            return text, tokens
        low, high = 1, len(droppable)
        text, tokens, _ = render(high)
        while low < high:
            mid = (low + high) // 2
            candidate = render(mid)
            if candidate[2] <= limit:
                text, tokens, _ = candidate
                high = mid
            else:
                low = mid + 1
        return text, tokens

    @staticmethod
    def _messages(value: Any) -> list[dict[str, Any]]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise BadRequestError("json: cannot unmarshal messages: expected an array")
        out = []
        for m in value:
            if m is None:
                m = {}  # Go decodes null into an empty message
            if not isinstance(m, dict):
                raise BadRequestError("json: cannot unmarshal message: expected an object")
            role = m.get("role", "")
            content = m.get("content", "")
            if not isinstance(role, str):
                raise BadRequestError(
                    "json: cannot unmarshal number into Go struct field Message.messages.role of type string"
                )
            if content is None:
                content = ""
            if not isinstance(content, str):
                raise BadRequestError(
                    "json: cannot unmarshal value into Go struct field Message.messages.content of type string"
                )
            msg = dict(m)
            msg["role"] = role.lower()
            msg["content"] = content
            if msg.get("images"):
                Inference._check_images(msg["images"])
            out.append(msg)
        return out

    # -- images ----------------------------------------------------------------------------------

    @staticmethod
    async def _with_images(lease: Lease, text: str, images: list[bytes], *, add_special: bool) -> Prompt:
        """The prompt's tokens with its images cut in (decoding images is work: off the loop)."""
        vision = lease.runner.engine.vision
        if vision is None:  # a projector the store lists but the load did not take
            raise CorralError("model has no vision projector loaded")
        return await asyncio.to_thread(vision.tokenize, text, images, add_special=add_special)

    # -- the shared generation loop -------------------------------------------------------------

    async def _acquire(self, model: Model, load: eng.LoadOptions, keep_alive: float | None) -> Lease:
        return await self.scheduler.acquire(model.record, load, keep_alive)

    async def _load_or_unload(
        self, model: Model, load: eng.LoadOptions, keep_alive: float | None, empty: dict[str, Any]
    ) -> dict[str, Any]:
        """Ollama's empty prompt: load the model, or with keep_alive 0 unload it."""
        if keep_alive == 0:
            await self.scheduler.unload(model.record)
            reason = "unload"
        else:
            await self.scheduler.load(model.record, load, keep_alive)
            reason = "load"
        return self._base(model.requested) | empty | {"done": True, "done_reason": reason}

    def _debug_render(self, name: str, text: str, images: int, empty: dict[str, Any]) -> dict[str, Any]:
        """Ollama's ``_debug_render_only``: the prompt the model would see, nothing run."""
        return (
            self._base(name)
            | empty
            | {
                "done": False,
                "_debug_info": {"rendered_template": text, "image_count": images},
            }
        )

    @staticmethod
    def _base(name: str) -> dict[str, Any]:
        return {"model": name, "created_at": iso_now()}

    async def _run(
        self,
        lease: Lease,
        name: str,
        tokens: list[int],
        sampling: eng.Sampling,
        options: dict[str, Any],
        body: dict[str, Any],
        started: float,
        *,
        kind: str,
        tools: list[dict] | None,
        raw: bool,
        thinking_opened: bool | None = None,
        media: dict[int, Any] | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Run one job and yield its chunks. ``thinking_opened`` is None unless the reply's
        reasoning is to be split out (a thinking model, think on); then it tells whether
        the prompt itself already opened the thinking tag."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[eng.Event] = asyncio.Queue()
        acquired = time.perf_counter()
        job = eng.GenerateJob(
            prompt=tokens,
            sampling=sampling,
            # The engine posts each step's events to this loop in one handoff.
            emit=events.put_nowait,
            post=loop.call_soon_threadsafe,
            num_predict=_bounded_predict(int(options.get("num_predict", -1)), lease.runner.engine.n_ctx),
            num_keep=int(options.get("num_keep", 4)),
            shift=body.get("shift", True) is not False,
            top_logprobs=int(body.get("top_logprobs") or 0) if body.get("logprobs") else -1,
            media=media or {},
        )
        stops = options.get("stop") or []
        text = TextStream(stops)
        tool_names = {t.get("function", {}).get("name") for t in tools or [] if isinstance(t, dict)}
        holding = bool(tools)
        held = ""
        splitter = None
        if thinking_opened is not None:
            splitter = ThinkingSplitter(opened=thinking_opened)
        logprobs: list[dict[str, Any]] = []  # entries for tokens not yet sent in a chunk
        first_token_at: float | None = None
        done: eng.Done | None = None
        model_label = lease.runner.name
        lease.runner.engine.submit(job)
        self.metrics.tokens_in.labels(model_label).inc(len(tokens))
        try:
            while True:
                ev = await events.get()
                if isinstance(ev, eng.Failed):
                    raise (BadRequestError if ev.bad_request else CorralError)(ev.message)
                if isinstance(ev, eng.Done):
                    done = ev
                    break
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                    self.metrics.ttft.labels(model_label).observe(first_token_at - started)
                if ev.logprob is not None:
                    logprobs.append(self._logprob_entry(lease, ev))
                piece = text.feed(ev.piece)
                if text.stopped:
                    job.cancel()
                thought = ""
                if splitter is not None and piece:
                    thought, piece = splitter.feed(piece)
                if piece and holding:
                    held += piece
                    if looks_like_tool_call(held):
                        piece = ""
                    else:
                        holding = False
                        piece, held = held, ""
                if piece or thought:
                    chunk = self._chunk(name, kind, piece, thought)
                    if logprobs:
                        chunk["logprobs"], logprobs = logprobs, []
                    yield chunk
                if text.stopped:
                    # The engine ends the job with "cancel"; from the client's view it stopped.
                    while not isinstance(ev, (eng.Done, eng.Failed)):
                        ev = await events.get()
                    done = ev if isinstance(ev, eng.Done) else None
                    break
        except BaseException:
            job.cancel()
            raise
        rest = text.flush()
        thought = ""
        if splitter is not None:
            fed_thought, fed_rest = splitter.feed(rest)
            last_thought, last_rest = splitter.flush()
            thought, rest = fed_thought + last_thought, fed_rest + last_rest
        tool_calls = None
        if holding:
            held += rest
            rest = ""
            tool_calls = parse_tool_calls(held, tool_names) if held.strip() else None
            if tool_calls is None and held:
                rest = held
        if rest or thought or (logprobs and not tool_calls):
            chunk = self._chunk(name, kind, rest, thought)
            if logprobs:
                chunk["logprobs"], logprobs = logprobs, []
            yield chunk
        if tool_calls:
            chunk = self._chunk(name, kind, "")
            chunk["message"]["tool_calls"] = tool_calls
            yield chunk
        assert done is not None or text.stopped
        reason = "stop" if text.stopped or done is None or done.reason == "cancel" else done.reason
        final = self._base(name)
        if kind == "generate":
            final["response"] = ""
        else:
            final["message"] = {"role": "assistant", "content": ""}
        final["done"] = True
        final["done_reason"] = reason
        if kind == "generate" and not raw and done is not None:
            final["context"] = done.tokens
        now = time.perf_counter()
        stats = done or eng.Done("stop", len(tokens), 0.0, 0, 0.0, [])
        final.update(
            {
                "total_duration": _ns(now - started),
                "load_duration": _ns(acquired - started),
                "prompt_eval_count": stats.prompt_tokens,
                "prompt_eval_duration": _ns(stats.prompt_seconds),
                "eval_count": stats.generated_tokens,
                "eval_duration": _ns(stats.generate_seconds),
            }
        )
        self.metrics.tokens_out.labels(model_label).inc(stats.generated_tokens)
        self.usage(model_label, stats.prompt_tokens, stats.generated_tokens)
        yield final

    @staticmethod
    def _logprob_entry(lease: Lease, ev: eng.Token) -> dict[str, Any]:
        llama = lease.runner.engine.model

        def entry(token: int, logprob: float | None) -> dict[str, Any]:
            piece = llama.piece(token)
            return {"token": piece.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(piece)}

        out = entry(ev.id, ev.logprob)
        if ev.top:
            out["top_logprobs"] = [entry(t, lp) for t, lp in ev.top]
        return out

    @staticmethod
    def _chunk(name: str, kind: str, text: str, thinking: str = "") -> dict[str, Any]:
        chunk: dict[str, Any] = {"model": name, "created_at": iso_now()}
        if kind == "generate":
            chunk["response"] = text
            if thinking:
                chunk["thinking"] = thinking
        else:
            chunk["message"] = {"role": "assistant", "content": text}
            if thinking:
                chunk["message"]["thinking"] = thinking
        chunk["done"] = False
        return chunk

    # -- embeddings ----------------------------------------------------------------------

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        name = body.get("model")
        model = await self.resolve(name, embed=True, required_message="model is required")
        raw_input = body.get("input")
        if raw_input is None or raw_input == "" or raw_input == []:
            inputs: list[str] = []
        elif isinstance(raw_input, str):
            inputs = [raw_input]
        elif isinstance(raw_input, list) and all(isinstance(x, str) for x in raw_input):
            inputs = list(raw_input)
        else:
            raise BadRequestError("invalid input type")
        if len(inputs) > self.settings.CORRAL_MAX_INPUTS:
            raise BadRequestError(f"too many inputs: {len(inputs)} (at most {self.settings.CORRAL_MAX_INPUTS})")
        dimensions = body.get("dimensions")
        if dimensions is not None and (
            not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 0
        ):
            raise BadRequestError("dimensions must be a positive integer")
        options = self._options(model, body.get("options"))
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        load = self._load_options(model, options, embedding="embedding" in model.capabilities)
        if not inputs:
            await self.scheduler.load(model.record, load, keep_alive)
            return {"model": name, "embeddings": []}
        lease = await self._acquire(model, load, keep_alive)
        acquired = time.perf_counter()
        try:
            llama = lease.runner.engine.model
            token_lists = await _off_loop(sum(map(len, inputs)), _tokenize_all, llama, inputs)
            for i, tokens in enumerate(token_lists):
                if len(tokens) > load.num_ctx:
                    if body.get("truncate") is False:
                        raise BadRequestError("the input length exceeds the context length")
                    token_lists[i] = tokens[: load.num_ctx]
            vectors = await self._embed_tokens(lease, token_lists)
        finally:
            lease.release()
        out = [_normalize(v[:dimensions] if dimensions else v) for v in vectors]
        return {
            "model": name,
            "embeddings": out,
            "total_duration": _ns(time.perf_counter() - started),
            "load_duration": _ns(acquired - started),
            "prompt_eval_count": sum(len(t) for t in token_lists),
        }

    async def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        """The legacy /api/embeddings: one prompt, one vector, not normalised."""
        name = body.get("model")
        model = await self.resolve(name, embed=True, required_message="model is required")
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise BadRequestError("prompt must be a string")
        options = self._options(model, body.get("options"))
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        load = self._load_options(model, options, embedding="embedding" in model.capabilities)
        if not prompt:
            await self.scheduler.load(model.record, load, keep_alive)
            return {"embedding": []}
        lease = await self._acquire(model, load, keep_alive)
        try:
            llama = lease.runner.engine.model
            tokens = (await _off_loop(len(prompt), llama.tokenize, prompt, add_special=True))[: load.num_ctx]
            (vector,) = await self._embed_tokens(lease, [tokens])
        finally:
            lease.release()
        return {"embedding": vector}

    async def _embed_tokens(self, lease: Lease, token_lists: list[list[int]]) -> list[list[float]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def done(result: Any) -> None:
            loop.call_soon_threadsafe(_settle, future, result)

        lease.runner.engine.submit(eng.EmbedJob(token_lists, done))
        result = await future
        if isinstance(result, Exception):
            raise CorralError(str(result)) from result
        self.usage(lease.runner.name, sum(map(len, token_lists)), 0)
        return result


async def _off_loop(size: int, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args)``, in a thread when its input (``size`` characters) is long enough to hold the
    event loop up; short ones stay here, where a thread hop would only add to the first token."""
    if size > OFF_LOOP_CHARS:
        return await asyncio.to_thread(fn, *args, **kwargs)
    return fn(*args, **kwargs)


async def _grammar(fmt: Any) -> str | None:
    # A schema's conversion is Python work proportional to the schema: off the loop.
    return await asyncio.to_thread(format_grammar, fmt) if isinstance(fmt, dict) else format_grammar(fmt)


def _text_of(llama: Any, tokens: list[int]) -> str:
    return llama.detokenize([t for t in tokens if t >= 0])  # images' placeholder ids have no text


def _tagged(history: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The messages with Ollama's ``[img-N]`` tags in their text, and every image decoded, in order."""
    images: list[bytes] = []
    tagged = []
    for message in history:
        decoded = Inference._check_images(message.get("images"))
        if decoded:
            message = {**message, "content": tag_images(message.get("content") or "", len(images), len(decoded))}
            images += decoded
        tagged.append(message)
    return tagged, images


def _tokenize_all(llama: Any, texts: list[str]) -> list[list[int]]:
    return [llama.tokenize(text, add_special=True) for text in texts]


def _bounded_predict(num_predict: int, num_ctx: int) -> int:
    """Ollama's ceiling on generation: open-ended (negative) or longer than ten contexts means
    ten contexts, so no request runs forever on context shifts."""
    ceiling = PREDICT_CONTEXTS * num_ctx
    return ceiling if num_predict < 0 or num_predict > ceiling else num_predict


def _opens_thinking(prompt_end: str) -> bool:
    # Some templates prefill the opening tag, so the reply starts inside the reasoning.
    return prompt_end.rstrip().endswith("<think>")


def _settle(future: asyncio.Future, result: Any) -> None:
    if not future.done():  # the request may have been cancelled meanwhile
        future.set_result(result)


def _normalize(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0:
        return list(vector)
    return [x / norm for x in vector]


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))
