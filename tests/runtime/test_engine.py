"""The generation engine: parity with transformers' generate(), independence from batch neighbours,
stop rules, RAS, limits, back-pressure and cancellation."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch
from transformers import GenerationConfig

from higgs_runtime import prompts
from higgs_runtime.engine.delay_pattern import add_delay_pattern, undo_delay_pattern
from higgs_runtime.engine.requests import GenerationRequest, QueueFull
from higgs_runtime.engine.sampling import RepetitionAware, SamplingParams, SlotSampler, top_k_bucket
from higgs_runtime.engine.scheduler import Scheduler

BOS, EOS = 1024, 1025
NO_GUARD = 10**9


@pytest.fixture(scope="module")
def scheduler(tiny_model):
    engine = Scheduler(tiny_model.model, max_batch_size=8, max_queue_size=32, max_seq_len=2048)
    engine.start()
    yield engine
    engine.stop()


def mode_prompts(tiny_model, clips) -> dict[str, prompts.Prompt]:
    codes = [tiny_model.codec_wrapper.encode(clip) for clip in clips]
    dialogue = "[SPEAKER0] Hi! How are you today?\n[SPEAKER1] I'm well, thanks for asking!"
    conversations = {
        "plain": (prompts.plain_messages("Hello, world!", None), []),
        "plain_scene": (prompts.plain_messages("Hello, world!", "A quiet room."), []),
        "clone": (prompts.clone_messages("This is the cloned voice.", "Maintaining your ability.", None), codes[:1]),
        "multi_no_voices": (prompts.multi_speaker_messages(dialogue, "A cafe.", []), []),
        "multi_voices": (prompts.multi_speaker_messages(dialogue, None, [None, None]), codes),
    }
    return {name: prompts.tokenize(messages, clip_codes, tiny_model.tokenizer, tiny_model.config)
            for name, (messages, clip_codes) in conversations.items()}


def request(prompt, temperature=0.0, seed=0, max_new_frames=60, guard_frames=NO_GUARD, **sampling):
    return GenerationRequest(prompt, SamplingParams(temperature=temperature, seed=seed, **sampling),
                             max_new_frames, guard_frames, timeout_s=120)


@pytest.fixture(scope="module")
def greedy_scheduler(tiny_model):
    """Without RAS, greedy decoding is deterministic: generate() draws RAS redraws from torch's global
    generator, the engine from each request's counter-based stream, so only RAS-free runs can match
    token for token."""
    engine = Scheduler(tiny_model.model, max_batch_size=8, max_queue_size=32, max_seq_len=2048,
                       ras=RepetitionAware(window=0))
    engine.start()
    yield engine
    engine.stop()


def reference_generate(model, prompt, max_new_tokens, do_sample=False, seed=0, ras=True, **sampling) -> np.ndarray:
    """transformers' own generate(): the frames after the all-begin frame, before the all-end frame."""
    ids = torch.tensor([prompt.input_ids])
    kwargs = {}
    if len(prompt.audio_frames):
        audio = torch.from_numpy(prompt.audio_frames)[None]
        kwargs = {"audio_input_ids": audio, "audio_input_ids_mask": torch.ones(audio.shape[:2], dtype=torch.bool)}
    config = GenerationConfig(do_sample=do_sample, max_new_tokens=max_new_tokens, eos_token_id=128009,
                              pad_token_id=128001, ras_win_len=7 if ras else None, ras_win_max_num_repeat=2, **sampling)
    torch.manual_seed(seed)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config, **kwargs)
    frames = out[0, len(prompt.audio_frames):].numpy()
    assert (frames[0] == BOS).all()
    ended = np.flatnonzero((frames == EOS).all(axis=1))
    return frames[1: ended[0] if len(ended) else len(frames)]


@pytest.mark.parametrize("mode", ["plain", "plain_scene", "clone", "multi_no_voices", "multi_voices"])
def test_greedy_output_equals_transformers_generate(tiny_model, reference_clips, greedy_scheduler, mode):
    prompt = mode_prompts(tiny_model, reference_clips)[mode]
    expected = reference_generate(tiny_model.model, prompt, max_new_tokens=60, ras=False)
    result = greedy_scheduler.submit(request(prompt, max_new_frames=60)).result(120)
    assert np.array_equal(result.frames, expected), mode


