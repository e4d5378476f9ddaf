"""Long-form text: chunked generation with earlier chunks' audio as context and one voice throughout."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from higgs_runtime import prompts
from higgs_runtime.config import Settings
from higgs_runtime.engine.requests import GenerationRequest
from higgs_runtime.engine.sampling import SamplingParams
from higgs_runtime.speech import Sampling, Synthesizer
from higgs_runtime.voices import CATALOG_PATH, VoiceStore

SCRIPT = ("The first paragraph sets the scene. It is calm and short.\n\n"
          "The second paragraph moves the story along. Something happens here.\n\n"
          "The third paragraph closes the story. Everyone goes home.\n\n"
          "A fourth paragraph adds an epilogue, because long scripts have them.")
SAMPLING = Sampling(temperature=0.8, top_p=0.95, top_k=50, max_new_tokens=40, seed=9)


@pytest.fixture(scope="module")
def synthesizer(tiny_model, tmp_path_factory):
    data = tmp_path_factory.mktemp("long-form-data")
    voices = VoiceStore(CATALOG_PATH, data / "presets", data / "voices")
    settings = Settings(device="cpu", long_form_chunk_chars=70, long_form_context_chunks=2)
    synth = Synthesizer(tiny_model.loaded, voices, settings)
    yield synth
    synth.close()


def test_script_is_split_and_generated_chunk_by_chunk(synthesizer):
    plan = synthesizer.plan_plain(SCRIPT, None)
    assert len(plan.chunks) == 4 and all(len(chunk) <= 70 for chunk in plan.chunks)
    speech = asyncio.run(synthesizer.generate(plan, SAMPLING))
    assert len(plan.spoken) == 4
    assert len(speech.samples) == sum(codes.shape[1] for _, codes in plan.spoken) * 960
    assert speech.completion_tokens <= 4 * (40 + 8)
    # Each chunk continued the one before: only its own turn was computed.
    assert speech.prefill_tokens < speech.prompt_tokens / 2
    assert plan.context is None and wait_for_no_kept_context(synthesizer)


def wait_for_no_kept_context(synthesizer, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while synthesizer.scheduler.load.kept_contexts and time.monotonic() < deadline:
        time.sleep(0.02)
    return synthesizer.scheduler.load.kept_contexts == 0


def user_texts(messages: list[dict]) -> list[str]:
    return [m["content"][0]["text"] for m in messages if m["role"] == "user"]


def test_first_chunk_becomes_the_voice_and_earlier_chunks_stay_in_context(synthesizer):
    plan = synthesizer.plan_plain(SCRIPT, "A quiet study.")
    asyncio.run(synthesizer.generate(plan, SAMPLING))
    turns, _ = plan.history(3)
    messages, codes = plan.messages_and_codes(3, turns)
    roles = [message["role"] for message in messages]
    # system, scene, then chunk 0 as the reference voice, chunks 1 and 2 as context, chunk 3 to say.
    assert roles == ["system", "scene", "user", "assistant", "user", "assistant", "user", "assistant", "user"]
    assert user_texts(messages) == plan.chunks[:4]
    assert len(codes) == 3
    for (_, spoken), used in zip(plan.spoken[:3], codes):
        assert np.array_equal(spoken, used)


def test_the_context_grows_until_the_audio_would_not_fit_then_is_rebased_once(tiny_model, synthesizer, tmp_path):
    script = " ".join(f"Sentence {i} is here to make the text long enough." for i in range(8))
    plan = synthesizer.plan_clone(script, None, reference_audio=np.zeros(24000, dtype=np.float32) + 0.01,
                                  reference_text="A reference.")
    asyncio.run(synthesizer.generate(plan, SAMPLING))
    turns = len(plan.chunks) - 1
    full = synthesizer._tokenize(plan, turns, plan.history(turns)[0], 10 ** 6).num_tokens
    tight = Synthesizer(tiny_model.loaded, VoiceStore(CATALOG_PATH, tmp_path / "p", tmp_path / "v"),
                        Settings(device="cpu", long_form_chunk_chars=70, long_form_context_chunks=2,
                                 max_seq_len=full - 30 + SAMPLING.max_new_tokens))
    try:
        replan = tight.plan_clone(script, None, reference_audio=np.zeros(24000, dtype=np.float32) + 0.01,
                                  reference_text="A reference.")
        speech = asyncio.run(tight.generate(replan, SAMPLING))
    finally:
        tight.close()
    rebase = replan.history_start
    assert 0 < rebase < turns  # re-based once on the way: the later chunks kept growing from there
    messages, _ = replan.messages_and_codes(turns, replan.history(turns)[0])
    assert user_texts(messages) == ["A reference.", *replan.chunks[rebase:turns + 1]]
    assert speech.prefill_tokens < speech.prompt_tokens


def test_a_later_chunk_hears_fewer_earlier_chunks_rather_than_fail(tiny_model, synthesizer, tmp_path):
    plan = synthesizer.plan_plain(SCRIPT, None)
    asyncio.run(synthesizer.generate(plan, SAMPLING))
    full = synthesizer._tokenize(plan, 3, plan.history(3, rebased=True)[0], 10 ** 6).num_tokens
    alone = synthesizer._tokenize(plan, 3, plan.history(3, rebased=True, dropped=3)[0], 10 ** 6).num_tokens
    tight = Synthesizer(tiny_model.loaded, VoiceStore(CATALOG_PATH, tmp_path / "p", tmp_path / "v"),
                        Settings(device="cpu", long_form_chunk_chars=70, max_seq_len=alone + 1 + (full - alone) // 2))
    try:
        prompt = tight._prompt(plan, 3)  # the re-based context does not fit this limit either
    finally:
        tight.close()
    assert alone < prompt.num_tokens < full
    messages, _ = plan.messages_and_codes(3, plan.history(3, rebased=True, dropped=1)[0])
    # the oldest recent chunk left out, the voice kept
    assert user_texts(messages) == [plan.chunks[0], plan.chunks[2], plan.chunks[3]]


def generate_recording(synthesizer, plan, sampling) -> list:
    """Generates the plan; each chunk's engine result."""
    results = []
    original = synthesizer.finish_chunk

    def recording(plan, result):
        results.append(result)
        original(plan, result)

    synthesizer.finish_chunk = recording
    try:
        asyncio.run(synthesizer.generate(plan, sampling))
    finally:
        del synthesizer.finish_chunk
    return results


