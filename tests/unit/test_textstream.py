"""Token bytes become client text: UTF-8 split across tokens, stop sequences across tokens."""

from __future__ import annotations

import pytest

from corral.worker.textstream import TextStream, ThinkingSplitter


def feed_all(stream: TextStream, pieces: list[bytes]) -> str:
    return "".join(stream.feed(p) for p in pieces) + stream.flush()


def test_multibyte_character_split_over_tokens_is_sent_whole():
    stream = TextStream()
    euro = "€".encode()
    assert stream.feed(euro[:1]) == ""
    assert stream.feed(euro[1:]) == "€"


@pytest.mark.parametrize(
    ("pieces", "stops", "expected", "stopped"),
    [
        ([b"Hello", b" wor", b"ld"], ["world"], "Hello ", True),
        ([b"a", b"<|", b"end", b"|>", b"b"], ["<|end|>"], "a", True),
        ([b"a", b"<|", b"x"], ["<|end|>"], "a<|x", False),  # a false start is released
        ([b"one two"], ["two", "one"], "", True),  # the earliest stop wins
        ([b"abc"], [], "abc", False),
    ],
)
def test_stop_sequences(pieces, stops, expected, stopped):
    stream = TextStream(stops)
    assert feed_all(stream, pieces) == expected
    assert stream.stopped is stopped


def test_text_that_may_start_a_stop_is_held_back_until_it_cannot():
    stream = TextStream(["STOP"])
    assert stream.feed(b"go ST") == "go "
    assert stream.feed(b"ay") == "STay"


@pytest.mark.parametrize(
    ("pieces", "opened", "thinking", "content"),
    [
        (["<think>", "hmm", "</think>", "Answer"], False, "hmm", "Answer"),
        (["<thi", "nk>a", "b</th", "ink>\n\nC"], False, "ab", "C"),
        (["plain ", "answer"], False, "", "plain answer"),
        (["reasoning", "</think>done"], True, "reasoning", "done"),
        (["never closed"], True, "never closed", ""),
    ],
)
def test_thinking_is_split_from_the_answer(pieces, opened, thinking, content):
    splitter = ThinkingSplitter(opened=opened)
    got_thinking = got_content = ""
    for piece in pieces:
        t, c = splitter.feed(piece)
        got_thinking += t
        got_content += c
    t, c = splitter.flush()
    assert (got_thinking + t, got_content + c) == (thinking, content)
