"""A generation request as the scheduler sees it, and the handle its caller waits on."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ..prompts import Prompt
from .contexts import Context, Sequence
from .sampling import SamplingParams

FINISH_REASONS = ("stop", "length", "guard", "cancelled", "timeout", "error")


class QueueFull(Exception):
    """The engine's waiting queue is full; the caller should retry later."""


class RequestTooLarge(ValueError):
    """The request could never fit the engine's KV cache, however long it waited."""


@dataclass
class GenerationRequest:
    prompt: Prompt
    sampling: SamplingParams
    # Decoding steps, as transformers' generate() counts its max_new_tokens: the all-begin frame and the
    # delay ramp included (`delay_pattern.steps_for_frames` gives the steps for a number of audio frames).
    # Admission reserves KV for the prompt and all of them.
    max_new_frames: int
    guard_frames: int  # the runaway guard: stop once this many frames exist and the audio has not ended
    timeout_s: float
    # The conversation's kept context this prompt continues (its KV is reused as far as the two agree).
    context: Context | None = None
    keep_context: bool = False  # keep this generation's KV as a context for the next turn


@dataclass
class GenerationResult:
    frames: np.ndarray  # (steps, codebooks): generated frames after the all-begin frame, before the all-end frame
    finish_reason: str
    prompt_tokens: int
    steps: int  # decoding steps the model ran, stream begin/end frames included
    prefill_tokens: int = 0  # prompt tokens computed; the rest came from a cached prefix or a kept context
    context: Context | None = None  # this generation's kept context, when asked for
    error: str | None = None


@dataclass
class _AsyncWaiter:
    loop: asyncio.AbstractEventLoop
    event: asyncio.Event
    wake_at: float = 1  # wake once this many frames exist, or the request has finished


@dataclass(eq=False)  # identity, not field-by-field (its fields hold arrays)
class RequestHandle:
    """Shared between the scheduler thread (which appends frames and finishes it) and the caller
    (which reads them, blocking or from asyncio)."""

    request: GenerationRequest
    prefix_names: list = field(default_factory=list)  # names of the prompt's full KV blocks (prefix cache)
    follow_up: bool = False  # the next text chunk of a request already streaming
    sequence: Sequence | None = None  # what the prompt puts in the cache, when contexts are involved
    submitted_at: float = field(default_factory=time.monotonic)
    steps: int = 0
    prefill_tokens: int = 0
    context: Context | None = None
    _frames: list = field(default_factory=list)
    _finish_reason: str | None = None
    _error: str | None = None
    _cancelled: bool = False
    _abandoned: bool = False
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _async_waiters: list = field(default_factory=list)

    # --- scheduler side ---
    def push(self, frame: np.ndarray) -> None:
        with self._lock:
            self._frames.append(frame)
        self._notify()

    def finish(self, reason: str, error: str | None = None) -> None:
        assert reason in FINISH_REASONS, reason
        with self._lock:
            if self._finish_reason is None:
                self._finish_reason, self._error = reason, error
        self._notify()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def expired(self) -> bool:
        return time.monotonic() - self.submitted_at > self.request.timeout_s

    def _notify(self) -> None:
        with self._lock:
            self._lock.notify_all()
            count, finished = len(self._frames), self._finish_reason is not None
            due = [w for w in self._async_waiters if (finished or count >= w.wake_at) and not w.event.is_set()]
        for waiter in due:
            waiter.loop.call_soon_threadsafe(waiter.event.set)

    # --- caller side ---
    @property
    def done(self) -> bool:
        return self._finish_reason is not None

    def cancel(self) -> None:
        """Stop generating: the scheduler frees the slot at its next step. The result (and a kept
        context, when asked for) still comes."""
        self._cancelled = True

    def abandon(self) -> Context | None:
        """The caller wants nothing more, a kept context neither: generation stops and no context is kept
        from now on. Returns a context kept before this call, for the caller to release."""
        with self._lock:
            self._cancelled = self._abandoned = True
            return self.context

    def keep_context(self, keep) -> None:
        """Engine side: `keep()` makes the kept context, unless the caller abandoned the request (atomic
        with `abandon`)."""
        with self._lock:
            if not self._abandoned:
                self.context = keep()

    def snapshot(self, start: int = 0) -> tuple[list[np.ndarray], str | None]:
        with self._lock:
            return self._frames[start:], self._finish_reason

    def result(self, timeout: float | None = None) -> GenerationResult:
        with self._lock:
            if not self._lock.wait_for(lambda: self._finish_reason is not None, timeout):
                raise TimeoutError("generation did not finish in time")
        return self._result()

    async def wait(self) -> GenerationResult:
        """The result, waking this coroutine once, when the request finishes."""
        async for _ in self.frames(wanted=lambda: math.inf):
            pass
        return self._result()

    async def frames(self, wanted=lambda: 1):
        """Yields each frame as the scheduler produces it, until the request finishes. `wanted()` says
        how many more frames are worth waking up for: waking the event loop for every frame costs
        the decode thread time on a small machine."""
        waiter = _AsyncWaiter(asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._async_waiters.append(waiter)
        seen = 0
        try:
            while True:
                waiter.event.clear()
                new, reason = self.snapshot(seen)
                for frame in new:
                    yield frame
                seen += len(new)
                if reason is not None and not new:
                    return
                if not new:
                    waiter.wake_at = seen + max(1, wanted())
                    if len(self._frames) < waiter.wake_at and not self.done:
                        await waiter.event.wait()
        finally:
            with self._lock:
                self._async_waiters.remove(waiter)

    def _result(self) -> GenerationResult:
        num_codebooks = self.request.prompt.audio_frames.shape[1]
        frames = np.stack(self._frames) if self._frames else np.zeros((0, num_codebooks), dtype=np.int64)
        return GenerationResult(frames, self._finish_reason, self.request.prompt.num_tokens, self.steps,
                                self.prefill_tokens, self.context, self._error)
