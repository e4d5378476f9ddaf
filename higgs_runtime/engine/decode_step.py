"""One decoding step for a whole batch: the model over the paged cache, then the sampler.

The step reads and writes only persistent device tensors (the cache, each slot's last frame and
sampling state) and takes what changes between steps: the slots of the batch's rows, the
attention's host-built batch (`step_kernels`) and the top-k width. It has no host synchronisation.

On CUDA every step has one shape: the rows are padded to the engine's slot count (a memory-bound
matrix product costs the same for 1 or 64 rows, and one shape means one cuBLAS kernel, so a row's
result never depends on how many neighbours it has) and the top-k width is the whole codebook. That
one shape is captured as a CUDA graph at start-up (`decode_graphs`), and every step replays it. On
CPU the rows are the batch's own and steps run eagerly.
"""

from __future__ import annotations

import contextlib

import torch

from .batched_model import BatchedModel
from .decode_graphs import CudaGraphs, GraphStatus, capture_with_retries
from .sampling import SlotSampler, top_k_bucket


class DecodeStep:
    def __init__(self, batched: BatchedModel, sampler: SlotSampler, cuda_graphs: bool, graphs: CudaGraphs | None = None):
        """`graphs`: how graphs are captured (default: CUDA's own, when `cuda_graphs` is set on a CUDA
        device whose kernels can be captured)."""
        self.batched, self.sampler = batched, sampler
        config = batched.config
        self.last_frames = torch.zeros((batched.num_slots + 1, config.num_codebooks), dtype=torch.long,
                                       device=batched.device)
        on_cuda = batched.device.type == "cuda"
        if graphs is None and cuda_graphs and on_cuda:
            if not batched.kernels.capturable:
                raise ValueError(f"{type(batched.kernels).__name__} cannot be captured in a CUDA graph")
            graphs = CudaGraphs(batched.device)
        self._graphs = graphs
        self.fixed_shape = on_cuda or graphs is not None
        self.status = GraphStatus("pending" if self._graphs else "off")
        self._graph: tuple | None = None  # (graph, static slots, static frames) once captured

    def rows(self, count: int) -> int:
        """The decode rows for a batch of `count` requests (padding rows name the scratch slot)."""
        return self.batched.num_slots if self.fixed_shape else count

    def top_k_width(self, top_ks: list[int]) -> int:
        """How many best codes the sampler keeps (every row's own top-k applies within them)."""
        codebook = self.batched.config.codebook_size
        return codebook if self.fixed_shape else top_k_bucket(top_ks, codebook)

    def on_engine_stream(self) -> contextlib.AbstractContextManager:
        """Where the engine thread runs all its device work (a high-priority stream on CUDA)."""
        return self._graphs.stream_context() if self._graphs else contextlib.nullcontext()

    def capture(self) -> GraphStatus:
        """Captures the decode graph before any request (engine thread, inside `on_engine_stream`).
        Raises if capture fails for good."""
        if self._graphs:
            self.status = capture_with_retries(self._capture)
            if self.status.state == "failed":
                raise GraphCaptureFailed(self.status.error)
        return self.status

    def _capture(self) -> None:
        # Warm-up and capture run on the scratch slot only, so no request's state moves.
        rows, codebook = self.rows(1), self.batched.config.codebook_size
        slots = torch.full((rows,), self.batched.cache.scratch_slot, dtype=torch.long, device=self.batched.device)
        live = self.batched.kernels.attention_batch(self.batched.cache, slots.tolist(), [1] * rows)
        step = lambda: self.eager(slots, live, codebook)  # noqa: E731
        with torch.inference_mode():
            self._graphs.warm_up(step)
            graph, frames = self._graphs.capture(step)
        self._graph = (graph, slots, frames)

    def __call__(self, slots: torch.Tensor, live, top_k: int) -> torch.Tensor:
        """Next frames (rows, codebooks) for the rows' slots; each slot's last frame is updated."""
        with torch.inference_mode():
            if self._graph is None:
                return self.eager(slots, live, top_k)
            graph, static_slots, frames = self._graph
            static_slots.copy_(slots)
            graph.replay()
            return frames

    def eager(self, slots: torch.Tensor, live, top_k: int) -> torch.Tensor:
        logits = self.batched.decode(slots, self.last_frames[slots], live)
        frames = self.sampler.next_frames(slots, logits, top_k)
        self.last_frames[slots] = frames
        return frames


class GraphCaptureFailed(RuntimeError):
    """The decode step could not be captured as a CUDA graph: the engine refuses to start."""
