"""Decode attention over a paged KV cache, reading only the blocks a request has filled.

The cache (`kv_cache.PagedKVCache`) gathers, for each row, the first blocks of its block table (a
bucket of the longest live length in the batch, never the configured maximum); attention then runs
block by block:

- grouped-query attention by packing: the query is viewed as (batch, kv_heads, heads per kv head,
  head_dim), so every product is between equal head counts, whatever the ratio (Higgs has 3);
- each block's scores, maximum, exponentials and weighted values are computed at the block's fixed
  width, and blocks are merged with the usual log-sum-exp rescaling by a reduction over the block
  axis. A row's arithmetic therefore never depends on how many blocks its neighbours made the batch
  gather: blocks past its length contribute exact zeros. On CPU this keeps a request's output
  bit-identical alone and in any batch.

Only tensor operations with shapes fixed by (batch, num_blocks): no host synchronisation, so a
step can be captured in a CUDA graph or compiled with `fullgraph=True`. The same code runs on CPU
and GPU. (torch's SDPA is no help here: on CPU its result for a row changes with the batch's padded
length, and on CUDA a mask with unequal head counts forces its slow math path.)
"""

from __future__ import annotations

import torch

BLOCK_SIZE = 64


def blocks_for(tokens: int) -> int:
    return -(-tokens // BLOCK_SIZE)


def paged_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """query: (batch, heads, head_dim), one position per row; keys, values: the row's gathered blocks,
    (batch, blocks, kv_heads, BLOCK_SIZE, head_dim); each row attends to its first `lengths[row]`
    positions (the new one included). Returns (batch, heads, head_dim)."""
    batch, heads, head_dim = query.shape
    num_blocks, kv_heads = keys.shape[1], keys.shape[2]
    packed = query.view(batch, 1, kv_heads, heads // kv_heads, head_dim)
    scores = torch.matmul(packed, keys.transpose(-1, -2)).float() * scale  # (batch, blocks, kv_heads, group, block_size)
    position = torch.arange(num_blocks * BLOCK_SIZE, device=query.device).view(1, num_blocks, 1, 1, BLOCK_SIZE)
    scores = scores.masked_fill(position >= lengths.view(batch, 1, 1, 1, 1), -torch.inf)
    block_max = scores.amax(-1, keepdim=True)  # -inf for blocks past the row's length
    weights = torch.exp(scores - torch.where(torch.isfinite(block_max), block_max, torch.zeros_like(block_max)))
    block_sum = weights.sum(-1, keepdim=True)
    block_out = torch.matmul(weights.to(values.dtype), values).float()  # (batch, blocks, kv_heads, group, head_dim)
    # Blocks merged in order along a non-innermost axis: past a row's length they add exact zeros.
    rescale = torch.exp(block_max - block_max.amax(1, keepdim=True))
    total = torch.cat([block_out, block_sum], dim=-1).mul(rescale).sum(1)  # (batch, kv_heads, group, head_dim + 1)
    out = total[..., :head_dim] / total[..., head_dim:]
    return out.to(query.dtype).reshape(batch, heads, head_dim)
