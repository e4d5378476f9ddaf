"""The decode step's small fused Triton kernels, each registered as one torch custom op (one launch):
residual add + RMS norm, rotary embedding + KV append, SiLU-and-multiply, and the counter-based
uniforms of a sampling step.

Each follows its torch reference op for op (`step_kernels.TorchKernels`): the same rounding points
in the model's dtype, float32 inside. The uniforms are integer arithmetic, so they equal the torch
reference bit for bit on any device.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rms_norm_kernel(hidden, delta, weight, new_hidden, normed, columns, eps, HAS_DELTA: tl.constexpr,
                         BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offsets = tl.arange(0, BLOCK)
    inside = offsets < columns
    x = tl.load(hidden + row * columns + offsets, mask=inside, other=0.0)
    if HAS_DELTA:
        x = (x.to(tl.float32) + tl.load(delta + row * columns + offsets, mask=inside, other=0.0).to(tl.float32)
             ).to(x.dtype)
    tl.store(new_hidden + row * columns + offsets, x, mask=inside)
    x32 = x.to(tl.float32)
    variance = tl.sum(x32 * x32, axis=0) / columns
    scaled = (x32 * tl.rsqrt(variance + eps)).to(x.dtype).to(tl.float32)
    w = tl.load(weight + offsets, mask=inside, other=0.0).to(tl.float32)
    tl.store(normed + row * columns + offsets, (w * scaled).to(x.dtype), mask=inside)


@torch.library.custom_op("higgs::add_rms_norm", mutates_args=())
def add_rms_norm(hidden: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden + delta, rms_norm(hidden + delta) * weight) for (rows, columns) inputs; no add without a delta."""
    rows, columns = hidden.shape
    new_hidden, normed = torch.empty_like(hidden), torch.empty_like(hidden)
    _add_rms_norm_kernel[(rows,)](hidden, hidden if delta is None else delta, weight, new_hidden, normed, columns, eps,
                                  HAS_DELTA=delta is not None, BLOCK=triton.next_power_of_2(columns))
    return new_hidden, normed


@triton.jit
def _pool_offset(block, offset, row, kv_head, pool_block_stride, pool_head_stride, HEAD_DIM: tl.constexpr):
    return tl.load(block + row) * pool_block_stride + kv_head * pool_head_stride + tl.load(offset + row) * HEAD_DIM


