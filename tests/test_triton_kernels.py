"""The CUDA path's Triton kernels, run on CPU tensors under Triton's interpreter (see conftest) in
float32, against the torch reference ops of the CPU path (`TorchKernels`). The interpreter computes
bf16 wrongly (numpy has no bfloat16): the bf16 build is checked on a GPU by `bench/device_check.py`."""

from __future__ import annotations

import numpy as np
import torch
from transformers import HiggsAudioV2Config

from higgs_runtime.engine.kv_cache import PagedKVCache
from higgs_runtime.engine.paged_attention import BLOCK_SIZE, blocks_for
from higgs_runtime.engine.requests import GenerationRequest
from higgs_runtime.engine.sampling import RepetitionAware, SamplingParams, step_uniforms
from higgs_runtime.engine.scheduler import Scheduler
from higgs_runtime.engine.step_kernels import AppendAt, Norm, TorchKernels, TritonKernels
from test_engine import mode_prompts, reference_generate
from test_paged_engine import dense_attention

MAX_LEN = 4096
# Higgs Audio v2's head layout (3 query heads per KV head, 128 wide), with 2 KV heads of its 8: the
# interpreter runs each (row, KV head, split) program in turn.
HEADS, KV_HEADS, HEAD_DIM = 6, 2, 128
SCALE = HEAD_DIM ** -0.5
REFERENCE = TorchKernels(torch.device("cpu"))
TRITON = TritonKernels(MAX_LEN)


