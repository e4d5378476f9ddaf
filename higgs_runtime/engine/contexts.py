"""Kept contexts: the KV of a finished generation (its prompt and the frames fed back to the model)
left in its cache blocks, so the next turn of the same conversation computes only what it adds.

A context records the sequence its KV holds: each position's token id, and at audio positions the
audio frame, which is all the model reads there (the id only marks the position as audio). A
continuation brings the whole prompt of its next turn; the engine reuses the context up to the first
position where the two differ and computes the rest. So whatever the caller changed (a re-based
history, audio cut short by a barge-in or by the length limit), the continued KV holds exactly the
sequence of the new prompt.

A kept context holds its blocks (the admission counts them) but no decoding slot. Its owner releases
it when the conversation ends; an idle one is released after a time limit, and the least recently
used idle ones make room when a new request could not be admitted otherwise. A continuation whose
context is gone simply computes its prompt afresh."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..prompts import Prompt

AUDIO_POSITION = -1  # the id recorded at audio positions, whose frame is compared instead


@dataclass(frozen=True)
class Sequence:
    """What a KV cache holds, position by position: ids (AUDIO_POSITION where audio), and the audio
    positions' frames in order."""

    ids: np.ndarray  # (positions,) int64
    frames: np.ndarray  # (audio positions, codebooks) int64

    @classmethod
    def of_prompt(cls, prompt: Prompt, audio_token_ids: tuple[int, ...]) -> "Sequence":
        ids = np.asarray(prompt.input_ids, dtype=np.int64)
        return cls(np.where(np.isin(ids, audio_token_ids), AUDIO_POSITION, ids),
                   np.asarray(prompt.audio_frames, dtype=np.int64))

    def extended(self, frames: list[np.ndarray]) -> "Sequence":
        """This sequence followed by audio positions holding `frames`."""
        if not frames:
            return self
        return Sequence(np.concatenate([self.ids, np.full(len(frames), AUDIO_POSITION, dtype=np.int64)]),
                        np.concatenate([self.frames, np.stack(frames).astype(np.int64)]))

    def truncated(self, length: int) -> "Sequence":
        audio = int(np.count_nonzero(self.ids[:length] == AUDIO_POSITION))
        return Sequence(self.ids[:length], self.frames[:audio])

    def common_prefix(self, other: "Sequence") -> int:
        """How many leading positions the two sequences share (ids, and frames at audio positions)."""
        span = min(len(self.ids), len(other.ids))
        differ = np.flatnonzero(self.ids[:span] != other.ids[:span])
        same = int(differ[0]) if len(differ) else span
        audio = int(np.count_nonzero(self.ids[:same] == AUDIO_POSITION))
        frames_differ = np.flatnonzero((self.frames[:audio] != other.frames[:audio]).any(axis=1))
        if len(frames_differ):  # the first differing frame's position
            same = int(np.flatnonzero(self.ids == AUDIO_POSITION)[frames_differ[0]])
        return same


@dataclass(eq=False)  # identity: each context is its own
class Context:
    """A conversation's KV, kept between turns. Only the engine thread changes it."""

    blocks: list[int]
    sequence: Sequence
    last_used: float = field(default_factory=time.monotonic)
    released: bool = False  # its blocks went back to the pool: a continuation computes afresh

    @property
    def length(self) -> int:
        return len(self.sequence.ids)
