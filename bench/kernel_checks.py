"""The CUDA path's Triton kernels against the torch reference ops (`TorchKernels`), on any device and
dtype: in float32 on CPU under Triton's interpreter (`tests/test_triton_kernels.py`), and in bf16 on
a GPU (`bench/device_check.py`). Each check returns its measurements; the caller judges them.

Errors are relative: the largest absolute difference over the largest reference magnitude. The
reference runs in float32 on the same (dtype-rounded) inputs, so a bf16 error measures the kernel's
own rounding (about 0.004 for attention over 4,096 positions, in a float32 emulation).
"""

from __future__ import annotations

import torch
from transformers import HiggsAudioV2Config

from higgs_runtime.engine.kv_cache import PagedKVCache
from higgs_runtime.engine.paged_attention import BLOCK_SIZE, blocks_for
from higgs_runtime.engine.sampling import step_uniforms
from higgs_runtime.engine.step_kernels import AppendAt, Norm, TorchKernels, TritonKernels

MAX_LEN = 4096
HEAD_DIM = 128
GROUP = 3  # Higgs Audio v2's query heads per KV head
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    expected = expected.double()
    return float((got.double() - expected).abs().max() / expected.abs().max())


def cache_with_rows(lengths: list[int], shared_prefix: dict[int, tuple[int, int]], padding_rows: int,
                    kv_heads: int, device: torch.device, dtype: torch.dtype, values_of: torch.dtype | None = None):
    """A one-layer cache of random keys and values (stale data everywhere, scratch block included),
    values representable in `values_of` (default `dtype`), with one slot per length, its length set
    as a decode step sees it (the new position included); `shared_prefix[row] = (other_row, blocks)`
    starts a row with another row's first blocks, as a cached voice does. Returns the cache and the
    batch's slots (padding rows name the scratch slot)."""
    config = HiggsAudioV2Config(num_hidden_layers=1, num_attention_heads=GROUP * kv_heads, num_key_value_heads=kv_heads,
                                head_dim=HEAD_DIM)
    cache = PagedKVCache(config, num_slots=len(lengths), max_len=MAX_LEN, budget_tokens=len(lengths) * MAX_LEN,
                         device=device, dtype=dtype)
    generator = torch.Generator().manual_seed(0)
    for pool in cache.keys + cache.values:
        pool.copy_(torch.randn(pool.shape, generator=generator).to(values_of or dtype))
    for slot, length in enumerate(lengths):
        assert cache.reserve(slot, length)
        if slot in shared_prefix:
            other, blocks = shared_prefix[slot]
            cache.share(slot, cache.block_table[other, :blocks].tolist())
        cache.ensure(slot, length)
    cache.lengths[:len(lengths)] = torch.tensor(lengths)
    cache.lengths[cache.scratch_slot] = 1
    return cache, list(range(len(lengths))) + [cache.scratch_slot] * padding_rows


def attend(kernels, cache: PagedKVCache, slots: list[int], query: torch.Tensor) -> torch.Tensor:
    lengths = cache.lengths[slots]
    live = kernels.attention_batch(cache, slots, lengths.tolist())
    return kernels.attention(query, cache.keys[0], cache.values[0], cache.block_table[slots], lengths, live,
                             HEAD_DIM ** -0.5)


