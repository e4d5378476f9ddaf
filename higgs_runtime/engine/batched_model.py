"""The model's forward passes for serving: prefill a request's prompt into its cache blocks (in
chunks, each with the positions before it as context), and decode one frame for many requests at
once over the paged KV cache.

Prefill runs transformers' own forward (mixed text and audio positions, dual FFN routing) and
copies the keys and values into the request's blocks. Decode positions are all audio, so the step
applies each layer's audio path directly, reading the model's own weights, and attends over the
live blocks only (`paged_attention`).

On CPU the decode path's weights are prepacked for oneDNN: at a few rows it is several times faster
than MKL's GEMM, and each row's result is the same whatever the batch size (MKL changes its
blocking with the row count), which keeps a request's output independent of its neighbours. On GPU
batch rows and live blocks are padded (powers of two, multiples of 64), a few static shapes for CUDA graphs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache
from transformers.models.higgs_audio_v2.modeling_higgs_audio_v2 import apply_rotary_pos_emb

from .kv_cache import LiveBlocks, PagedKVCache
from .paged_attention import paged_attention

# oneDNN packs weights for an expected row count; any count then works, and gives the same bits.
PACKING_ROWS_HINT = 8


def bucket(count: int, device: torch.device, limit: int) -> int:
    """Decode batch rows: exact on CPU, the next power of two (at most `limit`) on GPU, a few static
    shapes that CUDA graphs can be captured for."""
    if device.type == "cpu":
        return count
    size = 1
    while size < count:
        size *= 2
    return min(size, limit)


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


class BatchedModel:
    def __init__(self, model, num_slots: int, max_len: int, kv_budget_tokens: int, prefix_cache_tokens: int | None = None):
        self.model = model
        self.config = model.config
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.num_slots = num_slots
        self.cache = PagedKVCache(self.config, num_slots, max_len, kv_budget_tokens, self.device, self.dtype,
                                  prefix_cache_tokens)
        self.linears = DecodeLinears(model, self.device)

    @torch.inference_mode()
    def prefill(self, slot: int, input_ids: list[int], audio_frames: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Runs prompt positions [start, end), with the slot's cached positions [0, start) as context,
        and stores their keys/values in the slot's blocks (given beforehand with `cache.ensure`).
        Returns the logits of the frame after position end - 1, (codebooks, codebook_size) float32."""
        past = DynamicCache(config=self.config)
        for layer in range(self.config.num_hidden_layers if start else 0):
            keys, values = self.cache.read(slot, layer, start)
            past.update(keys[None], values[None], layer)
        ids = torch.tensor([input_ids[start:end]], device=self.device)
        audio_positions = (ids[0] == self.config.audio_token_id) | (ids[0] == self.config.audio_delay_token_id)
        audio = None
        if bool(audio_positions.any()):
            first = sum(token in self.audio_token_ids for token in input_ids[:start])
            audio = audio_frames[first:first + int(audio_positions.sum())].to(self.device)[None]
        out = self.model(input_ids=ids, audio_input_ids=audio,
                         audio_input_ids_mask=None if audio is None else torch.ones(audio.shape[:2], dtype=torch.bool, device=self.device),
                         past_key_values=past, use_cache=True, logits_to_keep=1)
        self.cache.store(slot, start, [layer.keys[0, :, start:] for layer in past.layers],
                         [layer.values[0, :, start:] for layer in past.layers])
        return self._frame_logits(out.logits[:, -1])[0]

    @property
    def audio_token_ids(self) -> tuple[int, int]:
        """The prompt tokens that stand for audio frames (clip frames, then the delay-pattern tail)."""
        return self.config.audio_token_id, self.config.audio_delay_token_id

    def decode(self, slots: torch.Tensor, frames: torch.Tensor, live: LiveBlocks) -> torch.Tensor:
        """Feeds one frame (codebooks,) per row to the sequences of `slots` (padding rows name the
        scratch slot) and attends over the `live` blocks (which include each row's new position);
        returns (rows, codebooks, codebook_size) float32. Tensor operations only: capturable."""
        cache, inner, linear = self.cache, self.model.model, self.linears
        size = slots.shape[0]
        positions = cache.lengths[slots]
        block_rows = cache.block_table[slots]
        lengths = positions + 1
        hidden = inner.embed_audio_tokens(frames)  # (batch, hidden)
        cos, sin = inner.rotary_emb(hidden, positions[:, None])
        for index, layer in enumerate(inner.layers):
            attention = layer.self_attn
            normed = layer.audio_input_layernorm(hidden)
            shape = (size, -1, 1, attention.head_dim)  # (batch, heads, one position, head_dim)
            query = linear(attention.q_proj, normed).view(shape)
            key = linear(attention.k_proj, normed).view(shape)
            value = linear(attention.v_proj, normed).view(shape)
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
            cache.append(index, block_rows, positions, key[:, :, 0], value[:, :, 0])
            keys, values = cache.gather(index, live)
            context = paged_attention(query[:, :, 0], keys, values, live.rows, live.positions, lengths,
                                      attention.scaling)
            hidden = hidden + linear(attention.o_proj, context.reshape(size, -1))
            hidden = hidden + linear.mlp(layer.audio_mlp, layer.audio_post_attention_layernorm(hidden))
        logits = linear(self.model.audio_lm_head, inner.norm(hidden))
        cache.lengths[slots] = lengths
        cache.lengths[cache.scratch_slot] = 0
        return self._frame_logits(logits)

    def _frame_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().reshape(logits.shape[0], self.config.num_codebooks, self.config.codebook_size)
