"""Turning a stream of token bytes into the text a client may see.

Tokens are bytes that may split a UTF-8 character, and a stop sequence may arrive spread
over several tokens; text that could still turn out to be the start of a stop sequence is
held back until it can't.
"""

from __future__ import annotations

import codecs


class TextStream:
    def __init__(self, stops: list[str] | None = None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in (stops or []) if s]
        self._held = ""
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """Text that is now safe to send. After a stop sequence, ``stopped`` is True."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(piece)
        if not self._stops:
            self._held = ""
            return text
        cut = -1
        for stop in self._stops:
            at = text.find(stop)
            if at != -1 and (cut == -1 or at < cut):
                cut = at
        if cut != -1:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = self._partial_stop_len(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep] if keep else text

    def flush(self) -> str:
        """The rest, once generation ended without a stop sequence."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return text

    def _partial_stop_len(self, text: str) -> int:
        # Longest suffix of text that is a proper prefix of some stop sequence.
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best


class ThinkingSplitter:
    """Separates a thinking model's reasoning (``<think>…</think>``) from its answer.

    Text before the closing tag is thinking when the output opens with the opening tag, or
    when the prompt already opened it (templates that prefill ``<think>``). Tags split
    across pieces are held back until they can be told apart from ordinary text.
    """

    def __init__(self, *, opened: bool, open_tag: str = "<think>", close_tag: str = "</think>") -> None:
        self._open, self._close = open_tag, close_tag
        self._state = "thinking" if opened else "start"
        self._held = ""

    def feed(self, text: str) -> tuple[str, str]:
        """(thinking, content) that can be sent now."""
        text = self._held + text
        self._held = ""
        thinking = content = ""
        if self._state == "start":
            stripped = text.lstrip()
            if self._open.startswith(stripped) and len(stripped) < len(self._open):
                self._held = text  # could still become the opening tag
                return "", ""
            if stripped.startswith(self._open):
                text = stripped[len(self._open) :]
                self._state = "thinking"
            else:
                self._state = "content"
        if self._state == "thinking":
            at = text.find(self._close)
            if at == -1:
                keep = _partial_suffix(text, self._close)
                thinking, self._held = text[: len(text) - keep], text[len(text) - keep :]
                return thinking, ""
            thinking, text = text[:at], text[at + len(self._close) :].lstrip()
            self._state = "content"
        content = text
        return thinking, content

    def flush(self) -> tuple[str, str]:
        held, self._held = self._held, ""
        return (held, "") if self._state == "thinking" else ("", held)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
