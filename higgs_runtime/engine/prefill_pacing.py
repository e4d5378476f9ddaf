"""Pacing prompt prefill against the playback of running streams.

A listener's player holds about one streamed chunk (`window_frames` frames, 1 s at the defaults), so
a stream stalls when some run of `window_frames` consecutive frames takes longer than the audio they
carry. A prefill chunk can cost several decoding steps (on CPU a 128-token chunk against a 1300-token
voice prompt takes as long as five), and a cold voice needs ten of them: run back to back, they
starve every running stream for over a second.

So before each round of prefill the scheduler asks the pacer. The round runs only if, for every
running stream, the frames of its latest window plus the round's predicted cost and one decoding
step still fit within `share` of the window's audio duration (the rest is left for decoding the
chunk's audio and sending it); otherwise the step decodes only and the prefill waits for the
streams to gain a lead. Costs are moving averages of measured times. When decoding alone is slower
than realtime no lead ever builds up, so a round deferred `max_deferred_steps` steps in a row runs
anyway: arrivals still make progress.
"""

from __future__ import annotations

import collections
from typing import Iterable

FrameTimes = collections.deque  # a running stream's latest frame times (host clock), at most one window


def _moving_average(previous: float | None, sample: float, weight: float = 0.3) -> float:
    return sample if previous is None else previous + weight * (sample - previous)


class PrefillPacer:
    def __init__(self, window_frames: int, frames_per_second: float, share: float = 0.8,
                 max_deferred_steps: int | None = None):
        """`window_frames` 0 turns pacing off: every round runs at once."""
        self.window_frames = window_frames
        self.budget_seconds = window_frames / frames_per_second * share
        self.max_deferred_steps = window_frames if max_deferred_steps is None else max_deferred_steps
        self._decode_seconds: float | None = None
        self._prefill_seconds: float | None = None
        self._deferred = 0
        self.deferred_total = 0  # steps that decoded while a round waited, since start

    def frame_times(self) -> FrameTimes:
        """A new stream's record of frame times (the scheduler appends to it), for `may_prefill`."""
        return collections.deque(maxlen=max(self.window_frames, 1))

    @property
    def enabled(self) -> bool:
        return self.window_frames > 0

    def decode_took(self, seconds: float) -> None:
        self._decode_seconds = _moving_average(self._decode_seconds, seconds)

    def prefill_took(self, seconds: float) -> None:
        self._prefill_seconds = _moving_average(self._prefill_seconds, seconds)

    def may_prefill(self, streams: Iterable[FrameTimes], now: float) -> bool:
        """Whether a prefill round may run now, given the running streams' frame times."""
        if not self.enabled:
            return True
        expected_next_frame = now + (self._prefill_seconds or 0.0) + (self._decode_seconds or 0.0)
        # The window that ends with each stream's next frame starts at its oldest recorded frame once
        # a window's worth is recorded; a younger stream is measured from its first frame.
        fits = all(expected_next_frame - times[0] <= self.budget_seconds for times in streams if times)
        if fits or self._deferred >= self.max_deferred_steps:
            self._deferred = 0
            return True
        self._deferred += 1
        self.deferred_total += 1
        return False
