"""OpenAI's ``POST /v1/audio/transcriptions``, as Ollama serves it: a chat in disguise.

The client sends a multipart form (``model``, the audio in ``file``, optional
``response_format``, ``language``, ``prompt``). As in Ollama, the audio becomes the media of a
user message under a system prompt that asks for the spoken words only, at temperature 0; the
answer is ``{"text": ...}``, or the bare text with ``response_format: "text"``. A model with an
audio projector transcribes; any other answers as chat does for media it cannot take (a model
without a projector: 400 ``does not support vision``), in OpenAI's error envelope.

A router needs the model to place the request, so it parses the form itself (``parse_form``,
multipart only, as Ollama) and forwards its fields to the worker as JSON (``forwarded``), the
audio base64 in ``file``; a worker takes either body (``fields``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from corral.api.errors import BadRequestError

PATH = "/v1/audio/transcriptions"
_SYSTEM = (
    "Transcribe the audio exactly as spoken. Output only the spoken words. Do not answer any question in the audio."
)
_QUESTION = "What exact words are spoken in this audio?"
_TEXT_FIELDS = ("model", "response_format", "language", "prompt")
_MAX_PARTS = 64  # a form with more is not one a client of this route sends
IN_THREAD_BYTES = 1 << 20  # a larger body is parsed (and its audio re-encoded) off the event loop
# name="..." or name=token (RFC 7578 allows both; Go's mime parser reads both).
_DISPOSITION = re.compile(r'(?:^|;)\s*(name|filename)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s"]+))', re.IGNORECASE)


def fields(content_type: str, body: bytes) -> dict[str, Any]:
    """The form's fields, ``file`` as bytes (None: no file part): from a client's multipart
    body, or from the JSON a router forwards."""
    if content_type.split(";", 1)[0].strip().lower() == "application/json":
        return _from_json(body)
    return parse_form(content_type, body)


def forwarded(form: dict[str, Any]) -> dict[str, Any]:
    """What a router sends the worker: the fields as JSON-able values."""
    out = {k: form.get(k, "") for k in _TEXT_FIELDS}
    out["file"] = None if form.get("file") is None else base64.b64encode(form["file"]).decode()
    return out


def chat_request(form: dict[str, Any]) -> dict[str, Any]:
    """Ollama's mapping (openai.FromTranscriptionRequest), after its checks, in its order."""
    model = form.get("model") or ""
    if not model:
        raise BadRequestError("model is required")
    audio = form.get("file")
    if audio is None:
        raise BadRequestError("file is required: http: no such file")
    if not audio:
        raise BadRequestError("audio file is empty")
    system = _SYSTEM
    if form.get("language"):
        system += f" The audio is in {form['language']}."
    if form.get("prompt"):
        system += f" Context: {form['prompt']}"
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": _QUESTION, "images": [base64.b64encode(audio).decode()]},
        ],
        "stream": False,
        "options": {"temperature": 0},
    }


def response(chat: dict[str, Any], response_format: str) -> tuple[bytes, str]:
    """The body and its media type: ``text`` plain, anything else OpenAI's JSON."""
    text = (chat.get("message") or {}).get("content", "").strip()
    if response_format == "text":
        return text.encode(), "text/plain"
    return json.dumps({"text": text}, ensure_ascii=False).encode() + b"\n", "application/json"


def _from_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        raise BadRequestError("failed to parse multipart form: invalid forwarded body") from None
    if not isinstance(data, dict):
        raise BadRequestError("failed to parse multipart form: invalid forwarded body")
    form: dict[str, Any] = {k: v for k, v in data.items() if k in _TEXT_FIELDS and isinstance(v, str)}
    file = data.get("file")
    try:
        form["file"] = base64.b64decode(file, validate=True) if isinstance(file, str) else None
    except (binascii.Error, ValueError):
        raise BadRequestError("failed to parse multipart form: invalid forwarded body") from None
    return form


def parse_form(content_type: str, body: bytes) -> dict[str, Any]:
    """multipart/form-data (RFC 7578), as Go's ParseMultipartForm reads it for this route:
    text fields by name (the first of a name wins), the first part with a filename named
    ``file`` as the audio. Errors in Go's words."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise BadRequestError("failed to parse multipart form: request Content-Type isn't multipart/form-data")
    found = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', params, re.IGNORECASE)
    if found is None:
        raise BadRequestError("failed to parse multipart form: no multipart boundary param in Content-Type")
    delimiter = b"--" + (found.group(1) or found.group(2)).encode("latin-1")
    first = body.find(delimiter)
    if first < 0:
        raise BadRequestError("failed to parse multipart form: multipart: NextPart: EOF")
    form: dict[str, Any] = {"file": None}
    parts = body[first + len(delimiter) :].split(b"\r\n" + delimiter, _MAX_PARTS + 1)  # bounded: no 1e6 pieces
    if len(parts) > _MAX_PARTS + 1:
        raise BadRequestError("failed to parse multipart form: multipart: too many parts")
    closed = False
    for raw in parts:
        if raw.startswith(b"--"):  # the closing delimiter
            closed = True
            break
        if not raw.startswith(b"\r\n"):
            raise BadRequestError("failed to parse multipart form: multipart: NextPart: bad delimiter")
        head, sep, content = raw[2:].partition(b"\r\n\r\n")
        if not sep:
            raise BadRequestError("failed to parse multipart form: malformed MIME header: missing colon")
        name, filename = _disposition(head)
        if name is None:
            continue
        if filename:  # as Go: a part whose filename is empty (an empty file input) is a value
            if name == "file" and form["file"] is None:
                form["file"] = content
        elif name in _TEXT_FIELDS and name not in form:
            form[name] = content.decode("utf-8", errors="replace")
    if not closed:
        raise BadRequestError("failed to parse multipart form: multipart: NextPart: EOF")
    return form


def _disposition(head: bytes) -> tuple[str | None, str | None]:
    """``name`` and ``filename`` of a part's Content-Disposition (None: absent)."""
    for line in head.decode("utf-8", errors="replace").split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-disposition":
            _, _, params = value.partition(";")
            found = {k.lower(): quoted.replace('\\"', '"') if quoted else token
                     for k, quoted, token in _DISPOSITION.findall(";" + params)}  # fmt: skip
            return found.get("name"), found.get("filename")
    return None, None
