"""Decode attention over a paged KV cache, reading only the blocks requests have filled.

The cache (`kv_cache.PagedKVCache`) gathers the live blocks of the whole batch, row after row: the
work and memory traffic follow the sum of the live lengths, never the configured maximum. Attention
then runs block by block:

- grouped-query attention by packing: the query is viewed as (batch, kv_heads, heads per kv head,
  head_dim), so every product is between equal head counts, whatever the ratio (Higgs has 3);
- each block's scores, maximum, exponentials and weighted values are computed at the block's fixed
  width; a row's blocks are then merged with the usual log-sum-exp rescaling, added up in block
  order. A row's arithmetic never depends on its neighbours (on CPU a request's output is
  bit-identical alone and in any batch), and padding blocks (wholly past their row's length) add
  exact zeros.

Only tensor operations with shapes fixed by (batch, live blocks): no host synchronisation, so a
step can be captured in a CUDA graph or compiled with `fullgraph=True`. The same code runs on CPU
and GPU. (torch's SDPA is no help here: on CPU its result for a row changes with the batch's padded
length, and on CUDA a mask with unequal head counts forces its slow math path.)
"""

from __future__ import annotations

import torch

BLOCK_SIZE = 64


def blocks_for(tokens: int) -> int:
    return -(-tokens // BLOCK_SIZE)


def paged_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, block_rows: torch.Tensor,
                    block_positions: torch.Tensor, lengths: torch.Tensor, scale: float) -> torch.Tensor:
    """query: (batch, heads, head_dim), one position per row, attending to the first `lengths[row]`
    positions of its sequence (the new one included). keys, values: (blocks, kv_heads, BLOCK_SIZE,
    head_dim), the live blocks of all rows, row by row in order; block_rows[i] is block i's row and
    block_positions[i] its index within that row's sequence. Returns (batch, heads, head_dim)."""
    batch, heads, head_dim = query.shape
    count, kv_heads = keys.shape[0], keys.shape[1]
    packed = query.view(batch, kv_heads, heads // kv_heads, head_dim).index_select(0, block_rows)
    scores = torch.matmul(packed, keys.transpose(-1, -2)).float() * scale  # (blocks, kv_heads, group, BLOCK_SIZE)
    position = block_positions[:, None] * BLOCK_SIZE + torch.arange(BLOCK_SIZE, device=query.device)
    outside = position >= lengths.index_select(0, block_rows)[:, None]
    scores = scores.masked_fill(outside[:, None, None, :], -torch.inf)
    block_max = scores.amax(-1, keepdim=True)  # -inf for a block wholly past its row's length
    weights = torch.exp(scores - torch.where(torch.isfinite(block_max), block_max, torch.zeros_like(block_max)))
    partial = torch.cat([torch.matmul(weights.to(values.dtype), values).float(), weights.sum(-1, keepdim=True)], -1)
    # Merge each row's blocks: rescale to the row's maximum, then add them up in block order.
    row_of = block_rows.view(count, 1, 1, 1)
    row_max = torch.full((batch,) + block_max.shape[1:], -torch.inf, device=query.device).scatter_reduce(
        0, row_of.expand_as(block_max), block_max, "amax")
    partial = partial * torch.exp(block_max - row_max.index_select(0, block_rows))
    total = torch.zeros((batch,) + partial.shape[1:], device=query.device).index_add_(0, block_rows, partial)
    out = total[..., :head_dim] / total[..., head_dim:]
    return out.to(query.dtype).reshape(batch, heads, head_dim)
