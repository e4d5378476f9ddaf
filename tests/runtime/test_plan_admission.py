"""Whole-request admission: a text is refused when the plan is made if any of its chunks could never
fit the prompt limit, not half-way through (issue 18: a stream answered 200, then was cut)."""

from __future__ import annotations

import asyncio

import pytest

from higgs_runtime.config import Settings
from higgs_runtime.live_speech import LiveSpeech
from higgs_runtime.speech import InvalidRequest, Sampling, Synthesizer
from higgs_runtime.voices import CATALOG_PATH, VoiceStore
from test_live_speech import speak

SCENE = "A long scene prompt: a narrator in a quiet wooden study, rain on the window, a fire in the hearth."
FIRST = "A short first paragraph to start."
EMOJI = "🎉" * 60  # one chunk of its own (70 characters a chunk), four tokens a character
SAMPLING = Sampling(temperature=0.8, top_p=0.95, top_k=50, max_new_tokens=10, seed=4)


def minimal_tokens(synthesizer, plan, index: int) -> int:
    return synthesizer._tokenize(plan, index, [], 10 ** 6).num_tokens


@pytest.fixture(scope="module")
def limits(tiny_model, tmp_path_factory):
    """The smallest prompts of the short chunk and of the emoji chunk, on a server without a tight limit."""
    data = tmp_path_factory.mktemp("admission-roomy")
    roomy = Synthesizer(tiny_model.loaded, VoiceStore(CATALOG_PATH, data / "p", data / "v"),
                        Settings(device="cpu", long_form_chunk_chars=70))
    try:
        plan = roomy.plan_plain(f"{FIRST}\n\n{EMOJI}", SCENE)
        assert len(plan.chunks) == 2
        short, emoji = minimal_tokens(roomy, plan, 0), minimal_tokens(roomy, plan, 1)
    finally:
        roomy.close()
    assert emoji > short + 100
    return short, emoji


@pytest.fixture(scope="module")
def tight(tiny_model, limits, tmp_path_factory):
    """A server whose limit fits the short chunk's prompt (with room for some audio) but never the emoji's."""
    short, emoji = limits
    data = tmp_path_factory.mktemp("admission-tight")
    synth = Synthesizer(tiny_model.loaded, VoiceStore(CATALOG_PATH, data / "p", data / "v"),
                        Settings(device="cpu", long_form_chunk_chars=70, max_seq_len=short + 40))
    assert short + 40 <= emoji
    yield synth
    synth.close()


@pytest.fixture
def submitted(tight, monkeypatch) -> list:
    """The requests the engine was handed."""
    requests, submit = [], tight.scheduler.submit

    def recording(request, follow_up=False):
        requests.append(request)
        return submit(request, follow_up)

    monkeypatch.setattr(tight.scheduler, "submit", recording)
    return requests


def test_a_later_chunk_that_can_never_fit_refuses_the_request_when_planned(tight, limits, submitted):
    with pytest.raises(InvalidRequest) as refused:
        tight.plan_plain(f"{FIRST}\n\n{EMOJI}", SCENE)
    message = str(refused.value)
    assert message.startswith("chunk 2 of 2 of the text (\"🎉🎉")
    assert f"is {limits[1]} tokens long; the server's limit is {tight.settings.max_seq_len}" in message
    assert submitted == [] and tight.scheduler.load.queue_depth == 0 and tight.scheduler.running_count == 0


def test_the_first_of_several_chunks_is_named_too(tight, submitted):
    with pytest.raises(InvalidRequest, match=r"^chunk 1 of 2 of the text"):
        tight.plan_plain(f"{EMOJI}\n\n{FIRST}", SCENE)
    assert submitted == []


def test_a_text_whose_chunks_all_fit_is_spoken(tight, submitted):
    plan = tight.plan_plain(f"{FIRST}\n\nA second paragraph, also short.\n\nAnd a third one.", SCENE)
    assert len(plan.chunks) >= 2
    speech = asyncio.run(tight.generate(plan, SAMPLING))
    assert len(submitted) == len(plan.spoken) == len(plan.chunks)
    assert len(speech.samples) > 0


def test_a_live_segment_that_can_never_fit_is_refused_before_it_is_queued(tight, submitted):
    plan = tight.live_plan(tight.plain_conversation(SCENE), voice_from_first_chunk=True)
    conversation = LiveSpeech(tight, plan, SAMPLING, normalize=True)
    try:
        asyncio.run(speak(conversation, FIRST))
        before = (list(plan.chunks), len(plan.spoken), plan.history_start, plan.context)
        with pytest.raises(InvalidRequest, match=r"^the segment \"🎉🎉.*the server's limit is"):
            conversation.start(EMOJI)
        assert len(submitted) == 1
        assert (list(plan.chunks), len(plan.spoken), plan.history_start, plan.context) == before
        segment, result = asyncio.run(speak(conversation, "And the talk goes on."))  # the session goes on
        assert segment.index == 1 and result.finish_reason in ("stop", "length", "guard")
    finally:
        conversation.close()
