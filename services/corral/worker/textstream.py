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
