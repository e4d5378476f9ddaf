"""Which KV blocks hold which prompt prefix, so requests that start alike share them.

A prompt's full blocks are named by chained content hashes: block i's name covers the token ids and
audio frames of every position up to its end (everything that changes its keys and values; the
model is fixed per engine). Two requests with the same voice (system turn, scene, reference
transcript and clip) name their leading blocks alike, so the second one reuses the first one's
keys and values instead of computing them again. A changed or replaced voice changes the names, so
a stale entry is never matched; idle entries leave in least-recently-used order.
"""

from __future__ import annotations

import collections
import hashlib

import numpy as np

from .paged_attention import BLOCK_SIZE


def block_hashes(input_ids: list[int], audio_frames: np.ndarray, audio_token_ids: tuple[int, ...]) -> list[bytes]:
    """One name per full block of the prompt, each chained to the names before it."""
    ids = np.asarray(input_ids, dtype=np.int64)
    frame_of = np.cumsum(np.isin(ids, audio_token_ids)) - 1  # the audio frame at each audio position
    names, previous = [], b""
    for end in range(BLOCK_SIZE, len(ids) + 1, BLOCK_SIZE):
        start = end - BLOCK_SIZE
        digest = hashlib.blake2b(previous, digest_size=16)
        digest.update(ids[start:end].tobytes())
        audio = np.isin(ids[start:end], audio_token_ids)
        if audio.any():
            digest.update(np.ascontiguousarray(audio_frames[frame_of[start:end][audio]]).tobytes())
        previous = digest.digest()
        names.append(previous)
    return names


class PrefixIndex:
    """Names of cached blocks, and which cached blocks no request uses (evictable, oldest first).
    A bound of 0 idle blocks turns prefix caching off."""

    def __init__(self, max_idle_blocks: int):
        self.max_idle_blocks = max_idle_blocks
        self.enabled = max_idle_blocks > 0
        self._block_of: dict[bytes, int] = {}
        self._name_of: dict[int, bytes] = {}
        self._idle: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.hits = 0  # blocks reused

    @property
    def cached_blocks(self) -> int:
        return len(self._name_of)

    @property
    def idle_blocks(self) -> int:
        return len(self._idle)

    def match(self, names: list[bytes]) -> list[int]:
        """The cached blocks for the longest run of leading `names`."""
        blocks = []
        for name in names if self.enabled else ():
            block = self._block_of.get(name)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def add(self, name: bytes, block: int) -> None:
        if self.enabled and name not in self._block_of and block not in self._name_of:
            self._block_of[name], self._name_of[block] = block, name

    def is_cached(self, block: int) -> bool:
        return block in self._name_of

    def take(self, block: int) -> None:
        """A request starts using a cached block."""
        self._idle.pop(block, None)
        self.hits += 1

    def park(self, block: int) -> list[int]:
        """The last user of a cached block left: it stays, idle. Returns blocks evicted to keep the
        idle ones within bounds (they are free again)."""
        self._idle[block] = None
        evicted = []
        while len(self._idle) > self.max_idle_blocks:
            evicted.append(self.evict_oldest())
        return evicted

    def evict_oldest(self) -> int:
        block, _ = self._idle.popitem(last=False)
        del self._block_of[self._name_of.pop(block)]
        return block
