"""The paged KV engine: attention over live blocks only, KV admission, and a capturable decode step."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from higgs_runtime import prompts
from higgs_runtime.engine.kv_cache import PagedKVCache
from higgs_runtime.engine.paged_attention import BLOCK_SIZE, blocks_for, paged_attention
from higgs_runtime.engine.requests import GenerationRequest, RequestTooLarge
from higgs_runtime.engine.sampling import RepetitionAware, SamplingParams, top_k_bucket
from higgs_runtime.engine.scheduler import Scheduler
from higgs_runtime.engine.step_kernels import TorchKernels, TritonKernels
from transformers import HiggsAudioV2Config

MAX_LEN = 1024


def dense_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """One row, the textbook way in float64: query (heads, head_dim), keys/values (length, kv_heads, head_dim)."""
    group = query.shape[0] // keys.shape[1]
    keys, values = keys.double().repeat_interleave(group, 1), values.double().repeat_interleave(group, 1)
    weights = (torch.einsum("hd,lhd->hl", query.double(), keys) * scale).softmax(-1)
    return torch.einsum("hl,lhd->hd", weights, values)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_attention_equals_dense_attention_over_each_live_prefix(dtype, tolerance):
    config = HiggsAudioV2Config(num_hidden_layers=1, num_attention_heads=24, num_key_value_heads=8, head_dim=128)
    prefixes = [0, 1, 127, 128, 129, MAX_LEN - 1]  # cached positions before the new one
    cache = PagedKVCache(config, num_slots=len(prefixes), max_len=MAX_LEN, budget_tokens=len(prefixes) * MAX_LEN,
                         device=torch.device("cpu"), dtype=dtype)
    generator = torch.Generator().manual_seed(0)
    for pool in cache.keys + cache.values:
        pool.copy_(torch.randn(pool.shape, generator=generator))  # stale data everywhere, scratch block included
    for slot, prefix in enumerate(prefixes):
        assert cache.reserve(slot, prefix + 1)
        cache.ensure(slot, prefix + 1)
    slots = list(range(len(prefixes))) + [cache.scratch_slot] * 2  # two padding rows
    lengths = [prefix + 1 for prefix in prefixes] + [1, 1]
    live = cache.live_blocks(slots, lengths)
    assert live.count == sum(blocks_for(length) for length in lengths)  # live blocks only, never max_len
    query = torch.randn(len(slots), 24, 128, generator=generator).to(dtype)
    out = TorchKernels(torch.device("cpu")).attention(query, cache.keys[0], cache.values[0], None, torch.tensor(lengths),
                                                      live, 128 ** -0.5)
    assert torch.isfinite(out).all()
    for row, length in enumerate(lengths):
        blocks = cache.block_table[slots[row], :blocks_for(length)] if row < len(prefixes) else torch.tensor([0])
        row_keys = cache.keys[0][blocks].transpose(1, 2).reshape(-1, 8, 128)[:length]  # (positions, kv_heads, head_dim)
        row_values = cache.values[0][blocks].transpose(1, 2).reshape(-1, 8, 128)[:length]
        expected = dense_attention(query[row], row_keys, row_values, 128 ** -0.5)
        assert torch.allclose(out[row].double(), expected, atol=tolerance, rtol=tolerance), length


def test_a_rows_attention_is_bit_identical_whatever_its_neighbours():
    generator = torch.Generator().manual_seed(1)
    keys = torch.randn(40, 2, BLOCK_SIZE, 128, generator=generator)
    values = torch.randn(40, 2, BLOCK_SIZE, 128, generator=generator)
    query = torch.randn(4, 6, 128, generator=generator)
    lengths = [300, 1024, 5, 700]
    rows = torch.tensor([row for row, length in enumerate(lengths) for _ in range(blocks_for(length))])
    positions = torch.tensor([index for length in lengths for index in range(blocks_for(length))])
    alone = paged_attention(query[:1], keys[:5], values[:5], rows[:5], positions[:5], torch.tensor(lengths[:1]), 0.1)
    crowded = paged_attention(query, keys[:len(rows)], values[:len(rows)], rows, positions, torch.tensor(lengths), 0.1)
    assert torch.equal(alone, crowded[:1])


@contextlib.contextmanager
def running_engine(*args, **kwargs):
    engine = Scheduler(*args, **kwargs)
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()


def plain_prompt(tiny_model, text="Hello there, this is a test."):
    return prompts.tokenize(prompts.plain_messages(text, None), [], tiny_model.tokenizer, tiny_model.config)


def request(prompt, max_new_frames, temperature=0.8, seed=0):
    return GenerationRequest(prompt, SamplingParams(temperature=temperature, seed=seed, ignore_stream_end=True),
                             max_new_frames, guard_frames=10**9, timeout_s=120)


def test_a_request_waits_for_kv_blocks_instead_of_failing(tiny_model):
    prompt = plain_prompt(tiny_model)
    frames = 2 * BLOCK_SIZE
    needed = blocks_for(prompt.num_tokens + frames)
    # Room for one such request at a time, though two slots are free.
    with running_engine(tiny_model.model, max_batch_size=2, max_queue_size=2, max_seq_len=needed * BLOCK_SIZE,
                        kv_cache_tokens=needed * BLOCK_SIZE) as engine:
        first, second = engine.submit(request(prompt, frames, seed=1)), engine.submit(request(prompt, frames, seed=2))
        loads = []
        while not second.done:
            loads.append(engine.load)
            if second.steps:
                assert first.done, "the second request started before the first freed its blocks"
            time.sleep(0.002)
        results = [first.result(60), second.result(60)]
    assert [r.finish_reason for r in results] == ["length", "length"]
    assert [r.steps for r in results] == [frames, frames]
    assert max(load.running for load in loads) == 1
    assert max(load.kv_blocks_used for load in loads) == needed
    assert engine.load.kv_blocks_used == 0 and engine.load.kv_blocks_total == needed


def test_a_request_that_can_never_fit_is_refused_at_once(tiny_model):
    prompt = plain_prompt(tiny_model, "word " * 200)
    engine = Scheduler(tiny_model.model, max_batch_size=2, max_queue_size=2, max_seq_len=prompt.num_tokens)
    with pytest.raises(RequestTooLarge, match="tokens"):
        engine.submit(request(prompt, 10))


def test_blocks_follow_the_live_length(tiny_model):
    """A request takes blocks as it grows, not its whole reservation at once."""
    prompt = plain_prompt(tiny_model)
    with running_engine(tiny_model.model, max_batch_size=1, max_queue_size=1, max_seq_len=4096) as engine:
        handle = engine.submit(request(prompt, 1000))
        while handle.steps < 10:
            time.sleep(0.002)
        used_early = engine.load.kv_blocks_used
        handle.cancel()
        handle.result(30)
    assert used_early <= blocks_for(prompt.num_tokens + 20) < blocks_for(prompt.num_tokens + 1000)


def test_decode_step_compiles_as_one_graph_and_matches_eager(tiny_model):
    """No graph break anywhere in the step (model, paged attention, sampler): what CUDA graphs need.
    (aot_eager: inductor's CPU lowering wants oneDNN's prepacked weights frozen, which is beside the point.)"""
    engine = Scheduler(tiny_model.model, max_batch_size=4, max_queue_size=4, max_seq_len=512)  # not started
    prompt = plain_prompt(tiny_model)
    for index in range(3):
        engine.submit(request(prompt, 100, temperature=0.0 if index == 0 else 0.8, seed=index))
    engine._admit()
    engine._prefill_chunks()
    running = engine._running
    slots = torch.tensor([r.slot for r in running])
    for r in running:
        engine.batched.cache.ensure(r.slot, r.cached_tokens + 4)
    live = engine.batched.cache.live_blocks([r.slot for r in running], [r.cached_tokens + 4 for r in running])
    state = ([engine.step.last_frames, engine.batched.cache.lengths] + engine.batched.cache.keys +
             engine.batched.cache.values + [engine.sampler.draws, engine.sampler.window, engine.sampler.ending,
                                            engine.sampler.begin_countdown, engine.sampler.end_countdown])
    saved = [tensor.clone() for tensor in state]
    top_k = top_k_bucket([50], 1026)
    with torch.inference_mode():
        eager = [engine.step.eager(slots, live, top_k).clone() for _ in range(4)]
        for tensor, value in zip(state, saved):
            tensor.copy_(value)
        compiled_step = torch.compile(engine.step.eager, fullgraph=True, backend="aot_eager")
        compiled = [compiled_step(slots, live, top_k).clone() for _ in range(4)]
    for expected, got in zip(eager, compiled):
        assert torch.equal(expected, got)
    assert not np.array_equal(eager[0].numpy(), eager[1].numpy())  # the steps moved on


# --- chunked prefill and the prefix cache --------------------------------------------------------

def clone_prompt(tiny_model, reference_clips, text="This is the cloned voice.", seconds=None):
    clip = reference_clips[0] if seconds is None else np.tile(reference_clips[0], 20)[: int(seconds * 24000)]
    codes = tiny_model.codec_wrapper.encode(clip)
    messages = prompts.clone_messages(text, "Maintaining your ability.", None)
    return prompts.tokenize(messages, [codes], tiny_model.tokenizer, tiny_model.config)


def test_greedy_output_equals_generate_with_chunked_prefill_and_a_cached_prefix(tiny_model, reference_clips):
    from test_engine import reference_generate  # the shared generate() reference

    prompt = clone_prompt(tiny_model, reference_clips)
    expected = reference_generate(tiny_model.model, prompt, max_new_tokens=60, ras=False)
    with running_engine(tiny_model.model, max_batch_size=2, max_queue_size=2, max_seq_len=1024,
                        ras=RepetitionAware(window=0), prefill_chunk_tokens=64) as engine:
        greedy = GenerationRequest(prompt, SamplingParams(temperature=0.0), 60, 10**9, 60)
        uncached = engine.submit(greedy).result(60)
        hits_before = engine.load.prefix_hit_blocks
        cached = engine.submit(greedy).result(60)
        reused = engine.load.prefix_hit_blocks - hits_before
    assert prompt.num_tokens > 2 * 64  # three chunks
    assert reused == (prompt.num_tokens - 1) // 64
    assert np.array_equal(uncached.frames, expected) and np.array_equal(cached.frames, expected)


def test_a_cached_prefix_gives_the_same_sampled_audio(tiny_model, reference_clips):
    prompt = clone_prompt(tiny_model, reference_clips, seconds=8)
    with running_engine(tiny_model.model, max_batch_size=2, max_queue_size=2, max_seq_len=1024) as engine:
        first = engine.submit(request(prompt, 40, seed=7)).result(60)
        second = engine.submit(request(prompt, 40, seed=7)).result(60)
        other_text = clone_prompt(tiny_model, reference_clips, text="Another sentence entirely.", seconds=8)
        third = engine.submit(request(other_text, 40, seed=7)).result(60)
        load = engine.load
    assert np.array_equal(first.frames, second.frames)
    assert not np.array_equal(first.frames, third.frames)
    shared_chunks = (prompt.num_tokens - 1) // 128
    assert load.prefix_hit_blocks >= 2 * shared_chunks * 2  # the second and third request reused the voice
    assert load.prefix_cached_blocks > 0


def test_running_streams_keep_decoding_while_a_long_prompt_is_prefilled(tiny_model, reference_clips):
    long_prompt = clone_prompt(tiny_model, reference_clips, seconds=30)
    with running_engine(tiny_model.model, max_batch_size=2, max_queue_size=2, max_seq_len=2048,
                        prefill_chunk_tokens=64) as engine:
        stream = engine.submit(request(plain_prompt(tiny_model), 2000))
        while stream.steps < 5:
            time.sleep(0.002)
        arrival = engine.submit(request(long_prompt, 5))
        steps_at_arrival = stream.steps
        while not arrival.steps:
            time.sleep(0.001)
        steps_during_prefill = stream.steps - steps_at_arrival
        stream.cancel()
        arrival.result(60)
    chunks = -(-long_prompt.num_tokens // 64)
    assert long_prompt.num_tokens > 700 and steps_during_prefill >= chunks - 2


def test_idle_prefixes_are_bounded_and_evicted_least_recently_used():
    config = HiggsAudioV2Config(num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    cache = PagedKVCache(config, num_slots=1, max_len=256, budget_tokens=6 * BLOCK_SIZE, device=torch.device("cpu"),
                         dtype=torch.float32, prefix_cache_tokens=3 * BLOCK_SIZE)
    for voice in (b"a", b"b"):
        assert cache.reserve(0, 200)
        cache.share(0, cache.prefixes.match([voice + b"0", voice + b"1"]))
        cache.ensure(0, 200)
        cache.remember_prefix(0, [voice + b"0", voice + b"1"])
        cache.release(0)
    assert cache.prefixes.idle_blocks == 3  # the bound: the tail of the oldest prefix went first
    assert len(cache.prefixes.match([b"a0", b"a1"])) == 1 and len(cache.prefixes.match([b"b0", b"b1"])) == 2
    assert cache.blocks_available == cache.num_blocks  # idle prefixes never stand in the way
    assert cache.reserve(0, 256)
    cache.ensure(0, 256)  # takes every free block, then the oldest idle ones
    assert cache.prefixes.idle_blocks < 3


def test_requests_for_one_voice_arriving_together_share_its_prefix(tiny_model, reference_clips):
    prompt = clone_prompt(tiny_model, reference_clips, seconds=8)
    with running_engine(tiny_model.model, max_batch_size=4, max_queue_size=4, max_seq_len=1024) as engine:
        handles = [engine.submit(request(prompt, 20, seed=seed)) for seed in range(4)]
        results = [handle.result(60) for handle in handles]
        reused = engine.load.prefix_hit_blocks
    assert [r.steps for r in results] == [20] * 4
    assert reused == 3 * ((prompt.num_tokens - 1) // 128) * 2  # the three later ones each


def test_a_queued_request_times_out_while_others_run(tiny_model):
    prompt = plain_prompt(tiny_model)
    with running_engine(tiny_model.model, max_batch_size=1, max_queue_size=2, max_seq_len=1024) as engine:
        running = engine.submit(request(prompt, 900))
        queued = engine.submit(GenerationRequest(prompt, SamplingParams(seed=1), 10, 10**9, timeout_s=0.3))
        result = queued.result(5)  # long before the running request ends
        assert not running.done
        running.cancel()
    assert result.finish_reason == "timeout"


# --- what the admission bounds, and what never waits for the device ----------------------------------

@pytest.mark.filterwarnings("error")  # torch warns when it resizes an output buffer that is too small
def test_rows_sharing_a_long_voice_beyond_the_pools_size_each_get_what_they_get_alone(tiny_model, reference_clips):
    """The worst case the settings allow: a KV budget below slots x max length, and every row sharing
    one long voice, so the rows' live blocks, shared ones counted once per row, outnumber the pool's."""
    prompt = clone_prompt(tiny_model, reference_clips, seconds=30)
    # Admission reserves a request's whole need before it finds the voice cached, so the budget must
    # also hold one more such reservation; 3 x 1024 tokens are 48 blocks.
    slots, frames, max_len = 8, 100, 1024
    settings = dict(max_batch_size=slots, max_queue_size=slots, max_seq_len=max_len, kv_cache_tokens=3 * max_len)
    with running_engine(tiny_model.model, **settings) as engine:
        handles = [engine.submit(request(prompt, frames, seed=seed)) for seed in range(slots)]
        peak_rows = 0
        while not all(handle.done for handle in handles):
            peak_rows = max(peak_rows, len(engine._running))
            time.sleep(0.002)
        crowded = [handle.result(0) for handle in handles]
        pool_blocks = engine.batched.cache.num_blocks
    assert peak_rows == slots and slots * blocks_for(prompt.num_tokens + frames) > pool_blocks
    with running_engine(tiny_model.model, **settings) as engine:
        alone = [engine.submit(request(prompt, frames, seed=seed)).result(60) for seed in range(slots)]
    for together, single in zip(crowded, alone):
        assert together.finish_reason == "length" and np.array_equal(together.frames, single.frames)


_HOST_SYNCS = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::nonzero", "aten::masked_select",
               "aten::equal"}


class _Waits(TorchDispatchMode):
    """Records the operations that make the host wait for the device (reading a value back, or
    indexing by a boolean mask, whose result's size only the device knows), and the tensors made of
    host values (on CUDA, copies from the host, which a graph capture refuses)."""

    def __init__(self):
        super().__init__()
        self.found, self.from_host = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        boolean_index = func.name() in ("aten::index.Tensor", "aten::index_put_", "aten::index_put") and any(
            isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in (args[1] or ()))
        if func.name() in _HOST_SYNCS or boolean_index:
            self.found.append(func.name())
        if func.name() == "aten::lift_fresh":
            self.from_host.append(func.name())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kernels", [None, TritonKernels(1024)], ids=["CPU path", "CUDA path (interpreted)"])
def test_prefill_chunks_and_decode_steps_never_wait_for_the_device(tiny_model, reference_clips, kernels):
    engine = Scheduler(tiny_model.model, max_batch_size=2, max_queue_size=2, max_seq_len=1024,
                       prefill_chunk_tokens=64, kernels=kernels)  # not started: driven by hand
    prompt = clone_prompt(tiny_model, reference_clips)
    engine.submit(request(prompt, 10))
    engine._admit()
    running = engine._prefilling[0]
    engine.batched.cache.ensure(running.slot, prompt.num_tokens)
    with torch.inference_mode():
        engine.batched.prefill(running.slot, prompt.input_ids, prompt.audio_frames, 0, 64)
        is_audio = np.isin(prompt.input_ids[64:128], engine.batched.audio_token_ids)
        assert is_audio.any() and not is_audio.all()  # text and audio positions: both FFNs
        with _Waits() as waits:
            engine.batched.prefill(running.slot, prompt.input_ids, prompt.audio_frames, 64, 128)
    assert waits.found == []
    engine._prefill_chunks()
    slots = torch.tensor([running.slot])
    live = engine.batched.kernels.attention_batch(engine.batched.cache, [running.slot], [prompt.num_tokens + 1])
    with torch.inference_mode(), _Waits() as waits:
        engine.step.eager(slots, live, 64)
    assert waits.found == [] and waits.from_host == []
