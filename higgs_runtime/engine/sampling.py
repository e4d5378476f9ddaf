"""Choosing each request's next audio frame from the model's logits, for a whole batch at once.

Follows transformers' Higgs Audio v2 generation step by step (delay-pattern forcing of stream
begin/end, temperature, top-k, top-p, then repetition-aware sampling), so greedy output matches
`generate()`. Unlike `generate()`, every request has its own parameters and its own random stream:
the math runs batched with fixed shapes, and each row's result depends only on its own logits, its
seed and how many frames it has drawn, never on the rest of the batch.

Random numbers are counter-based: a draw's uniform is a hash of (seed, draw number, codebook,
purpose), computed with integer arithmetic (`counter_uniforms` in torch operations; one Triton
kernel on CUDA, the same integers). There is no generator object per request and no host
synchronisation, so the sampler runs inside a captured or compiled decode step.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch

_MASK32 = 0xFFFFFFFF
_SAMPLE, _REDRAW = 0, 1  # the two purposes a step draws numbers for


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 0.95
    top_k: int = 50  # 0 means off
    seed: int | None = None
    ignore_stream_end: bool = False  # benchmarks only: never end, so every request runs to its length limit


@dataclass(frozen=True)
class RepetitionAware:
    """RAS: a code already seen `max_repeat` times among its codebook's last `window` codes is drawn
    again from the untempered distribution. A window of 0 turns it off."""

    window: int = 7
    max_repeat: int = 2


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash with full avalanche, in int64 arithmetic that never overflows."""
    x = x & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    return (x >> 16) ^ x


def counter_uniforms(seed_low: torch.Tensor, seed_high: torch.Tensor, draw: torch.Tensor, purpose: int,
                     count: int) -> torch.Tensor:
    """(rows, count) uniforms in [0, 1): a pure function of each row's seed halves and draw number."""
    key = _mix32(_mix32(seed_low ^ _mix32(seed_high + purpose)) + draw)
    lanes = torch.arange(count, device=draw.device) * 0x9E3779B1
    bits = _mix32(key[:, None] ^ (lanes & _MASK32))
    return (bits >> 8).float() / float(1 << 24)


def step_uniforms(seed_low: torch.Tensor, seed_high: torch.Tensor, draws: torch.Tensor, purposes: int,
                  lanes: int) -> torch.Tensor:
    """(rows, purposes, lanes): `counter_uniforms` for each purpose."""
    return torch.stack([counter_uniforms(seed_low, seed_high, draws, purpose, lanes) for purpose in range(purposes)], 1)


def _inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Indices drawn from `probs` (..., n) with one uniform per distribution (...)."""
    cumulative = probs.cumsum(-1)
    picks = torch.searchsorted(cumulative, (uniforms * cumulative[..., -1])[..., None], right=True)
    return picks.clamp_(max=probs.shape[-1] - 1).squeeze(-1)


def top_k_bucket(top_ks: list[int], vocab: int) -> int:
    """How many best codes a batch's sampling must keep on CPU (where sorting the whole codebook
    costs): a power of two covering every row's top-k (all of them when a row has top-k off)."""
    wanted = max((k if 0 < k < vocab else vocab for k in top_ks), default=1)
    size = 1
    while size < wanted:
        size *= 2
    return min(size, vocab)


