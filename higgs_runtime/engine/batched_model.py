"""The model's forward passes for serving: prefill one request into a cache slot, and decode one
frame for many requests at once over a preallocated, bounded KV cache.

Prefill runs transformers' own forward (mixed text and audio positions, dual FFN routing) and
copies the keys and values into the request's slot. Decode positions are all audio, so the step
applies each layer's audio path directly, reading the model's own weights.

On CPU the decode path's weights are prepacked for oneDNN: at a few rows it is several times faster
than MKL's GEMM, and each row's result is the same whatever the batch size (MKL changes its
blocking with the row count), which keeps a request's output independent of its neighbours. On GPU
decode batches are padded to a power of two, a few static shapes that suit CUDA graphs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache
from transformers.models.higgs_audio_v2.modeling_higgs_audio_v2 import apply_rotary_pos_emb

# oneDNN packs weights for an expected row count; any count then works, and gives the same bits.
PACKING_ROWS_HINT = 8


def decode_batch_size(active: int, device: torch.device) -> int:
    if device.type == "cpu":
        return active
    size = 1
    while size < active:
        size *= 2
    return size


class DecodeLinears:
    """Applies the model's linear layers on the decode path, through prepacked oneDNN weights on CPU."""

    def __init__(self, model, device: torch.device):
        self._packed = {}
        if device.type == "cpu" and torch.backends.mkldnn.is_available():
            modules = [model.audio_lm_head]
            for layer in model.model.layers:
                attention, mlp = layer.self_attn, layer.audio_mlp
                modules += [attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj,
                            mlp.gate_proj, mlp.up_proj, mlp.down_proj]
            self._packed = {module: torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), PACKING_ROWS_HINT)
                            for module in modules}

    def __call__(self, module: torch.nn.Linear, rows: torch.Tensor) -> torch.Tensor:
        """rows: (batch, in_features) -> (batch, out_features)."""
        packed = self._packed.get(module)
        if packed is None:
            return F.linear(rows, module.weight, module.bias)
        return torch.ops.mkldnn._linear_pointwise(rows, packed, module.bias, "none", [], "")

    def mlp(self, mlp, rows: torch.Tensor) -> torch.Tensor:
        return self(mlp.down_proj, mlp.act_fn(self(mlp.gate_proj, rows)) * self(mlp.up_proj, rows))


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


class BatchedModel:
    def __init__(self, model, num_slots: int, max_len: int):
        self.model = model
        self.config = model.config
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.cache = SlotKVCache(self.config, num_slots, max_len, self.device, self.dtype)
        self.linears = DecodeLinears(model, self.device)

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

    @torch.inference_mode()
    def decode(self, slots: list[int], frames: torch.Tensor) -> torch.Tensor:
        """Feeds one frame (codebooks,) per slot; returns (len(slots), codebooks, codebook_size) float32."""
        active = len(slots)
        size = decode_batch_size(active, self.device)
        cache = self.cache
        slot_index = torch.tensor(slots + [cache.scratch_slot] * (size - active), device=self.device)
        frames = torch.cat([frames.to(self.device),
                            frames.new_zeros((size - active, frames.shape[1])).to(self.device)])
        positions = cache.lengths[slot_index].clone()
        positions[active:] = 0
        inner, linear = self.model.model, self.linears
        hidden = inner.embed_audio_tokens(frames)  # (batch, hidden)
        cos, sin = inner.rotary_emb(hidden, positions[:, None])
        visible = (torch.arange(cache.max_len, device=self.device)[None, :] <= positions[:, None])[:, None, None, :]
        rows = torch.arange(size, device=self.device)
        for index, layer in enumerate(inner.layers):
            attention = layer.self_attn
            normed = layer.audio_input_layernorm(hidden)
            shape = (size, -1, 1, attention.head_dim)  # (batch, heads, one position, head_dim)
            query = linear(attention.q_proj, normed).view(shape)
            key = linear(attention.k_proj, normed).view(shape)
            value = linear(attention.v_proj, normed).view(shape)
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            keys, values = cache.keys[index], cache.values[index]
            keys[slot_index, :, positions] = key[rows, :, 0]
            values[slot_index, :, positions] = value[rows, :, 0]
            context = F.scaled_dot_product_attention(
                query, keys[slot_index], values[slot_index], attn_mask=visible,
                scale=attention.scaling, enable_gqa=True)
            hidden = hidden + linear(attention.o_proj, context.reshape(size, -1))
            hidden = hidden + linear.mlp(layer.audio_mlp, layer.audio_post_attention_layernorm(hidden))
        logits = linear(self.model.audio_lm_head, inner.norm(hidden))
        cache.lengths[slot_index[:active]] += 1
        return self._frame_logits(logits[:active])

    def _frame_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().reshape(logits.shape[0], self.config.num_codebooks, self.config.codebook_size)
