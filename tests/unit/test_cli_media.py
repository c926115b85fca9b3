"""``corral run``'s reading of media files named in a prompt (as ``ollama run`` reads them)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from corral.cli.client import CliError
from corral.cli.media import extract
from tests.support.images import png

PICTURE = png(4, 4, lambda x, y: (x, y, 0))
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(28)


def test_paths_are_taken_out_and_their_files_sent(tmp_path: Path):
    (tmp_path / "a b.png").write_bytes(PICTURE)
    (tmp_path / "c.JPG").write_bytes(b"\xff\xd8\xff\xe0" + bytes(20))
    (tmp_path / "d.wav").write_bytes(WAV)
    err = io.StringIO()
    text, files = extract(f"look at {tmp_path}/a\\ b.png and '{tmp_path}/c.JPG', hear {tmp_path}/d.wav now", err)
    assert text == "look at  and , hear  now"
    assert files == [PICTURE, (tmp_path / "c.JPG").read_bytes(), WAV]
    assert err.getvalue().splitlines() == [f"Added image '{tmp_path}/a b.png'", f"Added image '{tmp_path}/c.JPG'",
                                           f"Added audio '{tmp_path}/d.wav'"]


def test_paths_to_nothing_and_other_extensions_stay_text(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("hello")
    prompt = f"see {tmp_path}/missing.png and {tmp_path}/notes.txt and relative.png"
    assert extract(prompt, io.StringIO()) == (prompt, [])


@pytest.mark.parametrize("content, kind", [(b"just text", "text/plain; charset=utf-8"),
                                           (b"\x00\x01\xfe\xff", "application/octet-stream"),
                                           (b"GIF89a" + bytes(10), "image/gif")])
def test_a_file_of_another_type_is_an_error(tmp_path: Path, content: bytes, kind: str):
    (tmp_path / "x.png").write_bytes(content)
    err = io.StringIO()
    with pytest.raises(CliError) as raised:
        extract(f"what is {tmp_path}/x.png", err)
    assert str(raised.value) == f"invalid file type: {kind}"
    assert err.getvalue() == f'Couldn\'t process file: "invalid file type: {kind}"\n'
