"""One codec decode per round for all the streams that have audio due.

Each stream's `StreamingDecoder` yields decode windows; at hundreds of audio-seconds per second a
decode per stream per chunk would serialise on one thread. Here a worker thread takes every window
waiting at that moment and decodes them together (`Codec.decode_batch`), off the event loop; on GPU
it runs on a CUDA stream of its own, below the engine's in priority, so decoding overlaps the
engine's steps without delaying them. Batched, a window's
samples can differ from a lone decode's by float rounding (within the streaming tolerance). Final
windows (the end of a stream, whose last samples padding would change) and whole-response decodes
are decoded alone, so a whole response's audio is the same bits at any load.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from .codec import Codec

log = logging.getLogger(__name__)


@dataclass
class _Job:
    codes: np.ndarray
    exact: bool
    future: concurrent.futures.Future


# Windows per decode call. On CPU (single-threaded, see cpu_threads) 4 to 8 windows of 37 frames
# cost 0.75x of decoding them one by one, 16 cost 2.7x (the activations no longer fit the caches).
CPU_MAX_BATCH = 8
GPU_MAX_BATCH = 64


class CodecDecodeBatcher:
    def __init__(self, codec: Codec, max_batch: int | None = None):
        self.codec = codec
        self.max_batch = max_batch or (CPU_MAX_BATCH if codec.device.type == "cpu" else GPU_MAX_BATCH)
        self._pending: collections.deque[_Job] = collections.deque()
        self._wakeup = threading.Condition()
        self._stopping = False
        # Priority 0 is CUDA's lowest; the engine's stream has a higher one.
        self._stream = torch.cuda.Stream(codec.device, priority=0) if codec.device.type == "cuda" else None
        self.rounds = self.clips = 0  # decode calls made, clips decoded
        self._thread = threading.Thread(target=self._loop, name="codec-decoder", daemon=True)
        self._thread.start()

    async def decode(self, codes: np.ndarray, exact: bool = False) -> np.ndarray:
        """codes (codebooks, frames) -> 24 kHz float32. Not `exact`: the caller discards the samples
        near the end (a streaming window with lookahead), so the clip may be padded in a batch.
        `exact`: decoded alone, bit for bit what `Codec.decode` gives."""
        return await asyncio.wrap_future(self.submit(codes, exact))

    def submit(self, codes: np.ndarray, exact: bool = False) -> concurrent.futures.Future:
        job = _Job(codes, exact, concurrent.futures.Future())
        with self._wakeup:
            self._pending.append(job)
            self._wakeup.notify()
        return job.future

    def close(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            with self._wakeup:
                self._wakeup.wait_for(lambda: self._stopping or self._pending)
                if self._stopping:
                    break
                jobs = [self._pending.popleft() for _ in range(min(len(self._pending), self.max_batch))]
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]  # not if the stream left
            for group in _groups(jobs):
                self._run(group)
        for job in self._pending:
            job.future.cancel()

    def _run(self, group: list[_Job]) -> None:
        try:
            with torch.cuda.stream(self._stream) if self._stream is not None else nullcontext():
                audio = ([self.codec.decode(group[0].codes)] if len(group) == 1
                         else self.codec.decode_batch([job.codes for job in group]))
        except Exception as exc:  # the streams waiting on this round fail; the decoder goes on
            log.exception("codec decode failed")
            for job in group:
                job.future.set_exception(exc)
            return
        self.rounds += 1
        self.clips += len(group)
        for job, samples in zip(group, audio):
            job.future.set_result(samples)


def _groups(jobs: list[_Job]) -> list[list[_Job]]:
    """Paddable windows together; exact ones alone."""
    paddable = [job for job in jobs if not job.exact]
    return ([paddable] if paddable else []) + [[job] for job in jobs if job.exact]
