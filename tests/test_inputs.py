"""Bounds on user-supplied fields, checked before any work."""

from __future__ import annotations

import pytest

from higgs_runtime.inputs import optional_text, required_text, voice_name, voice_names
from higgs_runtime.speech import InvalidRequest


def test_text_is_stripped_and_blank_is_absent():
    assert optional_text("scene_prompt", "  a quiet room ", 20) == "a quiet room"
    assert optional_text("scene_prompt", "   ", 20) is None
    assert optional_text("scene_prompt", None, 20) is None
    assert required_text("text", " hi ", 5) == "hi"


@pytest.mark.parametrize("check,words", [
    (lambda: optional_text("scene_prompt", "x" * 21, 20), "scene_prompt is 21 characters long; the limit is 20"),
    (lambda: required_text("text", "  ", 20), "text must not be empty"),
    (lambda: voice_name("voice", "v" * 65), "voice is 65 characters long; the limit is 64"),
    (lambda: voice_names("reference_voices", ["a"] * 11, 10), "reference_voices has 11 entries; the limit is 10"),
    (lambda: voice_names("reference_voices", ["a", " "], 10), "reference_voices[1] must not be empty"),
])
def test_limits_name_the_field(check, words):
    with pytest.raises(InvalidRequest, match=words.replace("[", r"\[").replace("]", r"\]")):
        check()


def test_a_limit_is_inclusive():
    assert optional_text("description", "d" * 500, 500) == "d" * 500
    assert voice_names("reference_voices", ["belinda"] * 10, 10) == ["belinda"] * 10
