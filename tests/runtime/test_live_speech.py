"""A live conversation: segments spoken one after another in one continuing context, barge-in keeping
exactly the audio sent, and the same codes as the conversation computed whole."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from higgs_runtime.config import Settings
from higgs_runtime.engine.requests import GenerationRequest
from higgs_runtime.engine.sampling import SamplingParams
from higgs_runtime.live_speech import LiveSpeech
from higgs_runtime.speech import Sampling, Synthesizer
from higgs_runtime.voices import CATALOG_PATH, VoiceStore
from test_long_form import wait_for_no_kept_context

GREEDY = Sampling(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=40, seed=5)
SENTENCES = ("The first sentence comes in.", "A second one follows it.", "And a third closes the turn.")


@pytest.fixture(scope="module")
def synthesizer(tiny_model, tmp_path_factory):
    data = tmp_path_factory.mktemp("live-data")
    synth = Synthesizer(tiny_model.loaded, VoiceStore(CATALOG_PATH, data / "presets", data / "voices"),
                        Settings(device="cpu"))
    yield synth
    synth.close()


def live(synthesizer) -> LiveSpeech:
    plan = synthesizer.live_plan(synthesizer.plain_conversation("A quiet room."), voice_from_first_chunk=True)
    return LiveSpeech(synthesizer, plan, GREEDY, normalize=True)


async def speak(conversation: LiveSpeech, text: str, stop_after_samples: int | None = None):
    """Speaks one segment as the live route does (sending is counting here); stops it once more than
    `stop_after_samples` were sent. Returns the segment and its result."""
    segment = conversation.start(text)
    async for piece in segment.audio.body():
        segment.sent(len(piece))
        if stop_after_samples is not None and segment.samples_sent > stop_after_samples:
            return segment, await conversation.stop(segment)
    result = conversation.generated(segment)
    tail = await segment.audio.tail()
    segment.sent(0 if tail is None else len(tail))
    return segment, result


def whole(synthesizer, conversation: LiveSpeech, index: int):
    """The same turn computed from its whole prompt, without the kept context."""
    plan = conversation.plan
    prompt = synthesizer._tokenize(plan, index, plan.history(index)[0], 10 ** 6)
    request = GenerationRequest(prompt, SamplingParams(temperature=0.0, top_p=1.0, top_k=0, seed=GREEDY.seed + index),
                                synthesizer.engine_steps(GREEDY), guard_frames=10 ** 6, timeout_s=60)
    return prompt, synthesizer.scheduler.submit(request).result(60)


def speaks_as_whole_then_closes(synthesizer, conversation: LiveSpeech, index: int, result) -> None:
    _, reference = whole(synthesizer, conversation, index)
    assert np.array_equal(result.frames, reference.frames)
    conversation.close()
    assert wait_for_no_kept_context(synthesizer)


def test_segments_continue_one_context_and_speak_as_the_conversation_whole(synthesizer):
    conversation = live(synthesizer)

    async def session():
        return [await speak(conversation, text) for text in SENTENCES]

    spoken = asyncio.run(session())
    for index in (1, 2):
        segment, result = spoken[index]
        prompt, reference = whole(synthesizer, conversation, index)
        assert result.prompt_tokens == prompt.num_tokens
        assert result.prefill_tokens < 60 < prompt.num_tokens  # only its own turn (and the end of the last)
        assert np.array_equal(result.frames, reference.frames)
    assert conversation.plan.chunks == list(SENTENCES)
    conversation.close()
    assert wait_for_no_kept_context(synthesizer)


def test_a_barge_in_keeps_exactly_the_audio_sent(synthesizer):
    conversation = live(synthesizer)
    hop = synthesizer.codec.samples_per_frame

    async def session():
        await speak(conversation, SENTENCES[0])
        stopped, result = await speak(conversation, SENTENCES[1], stop_after_samples=1)
        return stopped, result, await speak(conversation, SENTENCES[2])

    stopped, result, (_, after) = asyncio.run(session())
    assert result.finish_reason == "cancelled"
    sent_frames = stopped.samples_sent // hop
    assert conversation.plan.chunks == list(SENTENCES)
    assert conversation.plan.spoken[1][1].shape[1] == sent_frames  # only what was sent stays in the context
    speaks_as_whole_then_closes(synthesizer, conversation, 2, after)


def test_a_segment_stopped_before_any_audio_leaves_the_conversation(synthesizer):
    conversation = live(synthesizer)

    async def session():
        await speak(conversation, SENTENCES[0])
        segment = conversation.start(SENTENCES[1])
        await conversation.stop(segment)  # nothing was sent
        return await speak(conversation, SENTENCES[2])

    segment, after = asyncio.run(session())
    assert segment.index == 1 and conversation.plan.chunks == [SENTENCES[0], SENTENCES[2]]
    speaks_as_whole_then_closes(synthesizer, conversation, 1, after)


def test_text_with_nothing_to_say_starts_no_segment(synthesizer):
    conversation = live(synthesizer)
    assert conversation.start("( )") is None and conversation.plan.chunks == []
    conversation.close()
