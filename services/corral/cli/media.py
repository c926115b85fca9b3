"""Files named in a prompt, for a model that takes images or audio: ``ollama run``'s way.

With a vision (or audio) model, ``ollama run`` looks through the prompt for paths of images
(``.jpg``, ``.jpeg``, ``.png``, ``.webp``) and WAV files that start with ``/``, ``./`` or a
drive letter, reads each one that exists, takes it out of the text and sends it as media,
saying ``Added image '<path>'`` on stderr. A path that names no file stays text. The file's
first bytes must say it is one of those types, and it may be 100 MB at most.
"""

from __future__ import annotations

import bisect
import json
import re
import sys
from pathlib import Path
from typing import TextIO

from corral.cli.client import CliError

# ollama's pattern: (?:[a-zA-Z]:)?(?:\./|/|\\)[\S\\ ]+?\.(?i:jpg|jpeg|png|webp|wav)\b, a start then the
# shortest run (no line breaks or tabs) up to an extension. Go's regexp is linear; Python's
# would take seconds on a line of many slashes, so ``file_names`` matches it by hand.
_START = re.compile(r"(?:[a-zA-Z]:)?(?:\./|/|\\)")
_EXTENSION = re.compile(r"\.(?i:jpg|jpeg|png|webp|wav)\b")
_BREAK = re.compile(r"[^\S ]")  # whitespace other than a space: no path runs across it
_ESCAPES = {"\\ ": " ", "\\(": "(", "\\)": ")", "\\[": "[", "\\]": "]", "\\{": "{", "\\}": "}", "\\$": "$",
            "\\&": "&", "\\;": ";", "\\'": "'", "\\\\": "\\", "\\*": "*", "\\?": "?", "\\~": "~"}  # fmt: skip
_ESCAPED = re.compile("|".join(re.escape(k) for k in _ESCAPES))
MAX_FILE_BYTES = 100 * 1024 * 1024


def file_names(text: str) -> list[str]:
    """What looks like a media file's path in ``text`` (existing or not), leftmost first."""
    names: list[str] = []
    extensions = [(m.start(), m.end()) for m in _EXTENSION.finditer(text)]
    dots = [dot for dot, _ in extensions]
    breaks = [m.start() for m in _BREAK.finditer(text)]
    at = 0
    while (start := _START.search(text, at)) is not None:
        k = bisect.bisect_left(dots, start.end() + 1)  # the run holds one character at least
        if k == len(dots):
            break  # no extension after this start, nor after any later one
        dot, end = extensions[k]
        crossed = bisect.bisect_left(breaks, start.end())
        if crossed < len(breaks) and breaks[crossed] < dot:
            at = breaks[crossed] + 1  # every start before that break runs into it
            continue
        names.append(text[start.start() : end])
        at = end
    return names


def extract(text: str, err: TextIO = sys.stderr) -> tuple[str, list[bytes]]:
    """The prompt without the media files it names, and their bytes, in order."""
    found: list[bytes] = []
    for name in file_names(text):
        path = _ESCAPED.sub(lambda m: _ESCAPES[m.group(0)], name)
        try:
            data = _read(Path(path))
        except CliError as exc:
            print(f"Couldn't process file: {json.dumps(str(exc))}", file=err)
            raise
        if data is None:
            continue
        print(f"Added {'audio' if path.lower().endswith('.wav') else 'image'} '{path}'", file=err)
        for written in (f"'{path}'", f"'{name}'", name):
            text = text.replace(written, "")
        found.append(data)
    return text.strip(), found


def _read(path: Path) -> bytes | None:
    """The file's bytes; None when there is no such file (the words stay text)."""
    try:
        with path.open("rb") as f:
            kind = _content_type(f.read(512))
            if kind not in ("image/jpeg", "image/png", "image/webp", "audio/wave"):
                raise CliError(f"invalid file type: {kind}")
            if path.stat().st_size > MAX_FILE_BYTES:
                raise CliError("file size exceeds maximum limit (100MB)")
            f.seek(0)
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror}") from None


def _content_type(head: bytes) -> str:
    """The media types Go's http.DetectContentType gives the files ollama takes (others: roughly)."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] == b"RIFF" and head[8:14] == b"WEBPVP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wave"
    if head.startswith(b"GIF87a") or head.startswith(b"GIF89a"):
        return "image/gif"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "application/octet-stream"
    return "text/plain; charset=utf-8"
