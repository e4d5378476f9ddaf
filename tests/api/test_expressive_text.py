"""Expressive text end to end (issue 11): sound-event tags, clean-up and its opt-out, and voices described
in words, on every route of a real server. The server's prompt sizes (`usage.prompt_tokens`) are checked
against prompts built here with the same tokenizer, so a tag spelled out as characters shows up."""

from __future__ import annotations

import json

import pytest
import requests

from audio_checks import check_generation
from higgs_runtime import prompts
from higgs_runtime.text_normalize import SOUND_EVENT_TOKENS, normalize

QUICK = {"max_new_tokens": 8, "seed": 1}
TAGGED = "Well [laugh] that was（really）funny，right [applause]"
DIALOGUE = "[SPEAKER0] Did you hear that [laugh]\n\n[SPEAKER1]   I did！[cough]"


def post(base_url: str, path: str, body: dict) -> requests.Response:
    return requests.post(base_url + path, json=body, timeout=120)


def generated(base_url: str, path: str, body: dict) -> dict:
    response = post(base_url, path, {**body, **QUICK})
    assert response.status_code == 200, response.text
    result = response.json()
    check_generation(result, body["text"])  # the text as sent, not as normalised
    return result


def prompt_tokens(base_url: str, path: str, body: dict) -> int:
    return generated(base_url, path, body)["usage"]["prompt_tokens"]


def expected_tokens(tiny_model, messages: list[dict]) -> int:
    return prompts.tokenize(messages, [], tiny_model.tokenizer, tiny_model.config,
                            text_tokens=SOUND_EVENT_TOKENS).num_tokens


def detail_of(response: requests.Response) -> str:
    assert response.status_code == 400, response.text
    return response.json()["detail"]


# --- /generate -------------------------------------------------------------------------------------

def test_generate_speaks_tags_as_single_tokens(base_url, tiny_model):
    expected = expected_tokens(tiny_model, prompts.plain_messages(normalize(TAGGED), None))
    assert prompt_tokens(base_url, "/generate", {"text": TAGGED}) == expected


def test_generate_opt_out_reads_the_text_as_written(base_url, tiny_model):
    expected = expected_tokens(tiny_model, prompts.plain_messages(TAGGED, None))
    assert prompt_tokens(base_url, "/generate", {"text": TAGGED, "normalize_text": False}) == expected
    assert expected != expected_tokens(tiny_model, prompts.plain_messages(normalize(TAGGED), None))


def test_tag_strings_typed_by_hand_are_spelled_out(base_url):
    """`<SE>` typed as text costs several tokens, the tag made from `[cough]` exactly one."""
    typed = prompt_tokens(base_url, "/generate", {"text": "Excuse me <SE>[Cough]</SE>"})
    made = prompt_tokens(base_url, "/generate", {"text": "Excuse me [cough]"})
    assert typed - made >= 4, (typed, made)


def test_generate_with_a_described_voice(base_url, tiny_model):
    description = "deep male voice, slow, British accent"
    body = {"text": TAGGED, "voice_description": description, "scene_prompt": "A quiet study."}
    expected = expected_tokens(tiny_model, prompts.plain_messages(normalize(TAGGED), "A quiet study.", description))
    assert prompt_tokens(base_url, "/generate", body) == expected


def test_text_with_nothing_to_say_once_normalised(base_url):
    assert "normalize_text" in detail_of(post(base_url, "/generate", {"text": "( )", **QUICK}))
    generated(base_url, "/generate", {"text": "( )", "normalize_text": False})


# --- /generate/voice-clone ---------------------------------------------------------------------------

def test_voice_clone_normalises_and_opts_out(base_url, tiny_model):
    """The clip is the same in each request: the prompts differ exactly as the texts' renderings do."""
    def clone_tokens(**fields) -> int:
        return prompt_tokens(base_url, "/generate/voice-clone", {"text": TAGGED, "reference_voice": "belinda", **fields})

    def plain_tokens(text: str) -> int:
        return expected_tokens(tiny_model, prompts.plain_messages(text, None))

    assert clone_tokens() - clone_tokens(normalize_text=False) == plain_tokens(normalize(TAGGED)) - plain_tokens(TAGGED)


# --- /generate/multi-speaker -----------------------------------------------------------------------