def test_output_does_not_depend_on_batch_neighbours(tiny_model, reference_clips, scheduler):
    all_prompts = list(mode_prompts(tiny_model, reference_clips).values())
    requests = [request(all_prompts[i % len(all_prompts)], temperature=0.0 if i % 2 else 0.9, seed=i, top_k=40)
                for i in range(8)]
    together = [scheduler.submit(r) for r in requests]
    together = [handle.result(120) for handle in together]
    alone = [scheduler.submit(r).result(120) for r in requests]
    for crowded, single in zip(together, alone):
        assert np.array_equal(crowded.frames, single.frames)
        assert crowded.finish_reason == single.finish_reason


def test_identical_prompts_finishing_at_different_times(tiny_model, reference_clips, scheduler):
    """Requests sharing one prompt (a popular voice) leave the batch one by one without confusion."""
    prompt = mode_prompts(tiny_model, reference_clips)["clone"]
    copies = [prompts.Prompt(list(prompt.input_ids), prompt.audio_frames.copy()) for _ in range(6)]  # as the API builds them
    lengths = [45 - 5 * i for i in range(6)]  # the last submitted finishes first
    handles = [scheduler.submit(request(copy, temperature=0.9, seed=i, max_new_frames=length, ignore_stream_end=True))
               for i, (copy, length) in enumerate(zip(copies, lengths))]
    results = [handle.result(60) for handle in handles]
    assert [r.finish_reason for r in results] == ["length"] * 6
    assert [r.steps for r in results] == lengths


def test_generation_stops_at_max_new_frames(tiny_model, reference_clips, scheduler):
    prompt = mode_prompts(tiny_model, reference_clips)["plain"]
    result = scheduler.submit(request(prompt, max_new_frames=10, ignore_stream_end=True)).result(60)
    assert result.finish_reason == "length" and result.steps == 10 and len(result.frames) == 9


def test_runaway_guard_cuts_audio_that_does_not_end(tiny_model, reference_clips, scheduler):
    prompt = mode_prompts(tiny_model, reference_clips)["plain"]
    result = scheduler.submit(request(prompt, max_new_frames=500, guard_frames=25, ignore_stream_end=True)).result(60)
    assert result.finish_reason == "guard" and result.steps == 25


def test_a_full_cache_slot_ends_the_request(tiny_model):
    prompt = prompts.tokenize(prompts.plain_messages("hi", None), [], tiny_model.tokenizer, tiny_model.config)
    engine = Scheduler(tiny_model.model, max_batch_size=2, max_queue_size=2, max_seq_len=prompt.num_tokens + 20)
    engine.start()
    try:
        result = engine.submit(request(prompt, max_new_frames=500, ignore_stream_end=True)).result(60)
    finally:
        engine.stop()
    assert result.finish_reason == "length" and result.steps == 20


def test_admission_counts_free_slots_and_never_refuses_a_follow_up(tiny_model):
    engine = Scheduler(tiny_model.model, max_batch_size=1, max_queue_size=2, max_seq_len=512)  # not started
    prompt = prompts.tokenize(prompts.plain_messages("hi", None), [], tiny_model.tokenizer, tiny_model.config)
    for _ in range(1 + 2):  # the free slot, then the queue
        engine.submit(request(prompt))
    with pytest.raises(QueueFull, match="busy"):
        engine.submit(request(prompt))
    assert not engine.submit(request(prompt), follow_up=True).done


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_cancel_frees_the_slot_within_a_step(tiny_model, reference_clips, scheduler):
    prompt = mode_prompts(tiny_model, reference_clips)["plain"]
    handle = scheduler.submit(request(prompt, max_new_frames=1500, ignore_stream_end=True))
    wait_for(lambda: len(handle.snapshot()[0]) >= 3)
    handle.cancel()
    result = handle.result(5)
    assert result.finish_reason == "cancelled"
    wait_for(lambda: scheduler.running_count == 0 and len(scheduler._free_slots) == 8)


def test_an_abandoned_async_consumer_cancels_its_request(tiny_model, reference_clips, scheduler):
    """What a client disconnect does: the task awaiting the request is cancelled."""
    prompt = mode_prompts(tiny_model, reference_clips)["plain"]

    async def consume_then_disconnect():
        handle = scheduler.submit(request(prompt, max_new_frames=1500, ignore_stream_end=True))
        task = asyncio.ensure_future(_wait_and_cancel_on_exit(handle))
        while len(handle.snapshot()[0]) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return handle

    handle = asyncio.run(consume_then_disconnect())
    assert handle.result(5).finish_reason == "cancelled"
    wait_for(lambda: scheduler.running_count == 0)