class SlotSampler:
    """Per-slot stream state kept in batch tensors (which codebooks are still forced to begin or end,
    the RAS window, the sampling parameters, the random stream's seed and position). `start` runs on
    the host when a request is admitted; `next_frames` is tensor operations only."""

    def __init__(self, num_slots: int, num_codebooks: int, codebook_size: int, stream_bos: int, stream_eos: int,
                 ras: RepetitionAware, device: torch.device, uniforms=None):
        """`uniforms(seed_low, seed_high, draws, purposes, lanes)`: (rows, purposes, lanes) counter-based
        uniforms (default: `step_uniforms`)."""
        self.stream_bos, self.stream_eos, self.ras, self.device = stream_bos, stream_eos, ras, device
        self._uniforms = uniforms or step_uniforms
        self.codebook_size = codebook_size
        codes = torch.arange(codebook_size, device=device)
        self._not_bos, self._not_eos, self._is_eos = codes != stream_bos, codes != stream_eos, codes == stream_eos
        self._delays = torch.arange(num_codebooks, device=device)
        rows = num_slots + 1  # the last row serves the padding rows of a bucketed batch
        self.begin_countdown = torch.zeros((rows, num_codebooks), dtype=torch.long, device=device)
        self.end_countdown = torch.zeros_like(self.begin_countdown)
        self.ending = torch.zeros(rows, dtype=torch.bool, device=device)
        self.window = torch.full((rows, max(ras.window, 1), num_codebooks), -1, dtype=torch.long, device=device)
        self.temperature = torch.zeros(rows, device=device)
        self.top_p = torch.ones(rows, device=device)
        self.top_k = torch.zeros(rows, dtype=torch.long, device=device)
        self.ignore_end = torch.zeros(rows, dtype=torch.bool, device=device)
        self.seed_low = torch.zeros(rows, dtype=torch.long, device=device)
        self.seed_high = torch.zeros(rows, dtype=torch.long, device=device)
        self.draws = torch.zeros(rows, dtype=torch.long, device=device)

    def start(self, slot: int, params: SamplingParams, history: torch.Tensor) -> None:
        """Resets `slot` for a new request; `history` is the prompt's audio frames (RAS looks back into them)."""
        seed = secrets.randbits(63) if params.seed is None else params.seed
        self.seed_low[slot], self.seed_high[slot] = seed & _MASK32, seed >> 32
        self.draws[slot] = 0
        # The prompt ends with <|audio_out_bos|>: the first frame is all stream-begin and codebook k
        # keeps emitting it for k more frames. Once any codebook ends, codebook k is forced to
        # stream-end k + 1 frames later.
        self.begin_countdown[slot] = self._delays
        self.end_countdown[slot] = self._delays + 1
        self.ending[slot] = False
        # The last frames the model has seen, padded in front with -1, which matches no code.
        self.window[slot] = -1
        if self.ras.window and len(history):
            recent = history[-self.ras.window:].to(self.device)
            self.window[slot, self.ras.window - len(recent):] = recent
        self.temperature[slot] = params.temperature
        self.top_p[slot] = params.top_p
        self.top_k[slot] = params.top_k if 0 < params.top_k < self.codebook_size else self.codebook_size
        self.ignore_end[slot] = params.ignore_stream_end

    def next_frames(self, slots: torch.Tensor, logits: torch.Tensor, top_k: int) -> torch.Tensor:
        """logits: (batch, codebooks, codebook_size) float32 for `slots` -> next frames (batch,
        codebooks). `top_k` (see `top_k_bucket`) covers every row's own top-k."""
        logits = logits.masked_fill(self.ignore_end[slots][:, None, None] & self._is_eos, -torch.inf)
        scores = self._force_stream_markers(slots, logits)
        temperature = self.temperature[slots]
        greedy = scores.argmax(-1)
        purposes = 2 if self.ras.window else 1
        uniforms = self._uniforms(self.seed_low[slots], self.seed_high[slots], self.draws[slots], purposes,
                                  logits.shape[1])
        sampled = self._sample(slots, scores / torch.where(temperature > 0, temperature, 1.0)[:, None, None], top_k,
                               uniforms[:, _SAMPLE])
        frames = torch.where((temperature > 0)[:, None], sampled, greedy)
        if self.ras.window:
            frames = self._redraw_repeats(slots, frames, logits, uniforms[:, _REDRAW])
        self.ending[slots] |= (frames == self.stream_eos).any(-1)
        self.draws[slots] += 1
        return frames

    def _force_stream_markers(self, slots: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        begin = self.begin_countdown[slots] >= 0
        self.begin_countdown[slots] -= 1
        self.end_countdown[slots] -= self.ending[slots, None].long()
        end = self.end_countdown[slots] <= 0
        forced_away = (begin[..., None] & self._not_bos) | (end[..., None] & self._not_eos)
        return logits.masked_fill(forced_away, -torch.inf)

    def _sample(self, slots: torch.Tensor, scores: torch.Tensor, top_k: int, uniforms: torch.Tensor) -> torch.Tensor:
        """Top-k, then top-p, then one draw per codebook from each row's own random stream."""
        ordered, order = scores.topk(top_k, dim=-1, sorted=True)
        rank = torch.arange(top_k, device=scores.device)
        ordered = ordered.masked_fill(rank >= self.top_k[slots][:, None, None], -torch.inf)
        probs = ordered.softmax(-1)
        mass_before = probs.cumsum(-1) - probs
        kept = probs.masked_fill(mass_before >= self.top_p[slots][:, None, None], 0.0)  # the best code always stays
        picks = _inverse_cdf(kept, uniforms)
        return order.gather(-1, picks[..., None]).squeeze(-1)

    def _redraw_repeats(self, slots: torch.Tensor, frames: torch.Tensor, logits: torch.Tensor,
                        uniforms: torch.Tensor) -> torch.Tensor:
        windows = self.window[slots]  # (batch, window, codebooks)
        counted = (windows != self.stream_bos) & (windows != self.stream_eos)
        redraw = ((windows == frames[:, None, :]) & counted).sum(1) >= self.ras.max_repeat
        redrawn = _inverse_cdf(logits.softmax(-1), uniforms)
        frames = torch.where(redraw, redrawn, frames)
        self.window[slots] = torch.cat([windows[:, 1:], frames[:, None]], dim=1)
        return frames
