"""The model's forward passes for serving: prefill one request into a cache slot, and decode one
frame for many requests at once over a preallocated, bounded KV cache.

Prefill runs transformers' own forward (mixed text and audio positions, dual FFN routing) and
copies the keys and values into the request's slot. Decode positions are all audio, so the step
applies each layer's audio path directly, reading the model's own weights.

Decode batches are padded to a power of two (at least 4). CPU matrix kernels give each row the
same bits at those sizes whatever the other rows hold, which keeps a request's output
independent of its neighbours; on GPU the few distinct shapes suit CUDA graphs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache
from transformers.models.higgs_audio_v2.modeling_higgs_audio_v2 import apply_rotary_pos_emb

MIN_DECODE_BATCH = 4


def decode_batch_size(active: int) -> int:
    size = MIN_DECODE_BATCH
    while size < active:
        size *= 2
    return size


class SlotKVCache:
    """Keys and values for `num_slots` sequences of up to `max_len` positions, plus one scratch
    slot that absorbs the writes of padding rows."""

    def __init__(self, config, num_slots: int, max_len: int, device: torch.device, dtype: torch.dtype):
        shape = (num_slots + 1, config.num_key_value_heads, max_len, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.lengths = torch.zeros(num_slots + 1, dtype=torch.long, device=device)
        self.num_slots, self.max_len = num_slots, max_len
        self.scratch_slot = num_slots

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


class BatchedModel:
    def __init__(self, model, num_slots: int, max_len: int):
        self.model = model
        self.config = model.config
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.cache = SlotKVCache(self.config, num_slots, max_len, self.device, self.dtype)

    @torch.inference_mode()
    def prefill(self, slot: int, input_ids: list[int], audio_frames: torch.Tensor) -> torch.Tensor:
        """Runs the prompt, stores its keys/values in `slot`; returns the logits of the first frame
        as (codebooks, codebook_size) float32."""
        length = len(input_ids)
        if length >= self.cache.max_len:
            raise ValueError(f"prompt of {length} tokens does not fit the {self.cache.max_len}-token cache")
        ids = torch.tensor([input_ids], device=self.device)
        audio = None
        if len(audio_frames):
            audio = audio_frames.to(self.device)[None]
        past = DynamicCache(config=self.config)
        out = self.model(input_ids=ids, audio_input_ids=audio,
                         audio_input_ids_mask=None if audio is None else torch.ones(audio.shape[:2], dtype=torch.bool, device=self.device),
                         past_key_values=past, use_cache=True, logits_to_keep=1)
        for index, layer in enumerate(past.layers):
            self.cache.keys[index][slot, :, :length] = layer.keys[0]
            self.cache.values[index][slot, :, :length] = layer.values[0]
        self.cache.lengths[slot] = length
        return self._frame_logits(out.logits[:, -1])[0]

    def release(self, slot: int) -> None:
        self.cache.lengths[slot] = 0

    def capacity_left(self, slot: int) -> int:
        return self.cache.max_len - int(self.cache.lengths[slot])

    @torch.inference_mode()
    def decode(self, slots: list[int], frames: torch.Tensor) -> torch.Tensor:
        """Feeds one frame (codebooks,) per slot; returns (len(slots), codebooks, codebook_size) float32."""
        active = len(slots)
        size = decode_batch_size(active)
        cache = self.cache
        slot_index = torch.tensor(slots + [cache.scratch_slot] * (size - active), device=self.device)
        frames = torch.cat([frames.to(self.device),
                            frames.new_zeros((size - active, frames.shape[1])).to(self.device)])
        positions = cache.lengths[slot_index].clone()
        positions[active:] = 0
        inner = self.model.model
        hidden = inner.embed_audio_tokens(frames[:, None, :])  # (batch, 1, hidden)
        cos, sin = inner.rotary_emb(hidden, positions[:, None])
        visible = (torch.arange(cache.max_len, device=self.device)[None, :] <= positions[:, None])[:, None, None, :]
        rows = torch.arange(size, device=self.device)
        for index, layer in enumerate(inner.layers):
            attention = layer.self_attn
            residual = hidden
            normed = layer.audio_input_layernorm(hidden)
            shape = (size, 1, -1, attention.head_dim)
            query = attention.q_proj(normed).view(shape).transpose(1, 2)
            key = attention.k_proj(normed).view(shape).transpose(1, 2)
            value = attention.v_proj(normed).view(shape).transpose(1, 2)
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            keys, values = cache.keys[index], cache.values[index]
            keys[slot_index, :, positions] = key[rows, :, 0]
            values[slot_index, :, positions] = value[rows, :, 0]
            context = F.scaled_dot_product_attention(
                query, keys[slot_index], values[slot_index], attn_mask=visible,
                scale=attention.scaling, enable_gqa=True)
            hidden = residual + attention.o_proj(context.transpose(1, 2).reshape(size, 1, -1))
            hidden = hidden + layer.audio_mlp(layer.audio_post_attention_layernorm(hidden))
        hidden = inner.norm(hidden)
        logits = self.model.audio_lm_head(hidden[:, 0])
        cache.lengths[slot_index[:active]] += 1
        return self._frame_logits(logits[:active])

    def _frame_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().reshape(logits.shape[0], self.config.num_codebooks, self.config.codebook_size)