async def _wait_and_cancel_on_exit(handle):
    try:
        return await handle.wait()
    finally:
        handle.cancel()


# --- sampler rules on crafted logits -----------------------------------------------------------------

class OneRequest:
    """Drives the batch sampler with a single request, as the scheduler does at batch size one."""

    def __init__(self, temperature=0.0, ras_window=0, seed=0, top_k=0, top_p=1.0):
        self.sampler = SlotSampler(1, 8, 1026, BOS, EOS, RepetitionAware(window=ras_window), torch.device("cpu"))
        params = SamplingParams(temperature=temperature, seed=seed, top_k=top_k, top_p=top_p)
        self.sampler.start(0, params, torch.zeros((0, 8), dtype=torch.long))
        self.top_k = top_k_bucket([top_k], 1026)

    def next_frame(self, logits):
        return self.sampler.next_frames(torch.tensor([0]), logits[None], self.top_k)[0]


def favouring(code: int, strength: float = 5.0) -> torch.Tensor:
    logits = torch.zeros(8, 1026)
    logits[:, code] = strength
    return logits


def test_stream_begins_with_the_delay_ramp():
    s = OneRequest()
    frames = [s.next_frame(favouring(5)).tolist() for _ in range(10)]
    assert frames[0] == [BOS] * 8
    for step in range(1, 9):
        assert frames[step] == [5] * step + [BOS] * (8 - step)
    assert frames[9] == [5] * 8


def test_stream_ends_one_codebook_per_step_after_the_first_end():
    s = OneRequest()
    for _ in range(10):
        s.next_frame(favouring(5))
    ending = favouring(5)
    ending[0, EOS] = 10.0  # codebook 0 chooses to end
    first = s.next_frame(ending)
    assert first[0] == EOS and (first[1:] == 5).all()
    later = [s.next_frame(favouring(5)).tolist() for _ in range(8)]
    for step, frame in enumerate(later, start=1):
        assert frame[:step] == [EOS] * step, (step, frame)
    assert later[-1] == [EOS] * 8


def test_repetition_aware_sampling_breaks_loops():
    looping = favouring(7, strength=3.0)
    plain, ras = OneRequest(), OneRequest(ras_window=7, seed=1)
    plain_frames = torch.stack([plain.next_frame(looping) for _ in range(60)])[9:]
    ras_frames = torch.stack([ras.next_frame(looping) for _ in range(60)])[9:]
    assert (plain_frames == 7).all()
    for window_start in range(len(ras_frames) - 7):
        window = ras_frames[window_start:window_start + 7]
        assert ((window == 7).sum(0) <= 3).all()


def test_top_k_one_is_greedy_and_top_p_keeps_the_nucleus():
    logits = torch.randn(8, 1026, generator=torch.Generator().manual_seed(0))
    logits[:, 1024:] = -torch.inf
    greedy = OneRequest(temperature=0.0)
    sharp = OneRequest(temperature=1.5, seed=3, top_k=1)
    for _ in range(9):  # past the begin ramp
        greedy.next_frame(logits), sharp.next_frame(logits)
    assert torch.equal(greedy.next_frame(logits), sharp.next_frame(logits))
    nucleus = OneRequest(temperature=1.0, seed=4, top_p=0.2)
    probs = logits.softmax(-1)
    for _ in range(9):
        nucleus.next_frame(logits)
    for _ in range(20):
        frame = nucleus.next_frame(logits)
        for codebook, code in enumerate(frame.tolist()):
            more_likely = probs[codebook][probs[codebook] > probs[codebook, code]].sum()
            assert more_likely < 0.2


def test_delay_pattern_round_trip():
    codes = np.arange(8 * 5).reshape(8, 5) % 1024
    frames = add_delay_pattern(codes, BOS, EOS)
    assert frames.shape == (5 + 2 + 7, 8)
    assert (frames[0] == BOS).all() and (frames[-1] == EOS).all()
    generated = frames[1:-1]  # what the model emits between the all-begin and all-end frames
    assert np.array_equal(undo_delay_pattern(generated), codes)
