"""Choosing each request's next audio frame from the model's logits, for a whole batch at once.

Follows transformers' Higgs Audio v2 generation step by step (delay-pattern forcing of stream
begin/end, temperature, top-k, top-p, then repetition-aware sampling), so greedy output matches
`generate()`. Unlike `generate()`, every request has its own parameters and its own random
generator: the math runs batched, but each row's result depends only on its own logits and seed,
never on the rest of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


class SlotSampler:
    """Per-slot stream state kept in batch tensors (which codebooks are still forced to begin or end,
    the RAS window, the sampling parameters) and one random generator per slot, so a step's work is
    a handful of batched operations whatever the batch size."""

    def __init__(self, num_slots: int, num_codebooks: int, codebook_size: int, stream_bos: int, stream_eos: int,
                 ras: RepetitionAware, device: torch.device):
        self.stream_bos, self.stream_eos, self.ras, self.device = stream_bos, stream_eos, ras, device
        codes = torch.arange(codebook_size, device=device)
        self._not_bos, self._not_eos, self._is_eos = codes != stream_bos, codes != stream_eos, codes == stream_eos
        self._delays = torch.arange(num_codebooks, device=device)
        self.begin_countdown = torch.zeros((num_slots, num_codebooks), dtype=torch.long, device=device)
        self.end_countdown = torch.zeros_like(self.begin_countdown)
        self.ending = torch.zeros(num_slots, dtype=torch.bool, device=device)
        self.window = torch.full((num_slots, ras.window, num_codebooks), -1, dtype=torch.long, device=device)
        self.temperature = torch.zeros(num_slots, device=device)
        self.top_p = torch.ones(num_slots, device=device)
        self.ignore_end = torch.zeros(num_slots, dtype=torch.bool, device=device)
        self.top_k = [0] * num_slots
        self.generators = [torch.Generator(device=device) for _ in range(num_slots)]

    def start(self, slot: int, params: SamplingParams, history: torch.Tensor) -> None:
        """Resets `slot` for a new request; `history` is the prompt's audio frames (RAS looks back into them)."""
        if params.seed is None:
            self.generators[slot].seed()
        else:
            self.generators[slot].manual_seed(params.seed)
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
        self.ignore_end[slot] = params.ignore_stream_end
        self.top_k[slot] = params.top_k

    def next_frames(self, slots: list[int], logits: torch.Tensor) -> torch.Tensor:
        """logits: (batch, codebooks, codebook_size) float32 for `slots` -> next frames (batch, codebooks)."""
        index = torch.tensor(slots, device=self.device)
        logits = logits.masked_fill(self.ignore_end[index][:, None, None] & self._is_eos, -torch.inf)
        scores = self._force_stream_markers(index, logits)
        frames = scores.argmax(-1)
        temperature = self.temperature[index]
        sampled = (temperature > 0).nonzero().flatten().tolist()
        if sampled:
            frames[sampled] = self._sample([slots[row] for row in sampled], scores[sampled], temperature[sampled])
        if self.ras.window:
            self._redraw_repeats(slots, index, frames, logits)
        self.ending[index] |= (frames == self.stream_eos).any(-1)
        return frames

    def _force_stream_markers(self, index: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        begin = self.begin_countdown[index] >= 0
        self.begin_countdown[index] -= 1
        self.end_countdown[index] -= self.ending[index, None].long()
        end = self.end_countdown[index] <= 0
        forced_away = (begin[..., None] & self._not_bos) | (end[..., None] & self._not_eos)
        return logits.masked_fill(forced_away, -torch.inf)

    def _sample(self, slots: list[int], scores: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        """Temperature, top-k and top-p per row, then a draw from each slot's own generator. Rows are
        grouped by top-k so each row's arithmetic has the same shape whatever its neighbours ask."""
        vocab = scores.shape[-1]
        groups: dict[int, list[int]] = {}
        for row, slot in enumerate(slots):
            top_k = self.top_k[slot]
            groups.setdefault(top_k if 0 < top_k < vocab else vocab, []).append(row)
        codes = torch.empty(scores.shape[:2], dtype=torch.long, device=scores.device)
        for top_k, rows in groups.items():
            group_slots = [slots[row] for row in rows]
            codes[rows] = self._sample_top_k(group_slots, scores[rows] / temperature[rows, None, None], top_k)
        return codes

    def _sample_top_k(self, slots: list[int], scores: torch.Tensor, top_k: int) -> torch.Tensor:
        ordered, order = scores.topk(top_k, dim=-1, sorted=True)
        probs = ordered.softmax(-1)
        mass_before = probs.cumsum(-1) - probs
        top_p = self.top_p[torch.tensor(slots, device=self.device)]
        ordered = ordered.masked_fill(mass_before >= top_p[:, None, None], -torch.inf)  # the best code always stays
        cumulative = ordered.softmax(-1).cumsum(-1)
        uniforms = torch.stack([torch.rand(scores.shape[1], generator=self.generators[slot], device=self.device)
                                for slot in slots])
        picks = torch.searchsorted(cumulative, (uniforms * cumulative[..., -1])[..., None], right=True)
        return order.gather(-1, picks.clamp_(max=top_k - 1)).squeeze(-1)

    def _redraw_repeats(self, slots: list[int], index: torch.Tensor, frames: torch.Tensor, logits: torch.Tensor) -> None:
        windows = self.window[index]  # (batch, window, codebooks)
        counted = (windows != self.stream_bos) & (windows != self.stream_eos)
        redraw = ((windows == frames[:, None, :]) & counted).sum(1) >= self.ras.max_repeat
        for row in redraw.any(-1).nonzero().flatten().tolist():
            codebooks = redraw[row]
            # One multinomial call per request on its own generator, as generate() draws them.
            frames[row, codebooks] = torch.multinomial(logits[row, codebooks].softmax(-1), 1, replacement=True,
                                                       generator=self.generators[slots[row]]).view(-1)
        self.window[index] = torch.cat([windows[:, 1:], frames[:, None]], dim=1)
