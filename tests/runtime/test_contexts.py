"""Kept contexts: a generation's KV kept for the next turn, continued as far as the next prompt agrees
with it, and released by its owner, by idling, or to make room."""

from __future__ import annotations

import time

import numpy as np
import torch

from higgs_runtime import prompts
from higgs_runtime.engine.contexts import AUDIO_POSITION, Sequence
from higgs_runtime.engine.delay_pattern import undo_delay_pattern
from higgs_runtime.engine.kv_cache import PagedKVCache
from higgs_runtime.engine.paged_attention import BLOCK_SIZE, blocks_for
from higgs_runtime.engine.requests import GenerationRequest
from higgs_runtime.engine.sampling import SamplingParams
from test_paged_engine import plain_prompt, running_engine

FIRST, SECOND = "The first sentence is spoken here.", "And then the second one follows it."


def greedy(prompt, frames, context=None, keep_context=False):
    return GenerationRequest(prompt, SamplingParams(temperature=0.0, top_p=1.0, top_k=0, seed=1, ignore_stream_end=True),
                             frames, guard_frames=10 ** 9, timeout_s=120, context=context, keep_context=keep_context)


def second_turn(tiny_model, first_codes: np.ndarray) -> prompts.Prompt:
    """The conversation whole: the first sentence and its audio, then the second sentence to say."""
    messages = prompts.with_history(prompts.plain_messages(SECOND, None), [FIRST])
    return prompts.tokenize(messages, [first_codes], tiny_model.tokenizer, tiny_model.config)


def test_common_prefix_compares_ids_and_the_frames_at_audio_positions():
    frames = np.arange(5 * 8).reshape(5, 8)
    base = Sequence(np.array([7, 8, AUDIO_POSITION, AUDIO_POSITION, 9, AUDIO_POSITION]), frames[:3])
    assert base.common_prefix(base) == 6
    assert base.common_prefix(Sequence(np.array([7, 8, AUDIO_POSITION]), frames[:1])) == 3
    assert base.common_prefix(Sequence(np.array([7, 5, AUDIO_POSITION]), frames[:1])) == 1
    other = frames[:3].copy()
    other[1, 4] = -7
    assert base.common_prefix(Sequence(base.ids, other)) == 3  # the second audio position differs
    assert base.extended([frames[3]]).common_prefix(base.truncated(4).extended([frames[2], frames[3]])) == 4


def test_a_barged_in_turn_continues_from_the_audio_that_was_kept(tiny_model):
    """A turn stopped half-way keeps its KV; the next turn names the audio kept (its first frames), reuses
    exactly the positions that agree, and speaks as the same conversation computed whole."""
    first = plain_prompt(tiny_model, FIRST)
    with running_engine(tiny_model.model, max_batch_size=2, max_queue_size=2, max_seq_len=1024) as engine:
        handle = engine.submit(greedy(first, 200, keep_context=True))
        while handle.steps < 30:
            time.sleep(0.002)
        handle.cancel()
        stopped = handle.result(30)
        assert stopped.finish_reason == "cancelled" and stopped.context is not None
        assert engine.load.kept_contexts == 1
        kept_frames = 12  # the audio "sent" before the barge-in
        codes = undo_delay_pattern(stopped.frames)[:, :kept_frames]
        prompt = second_turn(tiny_model, codes)
        continued = engine.submit(greedy(prompt, 40, context=stopped.context)).result(60)
        whole = engine.submit(greedy(prompt, 40)).result(60)
        assert engine.load.kept_contexts == 0 and engine.load.kv_blocks_used == engine.load.prefix_cached_blocks
    # Reused: the first prompt and the begin frame plus the kept audio frames; the end marker onwards is new.
    assert continued.prefill_tokens == prompt.num_tokens - (first.num_tokens + 1 + kept_frames)
    assert np.array_equal(continued.frames, whole.frames)


def test_a_kept_context_holds_its_blocks_until_released_or_idle(tiny_model):
    prompt = plain_prompt(tiny_model, FIRST)
    with running_engine(tiny_model.model, max_batch_size=1, max_queue_size=1, max_seq_len=1024,
                        prefix_cache_tokens=0, context_idle_s=0.3) as engine:
        kept = engine.submit(greedy(prompt, 20, keep_context=True)).result(60).context
        assert engine.load.kept_contexts == 1
        assert engine.load.kv_blocks_used == blocks_for(prompt.num_tokens + 20 - 1) == len(kept.blocks)
        engine.release(kept)
        wait_until(lambda: engine.load.kv_blocks_used == 0)
        assert kept.released and engine.load.kept_contexts == 0
        idle = engine.submit(greedy(prompt, 20, keep_context=True)).result(60).context
        wait_until(lambda: idle.released)  # nobody released it: it idled past the limit
        assert engine.load.kv_blocks_used == 0


def test_an_idle_context_makes_room_for_a_waiting_request(tiny_model):
    prompt = plain_prompt(tiny_model, FIRST)
    tokens = blocks_for(prompt.num_tokens + 100) * BLOCK_SIZE
    with running_engine(tiny_model.model, max_batch_size=2, max_queue_size=2, max_seq_len=tokens,
                        kv_cache_tokens=tokens, prefix_cache_tokens=0) as engine:
        kept = engine.submit(greedy(prompt, 100, keep_context=True)).result(60).context
        other = engine.submit(greedy(prompt, 100)).result(60)  # needs every block: the idle context gave way
        assert other.finish_reason == "length" and kept.released
        fresh = engine.submit(greedy(prompt, 10, context=kept)).result(60)
    assert fresh.prefill_tokens == prompt.num_tokens  # its context gone, the prompt was computed afresh


def test_writing_resumes_only_in_a_block_that_is_the_holders_own(tiny_model):
    cache = PagedKVCache(tiny_model.config, num_slots=2, max_len=256, budget_tokens=1024, device=torch.device("cpu"),
                         dtype=torch.float32)
    cache.reserve(0, 130)
    cache.ensure(0, 130)
    blocks = cache.detach(0)
    assert cache.reusable(blocks, 100) == 100  # its own, unnamed block: writing from position 100 is fine
    cache.prefixes.add(b"named", blocks[1])
    assert cache.reusable(blocks, 100) == 64  # a named prefix block is read-only: computed again from 64
    assert cache.reusable(blocks, 128) == 128
    cache.reserve(1, 130, adopted=2)
    cache.adopt(1, blocks, 100)
    assert cache.blocks_used == 2 and cache.block_table[1, :2].tolist() == blocks[:2]


def wait_until(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)
