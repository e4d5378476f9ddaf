"""Decode attention read straight from the paged KV pool: a split-KV Triton kernel and an ordered
combine, each registered as one torch custom op (one launch each).

The pool is (blocks, kv_heads, BLOCK_SIZE, head_dim) per layer; a row finds its blocks through its
block-table row, so nothing is gathered or copied. Grouped-query attention is packed as in the torch
reference (`paged_attention`): one program serves the `group` query heads of one KV head, whatever
the ratio (Higgs has 3), padded to the 16 rows `tl.dot` needs.

Batch invariance by construction: split s of a row covers that row's positions [s*S, (s+1)*S), a
fixed S, whatever the batch; within a split the blocks are taken in order, and the combine adds the
splits in order (no atomics). A row's result depends only on its own query, positions and cache.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .paged_attention import BLOCK_SIZE

SPLIT_TOKENS = 256  # positions per split: 4 blocks
_GROUP_ROWS = 16  # tl.dot needs at least 16 rows


def splits_for(max_len: int) -> int:
    return triton.cdiv(max_len, SPLIT_TOKENS)


@triton.jit
def _split_kernel(query, key_pool, value_pool, block_rows, lengths, partial_out, partial_max, partial_sum, scale,
                  block_rows_stride, pool_block_stride, pool_head_stride,
                  HEADS: tl.constexpr, KV_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_ROWS: tl.constexpr,
                  HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, BLOCKS_PER_SPLIT: tl.constexpr,
                  SPLITS: tl.constexpr):
    row, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    length = tl.load(lengths + row)
    first_block = split * BLOCKS_PER_SPLIT
    if first_block * BLOCK < length:
        group = tl.arange(0, GROUP_ROWS)
        dims = tl.arange(0, HEAD_DIM)
        offsets = tl.arange(0, BLOCK)
        in_group = group < GROUP
        heads = kv_head * GROUP + group
        q = tl.load(query + (row * HEADS + heads)[:, None] * HEAD_DIM + dims[None, :], mask=in_group[:, None],
                    other=0.0)
        running_max = tl.full([GROUP_ROWS], float("-inf"), tl.float32)
        running_sum = tl.zeros([GROUP_ROWS], tl.float32)
        acc = tl.zeros([GROUP_ROWS, HEAD_DIM], tl.float32)
        # Loops run to a constant bound with the bound tested inside (the interpreter cannot loop to a loaded value).
        for index in range(BLOCKS_PER_SPLIT):
            block_index = first_block + index
            if block_index * BLOCK < length:
                block = tl.load(block_rows + row * block_rows_stride + block_index)
                tile = (block * pool_block_stride + kv_head * pool_head_stride + offsets[:, None] * HEAD_DIM
                        + dims[None, :])
                keys = tl.load(key_pool + tile)
                scores = tl.dot(q, tl.trans(keys), input_precision="ieee") * scale
                scores = tl.where((block_index * BLOCK + offsets)[None, :] < length, scores, float("-inf"))
                new_max = tl.maximum(running_max, tl.max(scores, 1))
                weights = tl.exp(scores - new_max[:, None])
                rescale = tl.exp(running_max - new_max)
                running_sum = running_sum * rescale + tl.sum(weights, 1)
                values = tl.load(value_pool + tile)
                acc = acc * rescale[:, None] + tl.dot(weights.to(values.dtype), values, input_precision="ieee")
                running_max = new_max
        slot = ((row * KV_HEADS + kv_head) * SPLITS + split) * GROUP + group
        tl.store(partial_out + slot[:, None] * HEAD_DIM + dims[None, :], acc, mask=in_group[:, None])
        tl.store(partial_max + slot, running_max, mask=in_group)
        tl.store(partial_sum + slot, running_sum, mask=in_group)


@triton.jit
def _combine_kernel(partial_out, partial_max, partial_sum, lengths, out,
                    HEADS: tl.constexpr, KV_HEADS: tl.constexpr, GROUP: tl.constexpr, GROUP_ROWS: tl.constexpr,
                    HEAD_DIM: tl.constexpr, SPLIT: tl.constexpr, SPLITS: tl.constexpr):
    row, kv_head = tl.program_id(0), tl.program_id(1)
    used = (tl.load(lengths + row) + SPLIT - 1) // SPLIT
    group = tl.arange(0, GROUP_ROWS)
    dims = tl.arange(0, HEAD_DIM)
    in_group = group < GROUP
    first = (row * KV_HEADS + kv_head) * SPLITS * GROUP + group
    row_max = tl.full([GROUP_ROWS], float("-inf"), tl.float32)
    for split in range(SPLITS):
        if split < used:
            row_max = tl.maximum(row_max, tl.load(partial_max + first + split * GROUP, mask=in_group, other=0.0))
    total = tl.zeros([GROUP_ROWS], tl.float32)
    acc = tl.zeros([GROUP_ROWS, HEAD_DIM], tl.float32)
    for split in range(SPLITS):
        if split < used:
            slot = first + split * GROUP
            weight = tl.exp(tl.load(partial_max + slot, mask=in_group, other=0.0) - row_max)
            total += weight * tl.load(partial_sum + slot, mask=in_group, other=0.0)
            acc += weight[:, None] * tl.load(partial_out + slot[:, None] * HEAD_DIM + dims[None, :],
                                             mask=in_group[:, None], other=0.0)
    heads = kv_head * GROUP + group
    result = acc / tl.where(in_group, total, 1.0)[:, None]
    tl.store(out + (row * HEADS + heads)[:, None] * HEAD_DIM + dims[None, :], result.to(out.dtype.element_ty),
             mask=in_group[:, None])


@torch.library.custom_op("higgs::paged_attention_splits", mutates_args=())
def attention_splits(query: torch.Tensor, key_pool: torch.Tensor, value_pool: torch.Tensor, block_rows: torch.Tensor,
                     lengths: torch.Tensor, scale: float, splits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """query (rows, heads, head_dim) attends to the first lengths[row] positions of the row's blocks
    (block_rows[row]); returns each split's unnormalised output (rows, kv_heads, splits, group,
    head_dim), score maximum and weight sum (rows, kv_heads, splits, group), float32. Splits past a
    row's length are left unwritten: the combine never reads them."""
    rows, heads, head_dim = query.shape
    kv_heads = key_pool.shape[1]
    group = heads // kv_heads
    partial_out = torch.empty((rows, kv_heads, splits, group, head_dim), dtype=torch.float32, device=query.device)
    partial_max = torch.empty((rows, kv_heads, splits, group), dtype=torch.float32, device=query.device)
    partial_sum = torch.empty_like(partial_max)
    _split_kernel[(rows, kv_heads, splits)](
        query, key_pool, value_pool, block_rows, lengths, partial_out, partial_max, partial_sum, scale,
        block_rows.stride(0), key_pool.stride(0), key_pool.stride(1),
        HEADS=heads, KV_HEADS=kv_heads, GROUP=group, GROUP_ROWS=_GROUP_ROWS, HEAD_DIM=head_dim, BLOCK=BLOCK_SIZE,
        BLOCKS_PER_SPLIT=SPLIT_TOKENS // BLOCK_SIZE, SPLITS=splits)
    return partial_out, partial_max, partial_sum


@torch.library.custom_op("higgs::paged_attention_combine", mutates_args=())
def combine_splits(partial_out: torch.Tensor, partial_max: torch.Tensor, partial_sum: torch.Tensor,
                   lengths: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The splits of `attention_splits` merged in order: (rows, heads, head_dim) in `dtype`."""
    rows, kv_heads, splits, group, head_dim = partial_out.shape
    out = torch.empty((rows, kv_heads * group, head_dim), dtype=dtype, device=partial_out.device)
    _combine_kernel[(rows, kv_heads)](
        partial_out, partial_max, partial_sum, lengths, out,
        HEADS=kv_heads * group, KV_HEADS=kv_heads, GROUP=group, GROUP_ROWS=_GROUP_ROWS, HEAD_DIM=head_dim,
        SPLIT=SPLIT_TOKENS, SPLITS=splits)
    return out


def paged_decode_attention(query: torch.Tensor, key_pool: torch.Tensor, value_pool: torch.Tensor,
                           block_rows: torch.Tensor, lengths: torch.Tensor, scale: float, splits: int) -> torch.Tensor:
    """(rows, heads, head_dim): each row's query over the first lengths[row] positions of its blocks.
    `splits` covers the longest row (`splits_for(max_len)`); padding rows need a length of at least 1."""
    partials = attention_splits(query, key_pool, value_pool, block_rows, lengths, scale, splits)
    return combine_splits(*partials, lengths, query.dtype)
