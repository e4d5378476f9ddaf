"""Capturing the decode step as a CUDA graph: once, at start-up, or not at all.

- The engine thread selects its worker's device, then captures the graph (the step has one shape,
  see `decode_step`) on its own high-priority stream in thread-local capture mode (another thread's
  device work cannot invalidate it), before the engine reports ready and before the codec or any
  request touches the device.
- A capture that fails is retried; one that keeps failing stops the engine from starting, and says
  why. Graphs are never turned off behind the operator's back: `HIGGS_CUDA_GRAPHS=false` is how to
  serve with eager steps.
- An out-of-memory error, or a CUDA error that outlives the capture (the device is unusable), is
  not a capture failure: it propagates at once.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger(__name__)

CAPTURE_ATTEMPTS = 3


@dataclass(frozen=True)
class GraphStatus:
    state: str  # "off" (CPU, or turned off), "pending", "captured" or "failed"
    graphs: int = 0
    failed_attempts: int = 0
    error: str | None = None


class CaptureAttemptFailed(RuntimeError):
    """A capture failed and left the device usable: worth another attempt."""


class CudaGraphs:
    """CUDA's graph API on one device, on the engine's stream."""

    def __init__(self, device: torch.device):
        self.device = device
        self._stream: torch.cuda.Stream | None = None

    def stream_context(self) -> contextlib.AbstractContextManager:
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device, priority=-1)  # ahead of the codec's stream
        return torch.cuda.stream(self._stream)

    def warm_up(self, step: Callable[[], torch.Tensor]) -> None:
        """Compiles the step's Triton kernels and sets up cuBLAS: nothing of that may happen in a capture."""
        for _ in range(2):
            step()
        torch.cuda.current_stream(self.device).synchronize()

    def capture(self, step: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
                output = step()
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as exc:
            if not self._device_usable():
                raise
            raise CaptureAttemptFailed(f"{type(exc).__name__}: {exc}") from exc
        return graph, output

    def _device_usable(self) -> bool:
        try:
            torch.cuda.synchronize(self.device)
        except RuntimeError:
            return False
        return True


def capture_with_retries(capture: Callable[[], None], attempts: int = CAPTURE_ATTEMPTS) -> GraphStatus:
    """Runs `capture()` (it warms up, then captures through `CudaGraphs`) until it succeeds, at most
    `attempts` times. Returns the final status; errors other than a failed attempt propagate."""
    failures = []
    while len(failures) < attempts:
        try:
            capture()
        except CaptureAttemptFailed as exc:
            failures.append(str(exc))
            log.warning("CUDA graph capture failed (attempt %d of %d): %s", len(failures), attempts, exc)
            continue
        log.info("captured the decode step's CUDA graph")
        return GraphStatus("captured", 1, len(failures))
    return GraphStatus("failed", 0, len(failures),
                       f"CUDA graph capture of the decode step failed {len(failures)} times (last: {failures[-1]}); "
                       "set HIGGS_CUDA_GRAPHS=false to serve with eager decoding steps")
