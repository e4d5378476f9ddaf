"""Bounds on user-supplied fields, checked before any work."""

from __future__ import annotations

import pytest

from higgs_api.errors import ApiError
from higgs_api.inputs import optional_text, required_text, speaker_voices, voice_name
from higgs_api.schemas import VoiceDescription
from higgs_runtime.speech import DescribedVoice
from higgs_runtime.text_normalize import SOUND_EVENT_TOKENS


def test_text_is_stripped_and_blank_is_absent():
    assert optional_text("scene_prompt", "  a quiet room ", 20) == "a quiet room"
    assert optional_text("scene_prompt", "   ", 20) is None
    assert optional_text("scene_prompt", None, 20) is None
    assert required_text("text", " hi ", 5) == "hi"


@pytest.mark.parametrize("check,param,words", [
    (lambda: optional_text("scene_prompt", "x" * 21, 20), "scene_prompt",
     "scene_prompt is 21 characters long; the limit is 20"),
    (lambda: required_text("text", "  ", 20), "text", "text must not be empty"),
    (lambda: voice_name("voice", "v" * 65), "voice", "voice is 65 characters long; the limit is 64"),
    (lambda: speaker_voices("reference_voices", ["a"] * 11, 10, 50), "reference_voices",
     "reference_voices has 11 entries; the limit is 10"),
    (lambda: speaker_voices("reference_voices", ["a", " "], 10, 50), "reference_voices[1]",
     "reference_voices[1] must not be empty"),
    (lambda: speaker_voices("reference_voices", ["a", VoiceDescription(description="d" * 51)], 10, 50),
     "reference_voices[1].description", "reference_voices[1].description is 51 characters long; the limit is 50"),
    (lambda: speaker_voices("reference_voices", [VoiceDescription(description=" ")], 10, 50),
     "reference_voices[0].description", "reference_voices[0].description must not be empty"),
])
def test_limits_name_the_field(check, param, words):
    with pytest.raises(ApiError) as refused:
        check()
    assert (refused.value.status, refused.value.param, refused.value.detail) == (400, param, words)


def test_a_limit_is_inclusive():
    assert optional_text("description", "d" * 500, 500) == "d" * 500
    assert speaker_voices("reference_voices", ["belinda"] * 10, 10, 50) == ["belinda"] * 10
    described = speaker_voices("reference_voices", [VoiceDescription(description=" d" * 25)], 10, 50)
    assert described == [DescribedVoice(("d " * 25).strip())]


def test_no_field_can_carry_a_sound_event_mark():
    """Only the normaliser writes the marks that become sound-event tokens; user text loses them."""
    marks = "".join(SOUND_EVENT_TOKENS)
    assert optional_text("scene_prompt", f"a{marks} room", 20) == "a room"
    assert optional_text("scene_prompt", f" {marks} ", 20) is None