@triton.jit
def _rotary_append_kernel(qkv, cos, sin, key_pool, value_pool, block, offset, query, pool_block_stride,
                          pool_head_stride, HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr):
    row, head = tl.program_id(0), tl.program_id(1)
    half = tl.arange(0, HEAD_DIM // 2)
    source = qkv + (row * (HEADS + 2 * KV_HEADS) + head) * HEAD_DIM
    first, second = tl.load(source + half), tl.load(source + HEAD_DIM // 2 + half)
    if head < HEADS + KV_HEADS:  # queries and keys turn; values pass as they are
        angle = row * HEAD_DIM + half
        cos_first, cos_second = tl.load(cos + angle).to(tl.float32), tl.load(cos + HEAD_DIM // 2 + angle).to(tl.float32)
        sin_first, sin_second = tl.load(sin + angle).to(tl.float32), tl.load(sin + HEAD_DIM // 2 + angle).to(tl.float32)
        a, b = first.to(tl.float32), second.to(tl.float32)
        first = (a * cos_first - b * sin_first).to(first.dtype)
        second = (b * cos_second + a * sin_second).to(second.dtype)
    if head < HEADS:
        target = query + (row * HEADS + head) * HEAD_DIM
    elif head < HEADS + KV_HEADS:
        target = key_pool + _pool_offset(block, offset, row, head - HEADS, pool_block_stride, pool_head_stride, HEAD_DIM)
    else:
        target = value_pool + _pool_offset(block, offset, row, head - HEADS - KV_HEADS, pool_block_stride,
                                           pool_head_stride, HEAD_DIM)
    tl.store(target + half, first)
    tl.store(target + HEAD_DIM // 2 + half, second)


@torch.library.custom_op("higgs::rotary_append", mutates_args=("key_pool", "value_pool"))
def rotary_append(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_pool: torch.Tensor,
                  value_pool: torch.Tensor, block: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """qkv (rows, (heads + 2 kv_heads) * head_dim), cos and sin (rows, head_dim): turns queries and
    keys, writes each row's key and value at (block[row], offset[row]) of the pools and returns the
    queries (rows, heads, head_dim)."""
    kv_heads, head_dim = key_pool.shape[1], key_pool.shape[3]
    rows = qkv.shape[0]
    heads = qkv.shape[1] // head_dim - 2 * kv_heads
    query = torch.empty((rows, heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    _rotary_append_kernel[(rows, heads + 2 * kv_heads)](
        qkv, cos, sin, key_pool, value_pool, block, offset, query, key_pool.stride(0), key_pool.stride(1),
        HEADS=heads, KV_HEADS=kv_heads, HEAD_DIM=head_dim)
    return query


@triton.jit
def _silu_mul_kernel(gate_up, out, width, BLOCK: tl.constexpr):
    row, part = tl.program_id(0), tl.program_id(1)
    offsets = part * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < width
    gate = tl.load(gate_up + row * 2 * width + offsets, mask=inside, other=0.0)
    up = tl.load(gate_up + row * 2 * width + width + offsets, mask=inside, other=0.0)
    g = gate.to(tl.float32)
    activated = (g / (1.0 + tl.exp(-g))).to(gate.dtype).to(tl.float32)
    tl.store(out + row * width + offsets, (activated * up.to(tl.float32)).to(gate.dtype), mask=inside)


@torch.library.custom_op("higgs::silu_mul", mutates_args=())
def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up = [gate | up] (rows, 2 width) -> (rows, width)."""
    rows, width = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((rows, width), dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul_kernel[(rows, triton.cdiv(width, block))](gate_up, out, width, BLOCK=block)
    return out


@triton.jit
def _mix32(x):
    mask = tl.full([], 0xFFFFFFFF, tl.int64)
    multiplier = tl.full([], 0x45D9F3B, tl.int64)
    x = x & mask
    x = (((x >> 16) ^ x) * multiplier) & mask
    x = (((x >> 16) ^ x) * multiplier) & mask
    return (x >> 16) ^ x


@triton.jit
def _uniforms_kernel(seed_low, seed_high, draws, out, LANES: tl.constexpr, LANES_BLOCK: tl.constexpr,
                     PURPOSES: tl.constexpr):
    row = tl.program_id(0)
    low, high, draw = tl.load(seed_low + row), tl.load(seed_high + row), tl.load(draws + row)
    lanes = tl.arange(0, LANES_BLOCK)
    lane_keys = (lanes.to(tl.int64) * tl.full([], 0x9E3779B1, tl.int64)) & tl.full([], 0xFFFFFFFF, tl.int64)
    for purpose in tl.static_range(PURPOSES):
        key = _mix32(_mix32(low ^ _mix32(high + purpose)) + draw)
        bits = _mix32(key ^ lane_keys)
        uniform = (bits >> 8).to(tl.float32) / 16777216.0
        tl.store(out + (row * PURPOSES + purpose) * LANES + lanes, uniform, mask=lanes < LANES)


@torch.library.custom_op("higgs::counter_uniforms", mutates_args=())
def counter_uniforms(seed_low: torch.Tensor, seed_high: torch.Tensor, draws: torch.Tensor, purposes: int,
                     lanes: int) -> torch.Tensor:
    """(rows, purposes, lanes) uniforms in [0, 1), equal to `sampling.counter_uniforms` for each purpose."""
    rows = draws.shape[0]
    out = torch.empty((rows, purposes, lanes), dtype=torch.float32, device=draws.device)
    _uniforms_kernel[(rows,)](seed_low, seed_high, draws, out, LANES=lanes, LANES_BLOCK=triton.next_power_of_2(lanes),
                              PURPOSES=purposes)
    return out