def cache_with_rows(lengths: list[int], shared_prefix: dict[int, tuple[int, int]], padding_rows: int):
    """A one-layer cache of random keys and values (stale data everywhere, scratch block included)
    with one slot per length; `shared_prefix[row] = (other_row, blocks)` starts a row with another
    row's first blocks, as a cached voice prefix does. Returns the cache and the batch's slots."""
    config = HiggsAudioV2Config(num_hidden_layers=1, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                                head_dim=HEAD_DIM)
    cache = PagedKVCache(config, num_slots=len(lengths), max_len=MAX_LEN, budget_tokens=len(lengths) * MAX_LEN,
                         device=torch.device("cpu"), dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    for pool in cache.keys + cache.values:
        pool.copy_(torch.randn(pool.shape, generator=generator))
    for slot, length in enumerate(lengths):
        assert cache.reserve(slot, length)
        if slot in shared_prefix:
            other, blocks = shared_prefix[slot]
            cache.share(slot, cache.block_table[other, :blocks].tolist())
        cache.ensure(slot, length)
    return cache, list(range(len(lengths))) + [cache.scratch_slot] * padding_rows


def attend(kernels, cache: PagedKVCache, slots: list[int], query: torch.Tensor) -> torch.Tensor:
    lengths = [int(cache.lengths[slot]) for slot in slots]  # set by the caller: the new position included
    live = kernels.attention_batch(cache, slots, lengths)
    return kernels.attention(query, cache.keys[0], cache.values[0], cache.block_table[slots], torch.tensor(lengths),
                             live, SCALE)


def test_split_kv_attention_reads_the_pool_in_place_like_the_reference():
    lengths = [1, 63, 64, 65, 1100, MAX_LEN, 700, 1000]
    cache, slots = cache_with_rows(lengths, {6: (4, 10), 7: (4, 10)}, padding_rows=2)  # rows 6, 7 share a prefix
    cache.lengths[:len(lengths)] = torch.tensor(lengths)
    cache.lengths[cache.scratch_slot] = 1
    query = torch.randn(len(slots), HEADS, HEAD_DIM, generator=torch.Generator().manual_seed(1))
    out = attend(TRITON, cache, slots, query)
    assert torch.allclose(out, attend(REFERENCE, cache, slots, query), atol=2e-6, rtol=1e-5)
    for row, length in enumerate(lengths):
        blocks = cache.block_table[slots[row], :blocks_for(length)]
        keys = cache.keys[0][blocks].transpose(1, 2).reshape(-1, KV_HEADS, HEAD_DIM)[:length]
        values = cache.values[0][blocks].transpose(1, 2).reshape(-1, KV_HEADS, HEAD_DIM)[:length]
        assert torch.allclose(out[row].double(), dense_attention(query[row], keys, values, SCALE), atol=1e-5), length
    assert torch.isfinite(out[len(lengths):]).all()  # padding rows read the scratch block


def test_a_rows_split_kv_attention_is_bit_identical_whatever_its_neighbours():
    lengths = [300, 1100, 5, 700]
    cache, slots = cache_with_rows(lengths, {}, padding_rows=3)
    cache.lengths[:len(lengths)] = torch.tensor(lengths)
    cache.lengths[cache.scratch_slot] = 1
    query = torch.randn(len(slots), HEADS, HEAD_DIM, generator=torch.Generator().manual_seed(2))
    crowded = attend(TRITON, cache, slots, query)
    alone = attend(TRITON, cache, [1], query[1:2])
    shuffled = attend(TRITON, cache, [3, 1, 0], query[[3, 1, 0]])
    assert torch.equal(alone[0], crowded[1]) and torch.equal(shuffled[1], crowded[1])


def test_norm_rotary_append_activation_kernels_match_the_reference():
    generator = torch.Generator().manual_seed(3)
    rows, hidden_size = 5, 3072
    hidden, delta = torch.randn(rows, hidden_size, generator=generator), torch.randn(rows, hidden_size, generator=generator)
    norm = Norm(torch.randn(hidden_size, generator=generator), 1e-5)
    for given_delta in (delta, None):
        (new, normed), (expected_new, expected_normed) = (kernels.add_rms_norm(hidden, given_delta, norm)
                                                          for kernels in (TRITON, REFERENCE))
        assert torch.equal(new, expected_new) and torch.allclose(normed, expected_normed, atol=1e-5, rtol=1e-5)

    qkv = torch.randn(rows, (HEADS + 2 * KV_HEADS) * HEAD_DIM, generator=generator)
    angles = torch.rand(rows, 1, HEAD_DIM // 2, generator=generator) * 4000
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    at = AppendAt(block=torch.tensor([3, 1, 3, 2, 0]), offset=torch.tensor([0, 63, 17, 5, 9]))
    pools = {}
    for name, kernels in (("triton", TRITON), ("reference", REFERENCE)):
        key_pool, value_pool = torch.zeros(4, KV_HEADS, BLOCK_SIZE, HEAD_DIM), torch.zeros(4, KV_HEADS, BLOCK_SIZE, HEAD_DIM)
        pools[name] = (kernels.rotary_append(qkv, cos, sin, key_pool, value_pool, at), key_pool, value_pool)
    for got, expected in zip(pools["triton"], pools["reference"]):
        assert torch.allclose(got, expected, atol=1e-6)
    written = torch.zeros(4, BLOCK_SIZE, dtype=torch.bool)
    written[at.block, at.offset] = True
    assert (pools["triton"][1].transpose(1, 2)[~written] == 0).all()  # nothing written elsewhere

    gate_up = torch.randn(rows, 2 * 8192, generator=generator) * 4
    assert torch.allclose(TRITON.silu_mul(gate_up), REFERENCE.silu_mul(gate_up), atol=1e-6, rtol=1e-6)


def test_uniforms_kernel_gives_the_reference_streams_bit_for_bit():
    seeds = [0, 1, 2**32 - 1, 2**32, 2**63 - 1, 123456789012345]
    seed = torch.tensor(seeds)
    low, high = seed & 0xFFFFFFFF, seed >> 32
    draws = torch.tensor([0, 1, 7, 2**20, 5, 99999])
    assert torch.equal(TRITON.uniforms(low, high, draws, 2, 8), step_uniforms(low, high, draws, 2, 8))


def test_the_cuda_paths_decode_step_gives_generates_greedy_codes(tiny_model, reference_clips):
    """The whole step of the CUDA path (every Triton kernel, the fused weights), here under the
    interpreter, against transformers' own generate()."""
    prompt = mode_prompts(tiny_model, reference_clips)["clone"]
    expected = reference_generate(tiny_model.model, prompt, max_new_tokens=40, ras=False)
    engine = Scheduler(tiny_model.model, max_batch_size=2, max_queue_size=2, max_seq_len=1024,
                       ras=RepetitionAware(window=0), kernels=TritonKernels(1024))
    engine.start()
    try:
        result = engine.submit(GenerationRequest(prompt, SamplingParams(temperature=0.0), 40, 10**9, 120)).result(120)
    finally:
        engine.stop()
    assert len(result.frames) > 8 and np.array_equal(result.frames, expected)