def _dense(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """One row in float64, the textbook way: query (heads, head_dim), keys/values (length, kv_heads, head_dim)."""
    group = query.shape[0] // keys.shape[1]
    keys, values = keys.double().repeat_interleave(group, 1), values.double().repeat_interleave(group, 1)
    weights = (torch.einsum("hd,lhd->hl", query.double(), keys) * HEAD_DIM ** -0.5).softmax(-1)
    return torch.einsum("hl,lhd->hd", weights, values)


def attention_errors(device: torch.device, dtype: torch.dtype, kv_heads: int = 2) -> dict[str, float]:
    """Rows of lengths 1, 63, 64, 65, 1100 and the maximum, two rows sharing a prefix, two padding
    rows: the kernel against the reference and against float64 dense attention per row."""
    lengths, shared = [1, 63, 64, 65, 1100, MAX_LEN, 700, 1000], {6: (4, 10), 7: (4, 10)}
    cache, slots = cache_with_rows(lengths, shared, 2, kv_heads, device, dtype)
    float_cache, _ = cache_with_rows(lengths, shared, 2, kv_heads, device, torch.float32, values_of=dtype)
    query = torch.randn(len(slots), GROUP * kv_heads, HEAD_DIM, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    out = attend(TritonKernels(MAX_LEN), cache, slots, query)
    reference = attend(TorchKernels(device), float_cache, slots, query.float())
    dense = 0.0
    for row, length in enumerate(lengths):
        blocks = cache.block_table[slots[row], :blocks_for(length)]
        keys = cache.keys[0][blocks].transpose(1, 2).reshape(-1, kv_heads, HEAD_DIM)[:length]
        values = cache.values[0][blocks].transpose(1, 2).reshape(-1, kv_heads, HEAD_DIM)[:length]
        dense = max(dense, relative_error(out[row], _dense(query[row], keys, values)))
    return {"vs reference": relative_error(out, reference), "vs float64 dense": dense,
            "padding rows not finite": float(not torch.isfinite(out[len(lengths):]).all())}


def attention_is_batch_invariant(device: torch.device, dtype: torch.dtype, kv_heads: int = 2) -> bool:
    """A row's attention output, bit for bit, alone, among neighbours and padding, and reordered."""
    lengths = [300, 1100, 5, 700]
    cache, slots = cache_with_rows(lengths, {}, 3, kv_heads, device, dtype)
    query = torch.randn(len(slots), GROUP * kv_heads, HEAD_DIM, generator=torch.Generator().manual_seed(2)).to(device, dtype)
    kernels = TritonKernels(MAX_LEN)
    crowded = attend(kernels, cache, slots, query)
    alone = attend(kernels, cache, [1], query[1:2])
    shuffled = attend(kernels, cache, [3, 1, 0], query[[3, 1, 0]])
    return torch.equal(alone[0], crowded[1]) and torch.equal(shuffled[1], crowded[1])


def elementwise_errors(device: torch.device, dtype: torch.dtype, kv_heads: int = 2) -> dict[str, float]:
    """Residual add + RMS norm, rotary + KV append, SiLU-and-multiply at the model's widths."""
    generator = torch.Generator().manual_seed(3)
    randn = lambda *shape, scale=1.0: (torch.randn(*shape, generator=generator) * scale).to(device, dtype)  # noqa: E731
    triton, reference = TritonKernels(MAX_LEN), TorchKernels(device)
    rows, hidden_size, heads = 5, 3072, GROUP * kv_heads
    errors = {}
    hidden, delta, weight = randn(rows, hidden_size), randn(rows, hidden_size), randn(hidden_size)
    for name, given in (("add + norm", delta), ("norm", None)):
        new, normed = triton.add_rms_norm(hidden, given, Norm(weight, 1e-5))
        expected_new, expected = reference.add_rms_norm(hidden.float(), None if given is None else given.float(),
                                                        Norm(weight.float(), 1e-5))
        errors[name] = max(relative_error(new, expected_new), relative_error(normed, expected))

    qkv = randn(rows, (heads + 2 * kv_heads) * HEAD_DIM)
    angles = torch.rand(rows, 1, HEAD_DIM // 2, generator=generator) * 4000
    cos, sin = (torch.cat([angles, angles], -1).cos().to(device, dtype), torch.cat([angles, angles], -1).sin().to(device, dtype))
    at = AppendAt(block=torch.tensor([3, 1, 3, 2, 0], device=device), offset=torch.tensor([0, 63, 17, 5, 9], device=device))
    results = []
    for kernels, kind in ((triton, dtype), (reference, torch.float32)):
        key_pool = torch.zeros(4, kv_heads, BLOCK_SIZE, HEAD_DIM, device=device, dtype=kind)
        value_pool = torch.zeros_like(key_pool)
        query = kernels.rotary_append(qkv.to(kind), cos.to(kind), sin.to(kind), key_pool, value_pool, at)
        results.append((query, key_pool, value_pool))
    errors["rotary + append"] = max(relative_error(got, expected) for got, expected in zip(*results))
    written = torch.zeros(4, BLOCK_SIZE, dtype=torch.bool, device=device)
    written[at.block, at.offset] = True
    errors["append elsewhere"] = float((results[0][1].transpose(1, 2)[~written] != 0).any())

    gate_up = randn(rows, 2 * 8192, scale=4.0)
    errors["silu x up"] = relative_error(triton.silu_mul(gate_up), reference.silu_mul(gate_up.float()))
    return errors


def uniforms_match(device: torch.device) -> bool:
    """The uniforms kernel gives the torch reference's random streams bit for bit."""
    seed = torch.tensor([0, 1, 2**32 - 1, 2**32, 2**63 - 1, 123456789012345], device=device)
    low, high = seed & 0xFFFFFFFF, seed >> 32
    draws = torch.tensor([0, 1, 7, 2**20, 5, 99999], device=device)
    return torch.equal(TritonKernels(MAX_LEN).uniforms(low, high, draws, 2, 8), step_uniforms(low, high, draws, 2, 8))
