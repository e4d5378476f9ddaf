"""`max_new_tokens` counts frames of audio: the engine runs the delay pattern's steps on top, so even
1 gives audio (issue 18: 8 or less gave 0 samples, with HTTP 200)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from higgs_runtime.config import Settings
from higgs_runtime.engine.delay_pattern import steps_for_frames, undo_delay_pattern
from higgs_runtime.speech import Sampling, Synthesizer
from higgs_runtime.voices import CATALOG_PATH, VoiceStore

TEXT = "Hello there, this is a short sentence."


@pytest.fixture(scope="module")
def synthesizer(tiny_model, tmp_path_factory):
    data = tmp_path_factory.mktemp("max-new-tokens")
    synth = Synthesizer(tiny_model.loaded, VoiceStore(CATALOG_PATH, data / "p", data / "v"), Settings(device="cpu"))
    yield synth
    synth.close()


def greedy(frames: int) -> Sampling:
    # Greedy tiny-random keeps talking past these few frames: each request runs to its limit.
    return Sampling(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=frames, seed=1)


def test_the_steps_for_a_number_of_frames_give_exactly_that_many():
    for frames in range(0, 12):
        steps = steps_for_frames(frames, 8)
        emitted = np.zeros((steps - 1, 8), dtype=np.int64)  # the all-begin frame is not kept
        assert undo_delay_pattern(emitted).shape == (8, frames)


@pytest.mark.parametrize("frames", range(1, 11))
def test_any_max_new_tokens_gives_audio_and_no_more_than_asked(synthesizer, frames):
    hop = synthesizer.codec.samples_per_frame
    assert hop == 960  # 24 kHz at 25 frames a second
    speech = asyncio.run(synthesizer.generate(synthesizer.plan_plain(TEXT, None), greedy(frames)))
    assert 0 < len(speech.samples) <= frames * hop
    assert speech.finish_reason == "length" and len(speech.samples) == frames * hop
    assert speech.completion_tokens == frames + 8  # the all-begin frame and the 7 of the delay ramp


@pytest.mark.parametrize("frames", [1, 8])
def test_a_stream_carries_the_same_audio(synthesizer, frames):
    stream = synthesizer.stream(synthesizer.plan_plain(TEXT, None), greedy(frames))

    async def collect():
        return [piece async for piece in stream]

    pieces = asyncio.run(collect())
    assert sum(len(piece) for piece in pieces) == frames * synthesizer.codec.samples_per_frame
    assert stream.speech.completion_tokens == frames + 8


def test_each_chunk_of_a_long_text_gets_its_frames(tiny_model, tmp_path):
    synth = Synthesizer(tiny_model.loaded, VoiceStore(CATALOG_PATH, tmp_path / "p", tmp_path / "v"),
                        Settings(device="cpu", long_form_chunk_chars=40))
    try:
        plan = synth.plan_plain("The first sentence is here. And the second one follows it.", None)
        speech = asyncio.run(synth.generate(plan, greedy(3)))
    finally:
        synth.close()
    assert len(plan.chunks) == 2 and [codes.shape[1] for _, codes in plan.spoken] == [3, 3]
    assert len(speech.samples) == 2 * 3 * 960


def test_audio_that_ends_by_itself_counts_its_closing_frame(synthesizer):
    results, original = [], synthesizer.finish_chunk

    def recording(plan, result):
        results.append(result)
        original(plan, result)

    synthesizer.finish_chunk = recording
    try:
        # Sampled tiny-random ends its audio within these frames for this seed.
        speech = asyncio.run(synthesizer.generate(synthesizer.plan_plain("Hi.", None),
                                                  Sampling(temperature=0.95, top_p=1.0, top_k=0, max_new_tokens=300,
                                                           seed=1)))
    finally:
        del synthesizer.finish_chunk
    assert speech.finish_reason == "stop"
    assert speech.completion_tokens == len(speech.samples) // 960 + 9 == results[0].steps
