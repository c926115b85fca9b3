"""The multipart form of /v1/audio/transcriptions, read as Go's ParseMultipartForm reads it."""

from __future__ import annotations

import pytest

from corral.api.errors import BadRequestError
from corral.api.transcriptions import chat_request, fields, forwarded, parse_form

FORM = "multipart/form-data; boundary=XyZ"


def part(disposition: str, content: bytes, extra: str = "") -> bytes:
    return f"--XyZ\r\nContent-Disposition: form-data; {disposition}\r\n{extra}\r\n".encode() + content + b"\r\n"


def test_fields_and_the_file_part():
    body = (part('name="model"', b"m:latest") + part("name=language", b"en")
            + part('name="file"; filename="a b.wav"', b"RIFF\r\n--Xy binary\r\n", "Content-Type: audio/wav\r\n")
            + part('name="model"', b"second") + b"--XyZ--\r\n")
    form = parse_form(FORM, body)
    assert form == {"model": "m:latest", "language": "en", "file": b"RIFF\r\n--Xy binary\r\n"}
    assert fields("application/json", str.encode(__import__("json").dumps(forwarded(form)))) == {
        **form, "prompt": "", "response_format": ""}
    native = chat_request(form)
    assert native["messages"][0]["content"].endswith(" The audio is in en.")
    assert native["options"] == {"temperature": 0} and native["stream"] is False


@pytest.mark.parametrize("body, message", [
    (part('name="model"', b"m") + part('name="file"; filename=""', b"") + b"--XyZ--", "file is required: http: no such file"),
    (part('name="model"', b"m") + part('name="file"; filename="a.wav"', b"") + b"--XyZ--", "audio file is empty"),
    (part('name="file"; filename="a.wav"', b"x") + b"--XyZ--", "model is required"),
])
def test_what_go_would_refuse(body: bytes, message: str):
    with pytest.raises(BadRequestError) as raised:
        chat_request(parse_form(FORM, body))
    assert str(raised.value) == message


@pytest.mark.parametrize("content_type, body, message", [
    ("text/plain", b"x", "request Content-Type isn't multipart/form-data"),
    ("multipart/form-data", b"x", "no multipart boundary param in Content-Type"),
    (FORM, b"no delimiter here", "multipart: NextPart: EOF"),
    (FORM, part('name="model"', b"m"), "multipart: NextPart: EOF"),
    (FORM, b"--XyZ\r\nno header end", "malformed MIME header: missing colon"),
    (FORM, b"--XyZ" + b"\r\n--XyZ" * 1_000_000, "multipart: too many parts"),
])
def test_malformed_forms(content_type: str, body: bytes, message: str):
    with pytest.raises(BadRequestError) as raised:
        parse_form(content_type, body)
    assert str(raised.value) == "failed to parse multipart form: " + message