def test_dialogue_with_tags_and_described_speakers(base_url, tiny_model):
    voices = [{"description": "warm alto, cheerful"}, {"description": "gravelly bass, slow"}]
    expected = expected_tokens(tiny_model, prompts.multi_speaker_messages(
        normalize(DIALOGUE), None, ["warm alto, cheerful", "gravelly bass, slow"]))
    assert prompt_tokens(base_url, "/generate/multi-speaker", {"text": DIALOGUE, "reference_voices": voices}) == expected


def test_dialogue_opt_out(base_url, tiny_model):
    expected = expected_tokens(tiny_model, prompts.multi_speaker_messages(DIALOGUE.strip(), None, []))
    body = {"text": DIALOGUE, "normalize_text": False}
    assert prompt_tokens(base_url, "/generate/multi-speaker", body) == expected


def test_dialogue_mixing_a_cloned_and_a_described_voice(base_url, tiny_model):
    def tokens(description: str) -> int:
        voices = ["belinda", {"description": description}]
        return prompt_tokens(base_url, "/generate/multi-speaker", {"text": DIALOGUE, "reference_voices": voices})

    short, long = "calm", "calm, low, unhurried narrator with a slight rasp"
    assert tokens(long) - tokens(short) == len(tiny_model.tokenizer.encode(f"SPEAKER1: {long}", add_special_tokens=False)) \
        - len(tiny_model.tokenizer.encode(f"SPEAKER1: {short}", add_special_tokens=False))


@pytest.mark.parametrize("voices,words", [
    (["belinda", {"description": "d" * 501}], "reference_voices[1].description is 501 characters long; the limit is 500"),
    ([{"description": "  "}], "reference_voices[0].description must not be empty"),
    ([{"description": "ok"}] * 11, "reference_voices has 11 entries; the limit is 10"),
    ([{"description": "ok"}], "reference_voices has only 1"),
])
def test_described_speakers_are_bounded(base_url, voices, words):
    body = {"text": DIALOGUE, "reference_voices": voices, **QUICK}
    assert words in detail_of(post(base_url, "/generate/multi-speaker", body))


def test_a_voice_entry_of_the_wrong_shape_is_refused(base_url):
    body = {"text": DIALOGUE, "reference_voices": [{"name": "belinda"}, "chadwick"], **QUICK}
    response = post(base_url, "/generate/multi-speaker", body)
    assert response.status_code == 400 and "reference_voices" in response.text


def test_voice_description_is_bounded(base_url):
    body = {"text": "Hi.", "voice_description": "v" * 501, **QUICK}
    assert "voice_description is 501 characters long" in detail_of(post(base_url, "/generate", body))


# --- /v1/audio/speech ----------------------------------------------------------------------------------

def speech_usage(base_url: str, **fields) -> dict:
    body = {"model": "tts-1", "response_format": "pcm", "stream_format": "sse", **QUICK, **fields}
    response = requests.post(base_url + "/v1/audio/speech", json=body, timeout=120)
    assert response.status_code == 200, response.text
    events = [json.loads(line[len("data: "):]) for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "speech.audio.done", events[-1]
    return events[-1]["usage"]


@pytest.mark.parametrize("fields,messages", [
    ({}, prompts.plain_messages(normalize(TAGGED), None)),
    ({"normalize_text": False}, prompts.plain_messages(TAGGED, None)),
    ({"voice_description": "bright young voice", "instructions": "A busy street."},
     prompts.plain_messages(normalize(TAGGED), "A busy street.", "bright young voice")),
])
def test_openai_route_tags_descriptions_and_opt_out(base_url, tiny_model, fields, messages):
    assert speech_usage(base_url, input=TAGGED, **fields)["input_tokens"] == expected_tokens(tiny_model, messages)


@pytest.mark.parametrize("fields,words", [
    ({"voice": "belinda", "voice_description": "calm"}, "either voice or ref_audio (a clip), or voice_description"),
    ({"voice_description": "v" * 501}, "voice_description is 501 characters long"),
])
def test_openai_voice_description_errors(base_url, fields, words):
    body = {"model": "tts-1", "input": "Hi.", **fields}
    response = requests.post(base_url + "/v1/audio/speech", json=body, timeout=60)
    assert response.status_code == 400 and words in response.json()["error"]["message"], response.text
