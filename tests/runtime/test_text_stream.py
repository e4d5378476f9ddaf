"""Text arriving token by token, cut into the pieces to speak as soon as each is complete."""

from __future__ import annotations

import pytest

from higgs_runtime.text_stream import SentenceBuffer


def fed(text: str, max_chars: int = 300, step: int = 3) -> tuple[list[list[str]], list[str]]:
    """What each push of `step` characters returns, and what a final flush returns."""
    buffer = SentenceBuffer(max_chars)
    returned = [buffer.push(text[start:start + step]) for start in range(0, len(text), step)]
    return returned, buffer.flush()


def test_each_sentence_comes_as_soon_as_it_is_complete():
    buffer = SentenceBuffer(300)
    assert buffer.push("Hello there") == []
    assert buffer.push(". How") == ["Hello there."]
    assert buffer.push(" are you?") == []  # a closing quote may follow
    assert buffer.push(" I am fine") == ["How are you?"]
    assert buffer.flush() == ["I am fine"]
    assert buffer.pending_chars == 0


@pytest.mark.parametrize("text,pieces", [
    ("Mr. Smith arrived. He sat down. ", ["Mr. Smith arrived.", "He sat down."]),
    ("It costs 3.5 euros. Cheap! ", ["It costs 3.5 euros.", "Cheap!"]),
    ("你好。今天天气很好！我们走吧", ["你好。", "今天天气很好！", "我们走吧"]),
    ("A first paragraph without an end\n\nand a second one. ", ["A first paragraph without an end",
                                                               "and a second one."]),
    ("She said \"stop.\" Then left. ", ["She said \"stop.\"", "Then left."]),
])
def test_sentence_ends_abbreviations_numbers_cjk_and_blank_lines(text, pieces):
    returned, rest = fed(text)
    assert [piece for batch in returned for piece in batch] + rest == pieces


def test_an_end_at_the_end_of_the_text_so_far_waits_for_what_follows():
    buffer = SentenceBuffer(300)
    assert buffer.push("Version 3.") == []
    assert buffer.push("5 is out.") == []
    assert buffer.push(" It") == ["Version 3.5 is out."]
    assert buffer.push(" said \"stop.") == []
    assert buffer.push("\"") == []
    assert buffer.push("\n") == ["It said \"stop.\""]


def test_a_run_without_an_end_is_cut_the_long_form_way():
    words = " ".join(f"word{i}" for i in range(40))
    returned, rest = fed(words, max_chars=50, step=7)
    pieces = [piece for batch in returned for piece in batch] + rest
    assert all(len(piece) <= 50 for piece in pieces)
    assert " ".join(pieces) == words


def test_clear_drops_what_is_buffered():
    buffer = SentenceBuffer(300)
    buffer.push("half a sent")
    buffer.clear()
    assert buffer.pending_chars == 0 and buffer.flush() == []
