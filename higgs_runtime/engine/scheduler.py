"""Continuous batching: one thread owns the model; at every decoding step it admits waiting
requests into free cache slots (prefill), decodes one frame for every running request, and
finishes requests the moment they end, while the others go on."""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass

import numpy as np
import torch

from .batched_model import BatchedModel
from .requests import GenerationRequest, QueueFull, RequestHandle
from .sampling import RepetitionAware, SlotSampler

log = logging.getLogger(__name__)


@dataclass(eq=False)  # identity: two running requests are never "equal"
class _Running:
    handle: RequestHandle
    slot: int
    last_frame: torch.Tensor


class Scheduler:
    def __init__(self, model, max_batch_size: int, max_queue_size: int, max_seq_len: int,
                 ras: RepetitionAware = RepetitionAware(), on_load_change=None):
        self.batched = BatchedModel(model, max_batch_size, max_seq_len)
        self.config = model.config
        self.sampler = SlotSampler(max_batch_size, self.config.num_codebooks, self.config.codebook_size,
                                   self.config.audio_stream_bos_id, self.config.audio_stream_eos_id, ras,
                                   self.batched.device)
        self.max_queue_size = max_queue_size
        self._waiting: collections.deque[RequestHandle] = collections.deque()
        self._running: list[_Running] = []
        self._free_slots = list(range(max_batch_size))
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="engine-scheduler", daemon=True)
        # Called with (queue depth, running requests) whenever they change.
        self._on_load_change = on_load_change
        self._last_load = (0, 0)

    # --- public, any thread ---
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify_all()
        self._thread.join(timeout=30)

    def submit(self, request: GenerationRequest, follow_up: bool = False) -> RequestHandle:
        """Queues a request. Up to the free slots plus `max_queue_size` wait at once; beyond that a new
        request gets `QueueFull`. A `follow_up` (the next text chunk of a request already admitted) is
        never refused and goes ahead of new arrivals, so an accepted request never fails half-way."""
        handle = RequestHandle(request)
        with self._wakeup:
            if follow_up:
                self._waiting.appendleft(handle)
            else:
                if len(self._waiting) >= self.max_queue_size + len(self._free_slots):
                    raise QueueFull(f"the server is busy: {len(self._running)} requests are generating and "
                                    f"{len(self._waiting)} are queued (the limit); retry shortly")
                self._waiting.append(handle)
            self._wakeup.notify_all()
        return handle

    @property
    def running_count(self) -> int:
        return len(self._running)

    # --- the scheduler thread ---
    def _report_load(self) -> None:
        load = (len(self._waiting), len(self._running))
        if self._on_load_change and load != self._last_load:
            self._last_load = load
            self._on_load_change(*load)

    def _loop(self) -> None:
        while True:
            with self._wakeup:
                self._report_load()
                self._wakeup.wait_for(lambda: self._stopping or self._waiting or self._running)
                if self._stopping:
                    break
            try:
                self._admit()
                self._report_load()
                if self._running:
                    self._decode_step()
            except Exception as exc:  # a fault in one step fails the requests in it, not the engine
                log.exception("engine step failed")
                for running in list(self._running):
                    self._finish(running, "error", f"internal engine error: {type(exc).__name__}")
        for running in list(self._running):
            self._finish(running, "cancelled")
        for handle in self._waiting:
            handle.finish("cancelled")

    def _admit(self) -> None:
        while self._free_slots:
            with self._wakeup:
                if not self._waiting:
                    return
                handle = self._waiting.popleft()
            if handle.cancelled or handle.expired:
                handle.finish("cancelled" if handle.cancelled else "timeout")
                continue
            slot = self._free_slots.pop()
            try:
                self._prefill(handle, slot)
            except ValueError as exc:
                self._free_slots.append(slot)
                handle.finish("error", str(exc))

    def _prefill(self, handle: RequestHandle, slot: int) -> None:
        prompt = handle.request.prompt
        audio = torch.from_numpy(prompt.audio_frames)
        logits = self.batched.prefill(slot, prompt.input_ids, audio)
        self.sampler.start(slot, handle.request.sampling, audio)
        running = _Running(handle, slot, last_frame=None)
        self._running.append(running)
        self._accept([running], logits[None])

    def _decode_step(self) -> None:
        batch = list(self._running)
        frames = torch.stack([r.last_frame for r in batch])
        self._accept(batch, self.batched.decode([r.slot for r in batch], frames))

    def _accept(self, batch: list[_Running], logits: torch.Tensor) -> None:
        frames = self.sampler.next_frames([r.slot for r in batch], logits)
        on_host = frames.cpu().numpy()  # one device-to-host copy per step, not one per request
        for running, frame, host_frame in zip(batch, frames, on_host):
            self._continue_or_finish(running, frame, host_frame)

    def _continue_or_finish(self, running: _Running, frame: torch.Tensor, host_frame: np.ndarray) -> None:
        handle, request = running.handle, running.handle.request
        handle.steps += 1
        if (host_frame == self.config.audio_stream_eos_id).all():
            self._finish(running, "stop")
            return
        if handle.steps > 1:  # the first frame is the all-begin marker, not audio
            handle.push(host_frame)
        running.last_frame = frame
        if handle.cancelled:
            self._finish(running, "cancelled")
        elif handle.expired:
            self._finish(running, "timeout")
        elif handle.steps >= request.max_new_frames or self._cache_full(handle):
            self._finish(running, "length")
        elif handle.steps >= request.guard_frames and not bool(self.sampler.ending[running.slot]):
            self._finish(running, "guard")

    def _cache_full(self, handle: RequestHandle) -> bool:
        return handle.request.prompt.num_tokens + handle.steps >= self.batched.cache.max_len

    def _finish(self, running: _Running, reason: str, error: str | None = None) -> None:
        self._running.remove(running)
        self.batched.release(running.slot)
        self._free_slots.append(running.slot)
        running.handle.finish(reason, error)
