"""The decode step's operations behind one seam, so the CPU and CUDA paths share one step structure
(`batched_model.BatchedModel.decode`):

- `TorchKernels`: torch operations, the CPU path and the reference every Triton kernel is tested
  against. Linear layers go through oneDNN-prepacked weights on CPU: at a few rows it is several
  times faster than MKL's GEMM, and each row's result is the same whatever the batch size (MKL
  changes its blocking with the row count), which keeps a request's output independent of its
  neighbours. Attention gathers the batch's live blocks (`paged_attention`).
- `TritonKernels`: the CUDA path. Fused Triton kernels for norms, rotary + KV append, the MLP's
  activation and the sampler's random numbers, and a split-KV attention that reads the paged pool in
  place. Each kernel is a torch custom op: one launch, visible as one operation to a
  `TorchDispatchMode` (which is how `launch_count` measures a step on CPU, under Triton's interpreter).

Host-side, before a batch's steps, `attention_batch` prepares what the attention needs beyond the
device state: the live-block list for the torch reference, nothing for the Triton kernel (it reads
the block table).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.higgs_audio_v2.modeling_higgs_audio_v2 import apply_rotary_pos_emb

from .kv_cache import LiveBlocks, PagedKVCache
from .paged_attention import paged_attention
from .sampling import step_uniforms

# oneDNN packs weights for an expected row count; any count then works, and gives the same bits.
PACKING_ROWS_HINT = 8


@dataclass(frozen=True)
class Norm:
    weight: torch.Tensor
    eps: float

    @classmethod
    def of(cls, module) -> "Norm":
        return cls(module.weight, module.variance_epsilon)


@dataclass(frozen=True)
class AppendAt:
    """Where each row's new position goes in the pools: computed once per step, used by every layer."""

    block: torch.Tensor
    offset: torch.Tensor


@dataclass(frozen=True)
class Linear:
    weight: torch.Tensor  # as the kernels use it
    bias: torch.Tensor | None
    prepacked: bool = False  # for oneDNN


class TorchKernels:
    # The gather buffer grows with the batch's live blocks (a size known on the host between steps),
    # so a captured graph could be left writing to a freed buffer.
    capturable = False

    def __init__(self, device: torch.device):
        self._prepack = device.type == "cpu" and torch.backends.mkldnn.is_available()
        self._gathered: tuple[torch.Tensor, torch.Tensor] | None = None

    def prepare(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Linear:
        if self._prepack and weight.dtype == torch.float32:  # (oneDNN's bf16 needs CPU features few have)
            return Linear(torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACKING_ROWS_HINT), bias, True)
        return Linear(weight, bias)

    def linear(self, linear: Linear, rows: torch.Tensor) -> torch.Tensor:
        if linear.prepacked:
            return torch.ops.mkldnn._linear_pointwise(rows, linear.weight, linear.bias, "none", [], "")
        return F.linear(rows, linear.weight, linear.bias)

    def add_rms_norm(self, hidden: torch.Tensor, delta: torch.Tensor | None,
                     norm: Norm) -> tuple[torch.Tensor, torch.Tensor]:
        """Mirrors transformers' RMSNorm: float32 inside, the weight applied in the model's dtype."""
        if delta is not None:
            hidden = hidden + delta
        x = hidden.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps)
        return hidden, norm.weight * x.to(hidden.dtype)

    def rotary_append(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_pool: torch.Tensor,
                      value_pool: torch.Tensor, at: AppendAt) -> torch.Tensor:
        """transformers' rotary embedding over (rows, heads, 1, head_dim) views; returns the queries."""
        kv_heads, head_dim = key_pool.shape[1], key_pool.shape[3]
        heads = qkv.shape[1] // head_dim - 2 * kv_heads
        split = qkv.view(qkv.shape[0], -1, 1, head_dim)
        query, key = apply_rotary_pos_emb(split[:, :heads], split[:, heads:heads + kv_heads], cos, sin)
        key_pool[at.block, :, at.offset] = key[:, :, 0]
        value_pool[at.block, :, at.offset] = split[:, heads + kv_heads:, 0]
        return query[:, :, 0]

    def attention_batch(self, cache: PagedKVCache, slots: list[int], lengths: list[int]) -> LiveBlocks:
        return cache.live_blocks(slots, lengths)

    def attention(self, query: torch.Tensor, key_pool: torch.Tensor, value_pool: torch.Tensor,
                  block_rows: torch.Tensor, lengths: torch.Tensor, live: LiveBlocks, scale: float) -> torch.Tensor:
        keys, values = self._gather(key_pool, value_pool, live)
        return paged_attention(query, keys, values, live.rows, live.positions, lengths, scale)

    def _gather(self, key_pool: torch.Tensor, value_pool: torch.Tensor,
                live: LiveBlocks) -> tuple[torch.Tensor, torch.Tensor]:
        """The live blocks' keys and values, in a buffer reused layer after layer and step after step
        (allocating fresh pages each time costs more than the copy on CPU), grown when a batch needs
        more: shared prompt blocks count once per row that uses them."""
        if self._gathered is None or self._gathered[0].shape[0] < live.count:
            shape = (live.count,) + key_pool.shape[1:]
            self._gathered = (key_pool.new_empty(shape), value_pool.new_empty(shape))
        keys, values = self._gathered
        return (torch.index_select(key_pool, 0, live.ids, out=keys[:live.count]),
                torch.index_select(value_pool, 0, live.ids, out=values[:live.count]))

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    uniforms = staticmethod(step_uniforms)


class TritonKernels:
    capturable = True

    def __init__(self, max_len: int):
        from . import triton_attention, triton_ops

        self._attention, self._ops = triton_attention, triton_ops
        self._splits = triton_attention.splits_for(max_len)

    def prepare(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Linear:
        return Linear(weight, bias)

    def linear(self, linear: Linear, rows: torch.Tensor) -> torch.Tensor:
        return F.linear(rows, linear.weight, linear.bias)

    def add_rms_norm(self, hidden: torch.Tensor, delta: torch.Tensor | None,
                     norm: Norm) -> tuple[torch.Tensor, torch.Tensor]:
        return self._ops.add_rms_norm(hidden, delta, norm.weight, norm.eps)

    def rotary_append(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, key_pool: torch.Tensor,
                      value_pool: torch.Tensor, at: AppendAt) -> torch.Tensor:
        return self._ops.rotary_append(qkv, cos, sin, key_pool, value_pool, at.block, at.offset)

    def attention_batch(self, cache: PagedKVCache, slots: list[int], lengths: list[int]) -> None:
        return None

    def attention(self, query: torch.Tensor, key_pool: torch.Tensor, value_pool: torch.Tensor,
                  block_rows: torch.Tensor, lengths: torch.Tensor, live: None, scale: float) -> torch.Tensor:
        return self._attention.paged_decode_attention(query, key_pool, value_pool, block_rows, lengths, scale,
                                                      self._splits)

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        return self._ops.silu_mul(gate_up)

    def uniforms(self, seed_low: torch.Tensor, seed_high: torch.Tensor, draws: torch.Tensor, purposes: int,
                 lanes: int) -> torch.Tensor:
        return self._ops.counter_uniforms(seed_low, seed_high, draws, purposes, lanes)


def kernels_for(device: torch.device, max_len: int) -> TorchKernels | TritonKernels:
    """Triton kernels on CUDA, the torch reference elsewhere."""
    return TritonKernels(max_len) if device.type == "cuda" else TorchKernels(device)
