"""The streaming primitive: chunks as frames are produced, equal to the one-shot decode."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from higgs_runtime.config import Settings
from higgs_runtime.speech import Sampling, Synthesizer
from higgs_runtime.streaming import StreamingConfig, StreamingDecoder
from higgs_runtime.voices import CATALOG_PATH, VoiceStore

# Concatenated chunks match the one-shot decode to this many times the audio's peak (float rounding).
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def synthesizer(tiny_model, tmp_path_factory):
    data = tmp_path_factory.mktemp("stream-data")
    voices = VoiceStore(CATALOG_PATH, data / "presets", data / "voices")
    synth = Synthesizer(tiny_model.loaded, voices, Settings(device="cpu", runaway_guard_multiple=0))
    yield synth
    synth.close()


async def collect(stream):
    chunks, arrival = [], []
    started = time.monotonic()
    async for chunk in stream:
        chunks.append(chunk)
        arrival.append(time.monotonic() - started)
    return chunks, arrival, time.monotonic() - started


@pytest.mark.parametrize("temperature,seed", [(0.0, 0), (0.9, 5)])
def test_streamed_audio_equals_the_one_shot_audio(synthesizer, temperature, seed):
    text = "Streaming should sound the same as one shot."
    sampling = Sampling(temperature=temperature, top_p=0.95, top_k=50, max_new_tokens=150, seed=seed)
    one_shot = asyncio.run(synthesizer.generate(synthesizer.plan_plain(text, None), sampling))
    stream = synthesizer.stream(synthesizer.plan_plain(text, None), sampling)
    chunks, _, _ = asyncio.run(collect(stream))
    streamed = np.concatenate(chunks)
    assert len(chunks) >= 3
    assert stream.speech.finish_reason == one_shot.finish_reason
    assert len(streamed) == len(one_shot.samples)
    peak = np.abs(one_shot.samples).max()
    assert np.abs(streamed - one_shot.samples).max() <= TOLERANCE * peak


def test_first_chunk_comes_early_and_is_short(synthesizer):
    text = "An early first chunk."
    sampling = next(candidate for candidate in (Sampling(0.7, 0.95, 50, 300, seed) for seed in range(50))
                    if asyncio.run(synthesizer.generate(synthesizer.plan_plain(text, None), candidate)).finish_reason
                    == "length")
    stream = synthesizer.stream(synthesizer.plan_plain(text, None), sampling)
    chunks, arrival, total = asyncio.run(collect(stream))
    assert stream.speech.finish_reason == "length"
    config = StreamingConfig()
    assert len(chunks[0]) == config.first_chunk_frames * 960
    assert all(len(chunk) == config.chunk_frames * 960 for chunk in chunks[1:-1])
    assert arrival[0] < 0.3 * total


def test_decoder_with_no_frames_yields_nothing(tiny_model):
    decoder = StreamingDecoder(tiny_model.codec_wrapper, 8)
    assert len(decoder.finish()) == 0


def test_concurrent_streams_are_decoded_in_shared_batches_and_equal_their_one_shot_audio(synthesizer):
    text = "Several listeners at once, one codec call per round."
    samplings = [Sampling(temperature=0.9, top_p=0.95, top_k=50, max_new_tokens=120, seed=seed) for seed in range(6)]
    one_shots = [asyncio.run(synthesizer.generate(synthesizer.plan_plain(text, None), s)).samples for s in samplings]
    decoder = synthesizer.audio_decoder
    rounds, clips = decoder.rounds, decoder.clips

    async def all_streams():
        return await asyncio.gather(*(collect(synthesizer.stream(synthesizer.plan_plain(text, None), s))
                                      for s in samplings))

    results = asyncio.run(all_streams())
    assert decoder.clips - clips >= 6 * 3
    assert decoder.rounds - rounds < decoder.clips - clips  # some rounds decoded several streams' chunks
    for (chunks, _, _), one_shot in zip(results, one_shots):
        streamed = np.concatenate(chunks)
        assert len(streamed) == len(one_shot)
        assert np.abs(streamed - one_shot).max() <= TOLERANCE * np.abs(one_shot).max()


def test_a_padded_batch_keeps_each_windows_samples(tiny_model):
    """Windows of different lengths decoded together equal lone decodes where the streaming decoder
    keeps samples (all but the lookahead at the end)."""
    codec = tiny_model.codec_wrapper
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 1024, (8, length)) for length in (22, 37, 14)]
    batched = codec.decode_batch(clips)
    lookahead = StreamingConfig().lookahead_frames * 960
    for clip, audio in zip(clips, batched):
        alone = codec.decode(clip)
        assert len(audio) == len(alone)
        kept = slice(0, len(alone) - lookahead)
        assert np.abs(audio[kept] - alone[kept]).max() <= TOLERANCE * np.abs(alone).max()
