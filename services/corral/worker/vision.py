"""Images for models with a projector: llama.cpp's multimodal library (mtmd) on one loaded model.

A prompt that carries images is rendered as Ollama renders it: each image of a message
becomes an ``[img-N]`` tag in front of the message's text (or in place of an ``[img]`` the
text holds), N being the image's index in the request. ``Vision.tokenize`` cuts the rendered
text at those tags and hands text and decoded images to ``mtmd_tokenize``, which splits them
into text tokens and one chunk per image (with the projector's own begin/end-of-image tokens).

The engine's prompts stay lists of token ids: an image chunk stands in them as ``n_tokens``
copies of one negative id derived from the image's bytes. Prefix reuse across chat turns
then works as for text (the same image at the same place compares equal, another one does
not), and ``Prompt.media`` says where each image's run starts. The engine decodes an image
whole, in a ``llama_decode`` of its own (``Vision.eval``: the vision encoder, then its
embeddings), between the batched steps of the other sequences: they wait for that image's
prefill and no longer.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import re
import secrets
import struct
import threading
import weakref
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_cpp import mtmd_cpp as mtmd

from corral.api.errors import BadRequestError
from corral.worker.engine import EngineError, LlamaModel, forward_llama_log

logger = logging.getLogger(__name__)

# Ollama's marker for the request's N-th image in a rendered prompt (server/prompt.go).
IMAGE_TAG = re.compile(r"\[img-(\d{1,9})\]")
_CHUNK_TEXT = 0  # mtmd_input_chunk_type
# llama-server's answer to bytes that are no image it can decode (Ollama relays it as a 400).
BAD_IMAGE = "Failed to load image or audio file"
_PLACEHOLDER_SPAN = 1 << 62  # wide: finding two images with one id must not be practical
# Images one request may bring: each is decoded and preprocessed (megabytes of floats) before
# anything runs, so a body of a thousand tiny images must not add up to gigabytes.
MAX_IMAGES = 32
# A decoded image is width x height x 3 bytes before the projector shrinks it: a small PNG of
# one colour can claim 60,000 x 60,000 pixels (10 GB). Headers are read first, and such
# images refused, before anything is decoded.
MAX_PIXELS = 40_000_000
_PNG = b"\x89PNG\r\n\x1a\n"
_AUDIO = (b"fLaC", b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2")  # what mtmd takes as audio besides WAV


def check_media(data: bytes) -> None:
    """Refuse what is neither an image format whose size can be read first (PNG, JPEG, GIF,
    BMP) nor audio, and images over MAX_PIXELS (BadRequestError)."""
    size = _image_size(data)
    if size is None:
        if data.startswith(_AUDIO) or (data[:4] == b"RIFF" and data[8:12] == b"WAVE"):
            return
        raise BadRequestError(BAD_IMAGE)
    width, height = size
    if width * height > MAX_PIXELS:
        raise BadRequestError(f"image too large: {width}x{height} pixels (at most {MAX_PIXELS:,})")
    if data.startswith(_PNG) and not _png_inflates_within(data, height * (1 + 8 * width) + 7 * height + 1024):
        raise BadRequestError(BAD_IMAGE)


def _png_inflates_within(data: bytes, bound: int) -> bool:
    """Whether the PNG's pixel stream inflates to at most ``bound`` bytes (its size at 16-bit RGBA,
    interlaced, with room to spare). A zlib bomb claims a 1x1 image and inflates to gigabytes,
    all of which stb_image would hold; this counts the output in 1 MiB pieces and keeps none."""
    inflater = zlib.decompressobj()
    produced, at = 0, len(_PNG)
    try:
        while at + 8 <= len(data):
            length, kind = struct.unpack(">I4s", data[at : at + 8])
            if kind == b"IEND":
                break
            if kind == b"IDAT":
                piece = data[at + 8 : at + 8 + length]
                while piece:
                    produced += len(inflater.decompress(piece, 1 << 20))
                    if produced > bound:
                        return False
                    piece = inflater.unconsumed_tail
            at += 12 + length
    except zlib.error:
        return False
    return True


def _image_size(data: bytes) -> tuple[int, int] | None:
    try:
        if data.startswith(_PNG):
            return struct.unpack(">II", data[16:24])
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", data[6:10])
        if data[:2] == b"BM":
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
    except struct.error:
        raise BadRequestError(BAD_IMAGE) from None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """The frame header's size: markers are walked by their lengths up to the first SOFn."""
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            break
        marker = data[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            at += 1 if marker == 0xFF else 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
    raise BadRequestError(BAD_IMAGE)


def placeholder(image: bytes, part: int) -> int:
    """The negative id the run of positions of an image's ``part``-th chunk carries in a
    prompt (a sliced image or a long audio makes several): equal for equal bytes."""
    digest = hashlib.blake2b(image, digest_size=8, salt=part.to_bytes(8, "big")).digest()
    return -1 - int.from_bytes(digest, "big") % _PLACEHOLDER_SPAN


def tag_images(text: str, first: int, count: int) -> str:
    """Ollama's tagging of one message's images (numbered from ``first``): each ``[img]`` the
    text holds takes the next tag, in order; tags for the rest go in front of the text."""
    pieces = text.split("[img]", count)
    placed = len(pieces) - 1
    text = "".join(f"{piece}[img-{first + i}]" for i, piece in enumerate(pieces[:-1])) + pieces[-1]
    return "".join(f"[img-{n}]" for n in range(first + placed, first + count)) + text


def check_count(images: int) -> None:
    if images > MAX_IMAGES:
        raise BadRequestError(f"too many images: {images} (at most {MAX_IMAGES} in one request)")


class Media:
    """One image chunk of a prompt: what the engine decodes at its place. Owns a copy of the
    mtmd chunk, freed by ``close`` (or when garbage-collected, whichever comes first)."""

    def __init__(self, chunk: Any, n_tokens: int) -> None:
        self.chunk = chunk
        self.n_tokens = n_tokens
        self._free = weakref.finalize(self, mtmd.mtmd_input_chunk_free, chunk)

    def close(self) -> None:
        self._free()


@dataclass
class Prompt:
    tokens: list[int]
    media: dict[int, Media] = field(default_factory=dict)  # start index in ``tokens`` -> image

    def close(self) -> None:
        for media in self.media.values():
            media.close()


class Vision:
    """The projector of one loaded model: images into chunks, chunks into its context."""

    def __init__(self, projector: Path, model: LlamaModel, *, threads: int, gpu: bool) -> None:
        # mtmd and its helpers log on their own hook (hundreds of lines per image otherwise).
        mtmd.mtmd_log_set(forward_llama_log, None)
        mtmd.mtmd_helper_log_set(forward_llama_log, None)
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = gpu
        params.n_threads = max(1, threads)
        params.print_timings = False
        params.warmup = False  # a load should not pay for an image nobody sent yet
        # A marker no client can guess: a prompt's own text never splits into media.
        self._marker = f"<__corral_media_{secrets.token_hex(8)}__>"
        params.media_marker = self._marker.encode()
        ctx = mtmd.mtmd_init_from_file(str(projector).encode(), model.ptr, params)
        if not ctx:
            raise EngineError(f"unable to load projector: {projector}")
        self.ctx = ctx
        self.model = model
        # M-RoPE models (qwen2-vl and kin) advance positions by less than an image's tokens.
        self.mrope = bool(mtmd.mtmd_decode_use_mrope(ctx))
        # Tokenize runs in request threads and decodes images: one at a time per model, which
        # bounds the memory decoded images take, and close waits for it.
        self._lock = threading.Lock()
        # Embeddings an image made in the last prompt with images (0: none yet): what a chat's
        # truncation counts an image as.
        self.tokens_per_image = 0

    def tokenize(self, text: str, images: list[bytes], *, add_special: bool = True) -> Prompt:
        """``text`` with ``[img-N]`` tags for ``images[N]``; tags for images not sent stay text.
        BadRequestError for bytes that are no image."""
        order: list[int] = []

        def swap(match: re.Match) -> str:
            n = int(match.group(1))
            if n >= len(images):
                return match.group(0)
            order.append(n)
            return self._marker

        marked = IMAGE_TAG.sub(swap, text)
        check_count(len(order))
        with self._lock:
            if not self.ctx:
                raise EngineError("model is unloading")
            return self._tokenize(marked, [images[n] for n in order], add_special)

    def _tokenize(self, marked: str, images: list[bytes], add_special: bool) -> Prompt:
        bitmaps = []
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            for data in images:
                check_media(data)
                buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
                loaded = mtmd.mtmd_helper_bitmap_init_from_buf_wrapper(
                    self.ctx, buf, len(data), False, mtmd.mtmd_helper_init_opt_default()
                )
                if loaded.video_ctx:  # a video (check_media lets none through; never run one)
                    mtmd.mtmd_helper_video_free(loaded.video_ctx)
                    if loaded.bitmap:
                        mtmd.mtmd_bitmap_free(loaded.bitmap)
                    raise BadRequestError(BAD_IMAGE)
                if not loaded.bitmap:
                    raise BadRequestError(BAD_IMAGE)
                bitmaps.append(loaded.bitmap)
                # Its chunks carry this id: one image may become several chunks (tiles).
                mtmd.mtmd_bitmap_set_id(loaded.bitmap, str(len(bitmaps) - 1).encode())
            encoded = marked.encode("utf-8")
            text = mtmd.mtmd_input_text(encoded, len(encoded), add_special, True)
            array = (mtmd.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            rc = mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), array, len(bitmaps))
            if rc != 0:
                # 2: the projector cannot take this kind of media (audio for a vision projector).
                raise BadRequestError(BAD_IMAGE)
            return self._prompt(chunks, images)
        finally:
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)
            mtmd.mtmd_input_chunks_free(chunks)

    def _prompt(self, chunks: Any, images: list[bytes]) -> Prompt:
        prompt = Prompt([])
        parts: dict[int, int] = {}  # image -> its chunks so far
        try:
            for i in range(mtmd.mtmd_input_chunks_size(chunks)):
                chunk = mtmd.mtmd_input_chunks_get(chunks, i)
                if mtmd.mtmd_input_chunk_get_type(chunk) == _CHUNK_TEXT:
                    n = ctypes.c_size_t(0)
                    tokens = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                    prompt.tokens.extend(tokens[: n.value])
                    continue
                image = int(mtmd.mtmd_input_chunk_get_id(chunk))  # the bitmap's id, set above
                part = parts[image] = parts.get(image, -1) + 1
                n_tokens = int(mtmd.mtmd_input_chunk_get_n_tokens(chunk))
                media = Media(mtmd.mtmd_input_chunk_copy(chunk), n_tokens)
                prompt.media[len(prompt.tokens)] = media
                prompt.tokens.extend([placeholder(images[image], part)] * n_tokens)
            if parts:  # what a chat's truncation counts an image as from now on
                self.tokens_per_image = max(1, sum(m.n_tokens for m in prompt.media.values()) // len(parts))
            if prompt.media and max(prompt.media) + prompt.media[max(prompt.media)].n_tokens == len(prompt.tokens):
                # An image's decode gives no logits: some text must follow the last one.
                raise BadRequestError("the prompt must not end with an image")
        except BaseException:
            prompt.close()
            raise
        return prompt

    def eval(self, media: Media, lctx: Any, n_past: int, seq: int, n_batch: int) -> int:
        """Encode the image and decode its embeddings into sequence ``seq`` at ``n_past``;
        returns the position after it (no logits: text always follows). Engine thread only."""
        new_n_past = ctypes.c_int32(n_past)
        rc = mtmd.mtmd_helper_eval_chunk_single(
            self.ctx, lctx, media.chunk, n_past, seq, n_batch, False, ctypes.byref(new_n_past)
        )
        if rc != 0:
            raise EngineError(f"failed to evaluate the image ({rc})")
        return int(new_n_past.value)

    def close(self) -> None:
        with self._lock:
            if self.ctx:
                mtmd.mtmd_free(self.ctx)
                self.ctx = None
