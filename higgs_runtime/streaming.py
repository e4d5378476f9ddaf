"""Incremental audio from generated frames: the delay pattern undone as frames arrive and the codec
decoded in chunks with left context and a short lookahead, so the concatenated chunks equal the
one-shot decode (up to float rounding) and chunk boundaries carry no clicks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .codec import Codec


@dataclass(frozen=True)
class StreamingConfig:
    first_chunk_frames: int = 10  # 0.4 s of audio: the first chunk comes early
    chunk_frames: int = 25  # then one second at a time
    left_context_frames: int = 8  # codec receptive field to the left
    lookahead_frames: int = 4  # and to the right: samples near the end of a window wait for later frames


class StreamingDecoder:
    def __init__(self, codec: "Codec", num_codebooks: int, config: StreamingConfig = StreamingConfig()):
        self.codec = codec
        self.config = config
        self.num_codebooks = num_codebooks
        self._generated: list[np.ndarray] = []
        self._emitted = 0  # audio frames already returned

    def push(self, frame: np.ndarray) -> bool:
        """Adds one generated frame; True when a chunk is ready for `take()`."""
        self._generated.append(frame)
        due = self.config.first_chunk_frames if self._emitted == 0 else self.config.chunk_frames
        return self._safe_frames() - self._emitted >= due

    def frames_until_chunk(self) -> int:
        """How many more generated frames the next chunk needs."""
        due = self.config.first_chunk_frames if self._emitted == 0 else self.config.chunk_frames
        needed = self._emitted + due + self.config.lookahead_frames + self.num_codebooks - 1
        return max(1, needed - len(self._generated))

    def take(self) -> np.ndarray:
        """The audio that can no longer change, 24 kHz float32."""
        return self._decode_until(self._safe_frames())

    def finish(self) -> np.ndarray:
        """Everything not yet returned, once generation has ended."""
        return self._decode_until(self._complete_frames(), lookahead=False)

    def _complete_frames(self) -> int:
        # Audio frame j is complete once codebook 7 has produced it, in generated frame j + 7.
        return max(0, len(self._generated) - self.num_codebooks + 1)

    def _safe_frames(self) -> int:
        return max(self._emitted, self._complete_frames() - self.config.lookahead_frames)

    def _decode_until(self, end: int, lookahead: bool = True) -> np.ndarray:
        if end <= self._emitted:
            return np.zeros(0, dtype=np.float32)
        start = max(0, self._emitted - self.config.left_context_frames)
        stop = self._complete_frames() if lookahead else end
        codes = self._codes(start, stop)
        audio = self.codec.decode(codes)
        hop = self.codec.samples_per_frame
        chunk = audio[(self._emitted - start) * hop:(end - start) * hop]
        self._emitted = end
        return chunk

    def _codes(self, start: int, stop: int) -> np.ndarray:
        """Audio frames [start, stop) with the delay undone: codebook k of frame j is in generated frame j + k."""
        columns = [[self._generated[j + k][k] for j in range(start, stop)] for k in range(self.num_codebooks)]
        return np.clip(np.array(columns, dtype=np.int64), 0, self.codec.codebook_size - 1)
