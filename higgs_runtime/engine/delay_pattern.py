"""Higgs Audio's delay pattern: codebook k lags k frames behind codebook 0.

Codes are (codebooks, frames) as the audio tokenizer produces them; frames are (steps, codebooks)
as the model consumes and emits them.
"""

from __future__ import annotations

import numpy as np


def add_delay_pattern(codes: np.ndarray, stream_bos: int, stream_eos: int) -> np.ndarray:
    """Codes of one clip -> the frames the model reads: a stream-begin column, the codes, a
    stream-end column, each codebook shifted by its index (begin-filled before, end-filled after)."""
    num_codebooks, length = codes.shape
    bracketed = np.concatenate([
        np.full((num_codebooks, 1), stream_bos), codes, np.full((num_codebooks, 1), stream_eos)
    ], axis=1)
    span = length + 2
    frames = np.full((span + num_codebooks - 1, num_codebooks), stream_eos, dtype=np.int64)
    for k in range(num_codebooks):
        frames[:k, k] = stream_bos
        frames[k:k + span, k] = bracketed[k]
    return frames


def steps_for_frames(frames: int, num_codebooks: int) -> int:
    """Decoding steps that give `frames` frames of audio: the first step emits the all-begin frame and
    codebook k starts k steps late, so the first complete frame comes with step `num_codebooks + 1`
    (each step after it completes one more). Fewer steps give no audio at all."""
    return frames + num_codebooks


def undo_delay_pattern(frames: np.ndarray) -> np.ndarray:
    """Generated frames (without the leading all-begin frame and the closing all-end frame) ->
    codes (codebooks, frames - codebooks + 1), as the model emitted them: a codebook may hold a
    stream marker where the others still speak (the codec plays it as the nearest real code). Kept
    unclipped, a later turn's prompt holds exactly what the model read, so a continued context
    agrees with it to the end."""
    steps, num_codebooks = frames.shape
    length = steps - num_codebooks + 1
    if length <= 0:
        return np.zeros((num_codebooks, 0), dtype=np.int64)
    return np.stack([frames[k:k + length, k] for k in range(num_codebooks)])