def assert_only_new_turns_computed(synthesizer, plan, results) -> list:
    """Each later chunk computed only its own turn: the conversation records the previous chunk's audio
    as the model read it (short of the delay pattern's tail after a length limit). Returns each later
    chunk's whole prompt."""
    prompts = []
    for index in range(1, len(plan.chunks)):
        prompt = synthesizer._tokenize(plan, index, plan.history(index)[0], 10 ** 6)
        assert results[index].prompt_tokens == prompt.num_tokens
        new_turn = prompt.num_tokens - results[index - 1].context.length
        tail = 0 if results[index - 1].finish_reason == "stop" else synthesizer.loaded.config.num_codebooks
        assert new_turn <= results[index].prefill_tokens <= new_turn + tail, f"chunk {index}"
        prompts.append(prompt)
    return prompts


def test_a_continued_chunk_speaks_as_its_conversation_computed_whole(synthesizer):
    """Greedy codes of chunks that continued the previous chunk's KV equal those of the same prompt
    prefilled the usual way (from nothing but the prefix cache), bit for bit on CPU; and a continued
    chunk computes only its own turn."""
    greedy = Sampling(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=40, seed=3)
    plan = synthesizer.plan_plain(SCRIPT, "A quiet study.")
    results = generate_recording(synthesizer, plan, greedy)
    for index, prompt in enumerate(assert_only_new_turns_computed(synthesizer, plan, results), start=1):
        whole = synthesizer.scheduler.submit(GenerationRequest(
            prompt=prompt, sampling=SamplingParams(temperature=0.0, top_p=1.0, top_k=0, seed=3 + index),
            max_new_frames=synthesizer.engine_steps(greedy), guard_frames=10 ** 6, timeout_s=60)).result(60)
        assert whole.prefill_tokens > results[index].prefill_tokens
        assert np.array_equal(whole.frames, results[index].frames), f"chunk {index}"


def test_stream_markers_inside_a_chunk_do_not_cost_its_continuation(synthesizer):
    """A codebook may emit a stream marker while the others still speak (random weights often do): the
    next chunk's prompt holds it as the model read it, so the continued context agrees to its end."""
    plan = synthesizer.plan_plain(SCRIPT, None)
    results = generate_recording(synthesizer, plan, Sampling(0.7, 0.95, 50, max_new_tokens=60, seed=5))
    codebook_size = synthesizer.codec.codebook_size
    assert any((codes[:, :-1] >= codebook_size).any() for _, codes in plan.spoken[:-1])  # the case is here
    assert_only_new_turns_computed(synthesizer, plan, results)


def test_long_script_streams_chunk_after_chunk(synthesizer):
    stream = synthesizer.stream(synthesizer.plan_plain(SCRIPT, None), SAMPLING)

    async def collect():
        return [chunk async for chunk in stream]

    pieces = asyncio.run(collect())
    assert stream.speech.prompt_tokens > 0
    assert sum(len(piece) for piece in pieces) == round(stream.speech.audio_seconds * 24000)
    assert len(pieces) >= 4


def test_the_next_chunk_is_queued_before_the_tail_is_sent_and_cancelled_if_the_client_leaves(synthesizer):
    """The engine prefills chunk 2 while chunk 1's last audio is decoded and sent; a client that
    leaves at that moment leaves nothing generating."""
    plan = synthesizer.plan_plain(SCRIPT, None)
    submitted = []
    original = synthesizer.submit_chunk

    def recording(plan, index, sampling):
        handle = original(plan, index, sampling)
        if index:
            submitted.append(handle)
        return handle

    synthesizer.submit_chunk = recording
    try:
        stream = synthesizer.stream(plan, Sampling(temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=2000, seed=1))

        async def leave_at_the_first_boundary():
            chunks = stream.__aiter__()
            async for _ in chunks:
                if submitted:  # the first yield after chunk 2 was queued: chunk 1's tail
                    assert len(plan.spoken) == 1 and stream.samples_sent == plan.spoken[0][1].shape[1] * 960
                    await chunks.aclose()
                    return submitted[0]

        follow_up = asyncio.run(leave_at_the_first_boundary())
    finally:
        del synthesizer.submit_chunk
    assert follow_up.result(30).finish_reason == "cancelled"
    load = synthesizer.scheduler.load
    assert load.running == 0 and load.queue_depth == 0
    assert wait_for_no_kept_context(synthesizer)  # neither chunk 1's context nor chunk 2's stays behind
