"""The model's forward passes for serving, on its own weights (transformers' modules, fused q/k/v and
gate/up weights): prefill a request's prompt into its cache blocks, in chunks, each with the
positions before it as context; and decode one frame for many requests at once over the paged KV
cache.

Decode positions are all audio, so a step applies each layer's audio path only, through the
`step_kernels` seam: the same step structure runs torch operations on CPU and Triton kernels on
CUDA. A step is tensor operations only, with shapes fixed by its row count: no host
synchronisation, so it can be captured as a CUDA graph (`decode_step`).

Prefill positions mix text and audio (dual FFN: each position goes through the text or the audio
norms and FFN). Which positions are which is known on the host, so a chunk's routing, token ids,
audio frames and cache addresses reach the device in one copy, and no layer waits for the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers.models.higgs_audio_v2.modeling_higgs_audio_v2 import apply_rotary_pos_emb, repeat_kv

from .fused_weights import fuse_rows
from .kv_cache import LiveBlocks, PagedKVCache
from .paged_attention import BLOCK_SIZE
from .step_kernels import AppendAt, Linear, Norm, TorchKernels, TritonKernels, kernels_for


@dataclass(frozen=True)
class _Layer:
    module: object  # transformers' decoder layer (norms and FFNs for prefill)
    qkv: tuple[torch.Tensor, torch.Tensor | None]  # fused weight and bias
    text_gate_up: tuple[torch.Tensor, torch.Tensor | None]
    audio_gate_up: tuple[torch.Tensor, torch.Tensor | None]
    # The decode path's audio weights, prepared by the kernels (prepacked on CPU).
    decode_qkv: Linear
    decode_o: Linear
    decode_gate_up: Linear
    decode_down: Linear
    input_norm: Norm
    post_norm: Norm


@dataclass(frozen=True)
class _Chunk:
    """A prefill chunk on the device: positions [start, end) of one slot."""

    ids: torch.Tensor
    frames: torch.Tensor  # audio frames of its audio positions (count, codebooks)
    text_rows: torch.Tensor
    audio_rows: torch.Tensor
    write_blocks: torch.Tensor  # each position's block and offset in the pools
    write_offsets: torch.Tensor
    read_blocks: torch.Tensor  # the blocks of positions [0, end)
    start: int
    end: int


class BatchedModel:
    def __init__(self, model, num_slots: int, max_len: int, kv_budget_tokens: int, prefix_cache_tokens: int | None = None,
                 kernels: TorchKernels | TritonKernels | None = None):
        """`kernels` default: Triton on CUDA, torch elsewhere (see `step_kernels`)."""
        self.model = model
        self.config = model.config
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.num_slots = num_slots
        self.cache = PagedKVCache(self.config, num_slots, max_len, kv_budget_tokens, self.device, self.dtype,
                                  prefix_cache_tokens)
        self.kernels = kernels or kernels_for(self.device, max_len)
        self.layers = [self._layer(layer) for layer in model.model.layers]
        self.final_norm = Norm.of(model.model.norm)
        self.audio_head = self.kernels.prepare(model.audio_lm_head.weight, model.audio_lm_head.bias)
        self.heads, self.kv_heads = self.config.num_attention_heads, self.config.num_key_value_heads
        self.scale = model.model.layers[0].self_attn.scaling

    def _layer(self, layer) -> _Layer:
        attention, text, audio = layer.self_attn, layer.mlp, layer.audio_mlp
        qkv = fuse_rows([attention.q_proj, attention.k_proj, attention.v_proj])
        text_gate_up, audio_gate_up = fuse_rows([text.gate_proj, text.up_proj]), fuse_rows([audio.gate_proj, audio.up_proj])
        prepare = self.kernels.prepare
        return _Layer(layer, qkv, text_gate_up, audio_gate_up, decode_qkv=prepare(*qkv),
                      decode_o=prepare(attention.o_proj.weight, attention.o_proj.bias),
                      decode_gate_up=prepare(*audio_gate_up),
                      decode_down=prepare(audio.down_proj.weight, audio.down_proj.bias),
                      input_norm=Norm.of(layer.audio_input_layernorm), post_norm=Norm.of(layer.audio_post_attention_layernorm))

    @property
    def audio_token_ids(self) -> tuple[int, int]:
        """The prompt tokens that stand for audio frames (clip frames, then the delay-pattern tail)."""
        return self.config.audio_token_id, self.config.audio_delay_token_id

    # --- prefill ---
    @torch.inference_mode()
    def prefill(self, slot: int, input_ids: list[int], audio_frames: np.ndarray, start: int, end: int) -> torch.Tensor:
        """Runs prompt positions [start, end), with the slot's cached positions [0, start) as context,
        and stores their keys/values in the slot's blocks (given beforehand with `cache.ensure`).
        Returns the logits of the frame after position end - 1, (codebooks, codebook_size) float32."""
        chunk = self._chunk(slot, input_ids, audio_frames, start, end)
        inner = self.model.model
        hidden = inner.embed_tokens(chunk.ids)
        if chunk.frames.shape[0]:
            hidden = hidden.index_copy(0, chunk.audio_rows, inner.embed_audio_tokens(chunk.frames))
        positions = torch.arange(start, end, device=self.device)
        cos, sin = inner.rotary_emb(hidden, positions[None])
        # Position start + i sees positions [0, start + i].
        visible = torch.arange(end, device=self.device)[None, :] <= positions[:, None]
        for index, layer in enumerate(self.layers):
            normed = self._by_kind(hidden, chunk, layer.module.input_layernorm, layer.module.audio_input_layernorm)
            hidden = hidden + self._prefill_attention(index, layer, normed, cos, sin, chunk, visible)
            hidden = hidden + self._by_kind(
                hidden, chunk,
                lambda rows: _mlp(layer.text_gate_up, layer.module.mlp, layer.module.post_attention_layernorm(rows)),
                lambda rows: _mlp(layer.audio_gate_up, layer.module.audio_mlp,
                                  layer.module.audio_post_attention_layernorm(rows)))
        logits = self.model.audio_lm_head(inner.norm(hidden[-1:]))
        self.cache.lengths[slot] = end
        return self._frame_logits(logits)[0]

    def _chunk(self, slot: int, input_ids: list[int], audio_frames: np.ndarray, start: int, end: int) -> _Chunk:
        """The chunk's inputs, built on the host and moved to the device in one copy."""
        ids = np.asarray(input_ids[start:end], dtype=np.int64)
        is_audio = np.isin(ids, self.audio_token_ids)
        first_frame = int(np.isin(np.asarray(input_ids[:start]), self.audio_token_ids).sum())
        frames = np.asarray(audio_frames[first_frame:first_frame + int(is_audio.sum())], dtype=np.int64)
        write_blocks, write_offsets, read_blocks = self.cache.addresses(slot, start, end)
        parts = [ids, np.flatnonzero(~is_audio), np.flatnonzero(is_audio), write_blocks, write_offsets, read_blocks,
                 frames.reshape(-1)]
        packed = torch.from_numpy(np.concatenate([np.asarray(part, dtype=np.int64) for part in parts]))
        if self.device.type == "cuda":
            packed = packed.pin_memory()
        ids, text_rows, audio_rows, write_blocks, write_offsets, read_blocks, frames = packed.to(
            self.device, non_blocking=True).split([len(part) for part in parts])
        return _Chunk(ids, frames.view(-1, self.config.num_codebooks), text_rows, audio_rows, write_blocks, write_offsets,
                      read_blocks, start, end)

    def _by_kind(self, rows: torch.Tensor, chunk: _Chunk, text, audio) -> torch.Tensor:
        """`text` applied to the chunk's text positions and `audio` to its audio positions."""
        if not chunk.audio_rows.shape[0]:
            return text(rows)
        if not chunk.text_rows.shape[0]:
            return audio(rows)
        text_out = text(rows.index_select(0, chunk.text_rows))
        out = text_out.new_empty((rows.shape[0],) + text_out.shape[1:])
        out.index_copy_(0, chunk.text_rows, text_out)
        return out.index_copy_(0, chunk.audio_rows, audio(rows.index_select(0, chunk.audio_rows)))

    def _prefill_attention(self, index: int, layer: _Layer, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                           chunk: _Chunk, visible: torch.Tensor) -> torch.Tensor:
        length, head_dim = normed.shape[0], self.config.head_dim
        states = F.linear(normed, *layer.qkv).view(1, length, -1, head_dim).transpose(1, 2)
        query, key = apply_rotary_pos_emb(states[:, :self.heads], states[:, self.heads:self.heads + self.kv_heads], cos, sin)
        value = states[:, self.heads + self.kv_heads:]
        keys, values = self.cache.keys[index], self.cache.values[index]
        keys[chunk.write_blocks, :, chunk.write_offsets] = key[0].transpose(0, 1)
        values[chunk.write_blocks, :, chunk.write_offsets] = value[0].transpose(0, 1)
        # The slot's positions [0, end), read through its blocks: (1, kv_heads, end, head_dim).
        context_keys, context_values = (
            pool.index_select(0, chunk.read_blocks).transpose(0, 1).reshape(1, self.kv_heads, -1, head_dim)[:, :, :chunk.end]
            for pool in (keys, values))
        group = self.heads // self.kv_heads
        out = F.scaled_dot_product_attention(query, repeat_kv(context_keys, group), repeat_kv(context_values, group),
                                             attn_mask=visible, scale=self.scale)
        attention = layer.module.self_attn
        return F.linear(out.transpose(1, 2).reshape(length, -1), attention.o_proj.weight, attention.o_proj.bias)

    # --- decode ---
    def decode(self, slots: torch.Tensor, frames: torch.Tensor, live: LiveBlocks | None) -> torch.Tensor:
        """Feeds one frame (codebooks,) per row to the sequences of `slots` (padding rows name the
        scratch slot), attending over each row's cached positions and the new one (`live`: the
        kernels' `attention_batch`); returns (rows, codebooks, codebook_size) float32."""
        cache, kernels, inner = self.cache, self.kernels, self.model.model
        rows = slots.shape[0]
        positions = cache.lengths[slots]
        lengths = positions + 1
        block_rows = cache.block_table[slots]
        at = AppendAt(block_rows.gather(1, (positions // BLOCK_SIZE)[:, None])[:, 0], positions % BLOCK_SIZE)
        hidden = inner.embed_audio_tokens(frames)  # (rows, hidden)
        cos, sin = inner.rotary_emb(hidden, positions[:, None])
        delta = None
        for index, layer in enumerate(self.layers):
            keys, values = cache.keys[index], cache.values[index]
            hidden, normed = kernels.add_rms_norm(hidden, delta, layer.input_norm)
            query = kernels.rotary_append(kernels.linear(layer.decode_qkv, normed), cos, sin, keys, values, at)
            context = kernels.attention(query, keys, values, block_rows, lengths, live, self.scale)
            hidden, normed = kernels.add_rms_norm(hidden, kernels.linear(layer.decode_o, context.reshape(rows, -1)),
                                                  layer.post_norm)
            delta = kernels.linear(layer.decode_down, kernels.silu_mul(kernels.linear(layer.decode_gate_up, normed)))
        _, normed = kernels.add_rms_norm(hidden, delta, self.final_norm)
        logits = kernels.linear(self.audio_head, normed)
        cache.lengths[slots] = lengths
        cache.lengths[cache.scratch_slot:].zero_()  # (a Python 0 assigned would be a host-to-device copy)
        return self._frame_logits(logits)

    def _frame_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().reshape(logits.shape[0], self.config.num_codebooks, self.config.codebook_size)


def _mlp(gate_up: tuple[torch.Tensor, torch.Tensor | None], mlp, rows: torch.Tensor) -> torch.Tensor:
    gate, up = F.linear(rows, *gate_up).chunk(2, dim=-1)
    return F.linear(mlp.act_fn(gate) * up, mlp.down_proj.weight, mlp.down_proj.bias)
