"""OpenAI's ``/v1/audio/transcriptions`` as Ollama serves it (a chat with the file as its media),
with the OpenAI SDK and raw HTTP, against a worker and through the cluster. The test projector
(tests/support/projector.py) reads images only, so the success path sends an image as the file;
audio reaches llama.cpp and is refused as by llama-server."""

from __future__ import annotations

import struct

import httpx
import openai
import pytest

from tests.support.vision import MODEL, RED, b64


def wav(samples: int = 1600) -> bytes:
    """A short 16 kHz mono PCM WAV of silence."""
    data = bytes(2 * samples)
    fmt = struct.pack("<HHIIHH", 1, 1, 16_000, 32_000, 2, 16)
    return b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt \
        + b"data" + struct.pack("<I", len(data)) + data


def transcription_chat(http: httpx.Client, media: bytes) -> dict:
    """The chat Ollama makes of a transcription (openai.FromTranscriptionRequest)."""
    system = ("Transcribe the audio exactly as spoken. Output only the spoken words. "
              "Do not answer any question in the audio. The audio is in en.")
    r = http.post("/api/chat", json={"model": MODEL, "stream": False, "options": {"temperature": 0}, "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": "What exact words are spoken in this audio?", "images": [b64(media)]}]})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_transcription_is_a_chat_with_the_file_as_its_media(vision, worker, http):
    """With the OpenAI SDK. The test projector reads images only, so the "audio" sent is an
    image: the answer is the chat Ollama would make of it, as JSON or as plain text."""
    client = openai.OpenAI(base_url=worker.url + "/v1", api_key="ollama", timeout=120, max_retries=0)
    expected = transcription_chat(http, RED)["message"]["content"].strip()
    made = client.audio.transcriptions.create(model=MODEL, file=("speech.png", RED), language="en")
    assert made.text == expected
    plain = client.audio.transcriptions.create(model=MODEL, file=("speech.png", RED), language="en",
                                                response_format="text")
    assert plain == expected


def test_transcription_errors_in_openai_envelope(vision, worker, http):
    client = openai.OpenAI(base_url=worker.url + "/v1", api_key="ollama", timeout=120, max_retries=0)
    # Audio for a projector without an audio encoder, and any media for a model without a projector.
    with pytest.raises(openai.BadRequestError) as raised:
        client.audio.transcriptions.create(model=MODEL, file=("speech.wav", wav()))
    assert raised.value.body["message"] == "Failed to load image or audio file"
    with pytest.raises(openai.BadRequestError) as raised:
        client.audio.transcriptions.create(model="smollm2:135m", file=("speech.wav", wav()))
    assert raised.value.body["message"] == '"smollm2:135m" does not support vision'
    with pytest.raises(openai.NotFoundError):
        client.audio.transcriptions.create(model="nope:latest", file=("speech.wav", wav()))


@pytest.mark.parametrize("kwargs, message", [
    ({"content": b"model=x", "headers": {"content-type": "application/x-www-form-urlencoded"}},
     "failed to parse multipart form: request Content-Type isn't multipart/form-data"),
    ({"content": b"--b\r\n", "headers": {"content-type": "multipart/form-data"}},
     "failed to parse multipart form: no multipart boundary param in Content-Type"),
    ({"content": b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nx", "headers":
      {"content-type": "multipart/form-data; boundary=b"}}, "failed to parse multipart form: multipart: NextPart: EOF"),
    ({"files": {"file": ("a.wav", b"RIFF")}}, "model is required"),
    ({"data": {"model": MODEL}, "files": {"audio": ("a.wav", b"RIFF")}}, "file is required: http: no such file"),
    ({"data": {"model": MODEL, "file": "not a file part"}, "files": {"other": ("x", b"x")}},
     "file is required: http: no such file"),
    ({"data": {"model": MODEL}, "files": {"file": ("a.wav", b"")}}, "audio file is empty"),
])
def test_transcription_form_errors(vision, http, kwargs, message):
    r = http.post("/v1/audio/transcriptions", **kwargs)
    assert r.status_code == 400, r.text
    assert r.json() == {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    assert http.get("/api/version").status_code == 200  # the connection and the server go on
