"""Incremental audio from generated frames: the delay pattern undone as frames arrive and the codec
decoded in chunks with left context and a short lookahead, so the concatenated chunks equal the
one-shot decode (up to float rounding) and chunk boundaries carry no clicks.

The decoder says which codes to decode next (`next_window`) and keeps the right samples of the
result (`DecodeWindow.keep`); who runs the codec is up to the caller: `take`/`finish` decode here, a
server hands the windows of all its streams to one batched decode (`codec_batching`)."""

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


@dataclass(frozen=True)
class DecodeWindow:
    """Codes to decode (with left context and, unless final, lookahead) and which samples are new."""

    codes: np.ndarray  # (codebooks, frames)
    keep_start: int  # samples
    keep_stop: int
    final: bool  # decoded up to the stream's end: padding the codes would change the kept samples

    def keep(self, audio: np.ndarray) -> np.ndarray:
        return audio[self.keep_start:self.keep_stop]


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
        return self._decode_here(self.next_window())

    def finish(self) -> np.ndarray:
        """Everything not yet returned, once generation has ended."""
        return self._decode_here(self.next_window(final=True))

    def next_window(self, final: bool = False) -> DecodeWindow | None:
        """The next codes to decode: what can no longer change, or (final) everything left once
        generation has ended; None when there is nothing new. Counts its audio as returned."""
        end = self._complete_frames() if final else self._safe_frames()
        if end <= self._emitted:
            return None
        start = max(0, self._emitted - self.config.left_context_frames)
        stop = end if final else self._complete_frames()
        hop = self.codec.samples_per_frame
        window = DecodeWindow(self._codes(start, stop), (self._emitted - start) * hop, (end - start) * hop, final)
        self._emitted = end
        return window

    def _decode_here(self, window: DecodeWindow | None) -> np.ndarray:
        return np.zeros(0, dtype=np.float32) if window is None else window.keep(self.codec.decode(window.codes))

    def _complete_frames(self) -> int:
        # Audio frame j is complete once codebook 7 has produced it, in generated frame j + 7.
        return max(0, len(self._generated) - self.num_codebooks + 1)

    def _safe_frames(self) -> int:
        return max(self._emitted, self._complete_frames() - self.config.lookahead_frames)

    def _codes(self, start: int, stop: int) -> np.ndarray:
        """Audio frames [start, stop) with the delay undone: codebook k of frame j is in generated frame j + k."""
        columns = [[self._generated[j + k][k] for j in range(start, stop)] for k in range(self.num_codebooks)]
        return np.array(columns, dtype=np.int64)
