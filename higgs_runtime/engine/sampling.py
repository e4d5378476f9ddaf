"""Per-request choice of the next audio frame from the model's logits.

Follows transformers' Higgs Audio v2 generation step by step (delay-pattern forcing of stream
begin/end, temperature, top-k, top-p, then repetition-aware sampling) so greedy output matches
`generate()`, but each request has its own parameters and its own random generator: its frames
depend only on its inputs and seed, never on the rest of the batch.
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
    ras_window: int = 7  # 0 turns repetition-aware sampling off
    ras_max_repeat: int = 2


class FrameSampler:
    """State of one request's audio stream: which codebooks are still forced to begin or end."""

    def __init__(self, params: SamplingParams, num_codebooks: int, stream_bos: int, stream_eos: int,
                 history: torch.Tensor, device: torch.device):
        self.params = params
        self.stream_bos, self.stream_eos = stream_bos, stream_eos
        self.generator = torch.Generator(device=device)
        if params.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(params.seed)
        delays = torch.arange(num_codebooks, device=device)
        # The prompt ends with <|audio_out_bos|>: the first frame is all stream-begin and codebook k
        # keeps emitting it for k more frames.
        self._begin_countdown = delays.clone()
        # Once any codebook ends, codebook k is forced to stream-end k + 1 frames later.
        self._end_countdown = delays + 1
        self.ending = False
        # The last `ras_window` frames the model has seen (reference audio first, then generated).
        self._history = history[-params.ras_window:].to(device) if params.ras_window else history[:0]

    def next_frame(self, logits: torch.Tensor) -> torch.Tensor:
        """logits: (codebooks, codebook_size) float32 -> the next frame (codebooks,)."""
        scores = self._force_stream_markers(logits.clone())
        if self.params.temperature > 0:
            scores = self._warp(scores)
            frame = torch.multinomial(scores.softmax(-1), 1, generator=self.generator).squeeze(1)
        else:
            frame = scores.argmax(-1)
        frame = self._resample_repeats(frame, logits)
        ended = frame == self.stream_eos
        self.ending = self.ending or bool(ended.any())
        if self.params.ras_window:
            self._history = torch.cat([self._history, frame[None]])[-self.params.ras_window:]
        return frame

    def _force_stream_markers(self, scores: torch.Tensor) -> torch.Tensor:
        begin_rows = self._begin_countdown >= 0
        scores[begin_rows] = torch.where(
            torch.arange(scores.shape[-1], device=scores.device) == self.stream_bos, scores[begin_rows], -torch.inf)
        self._begin_countdown[begin_rows] -= 1
        if self.ending:
            self._end_countdown -= 1
        end_rows = self._end_countdown <= 0
        scores[end_rows] = torch.where(
            torch.arange(scores.shape[-1], device=scores.device) == self.stream_eos, scores[end_rows], -torch.inf)
        return scores

    def _warp(self, scores: torch.Tensor) -> torch.Tensor:
        scores = scores / self.params.temperature
        if self.params.top_k > 0:
            k = min(self.params.top_k, scores.shape[-1])
            kth_best = torch.topk(scores, k, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth_best, -torch.inf)
        if self.params.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
            cumulative = sorted_scores.softmax(-1).cumsum(-1)
            drop_sorted = cumulative <= 1 - self.params.top_p
            drop_sorted[..., -1:] = False  # always keep the most likely code
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            scores = scores.masked_fill(drop, -torch.inf)
        return scores

    def _resample_repeats(self, frame: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Repetition-aware sampling: a code already seen `ras_max_repeat` times in the window is
        drawn again from the untempered distribution."""
        if not self.params.ras_window or len(self._history) == 0:
            return frame
        window = self._history
        counted = (window != self.stream_bos) & (window != self.stream_eos)
        repeats = ((window == frame[None]) & counted).sum(0)
        redraw = repeats >= self.params.ras_max_repeat
        if redraw.any():
            frame = frame.clone()
            frame[redraw] = torch.multinomial(logits[redraw].softmax(-1), 1, replacement=True,
                                              generator=self.generator).view(-1)
        return frame
