"""One decoding step for a whole batch: the model over the paged cache, then the sampler.

The step reads and writes only persistent device tensors (the cache, each slot's last frame and
sampling state) and takes three things that change: the slots of the batch's rows (a tensor), the
number of cache blocks to gather and the top-k width (two ints that fix the shapes). It has no host
synchronisation, so on CUDA each shape is captured once as a CUDA graph and replayed; capture
failures fall back to eager steps with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .batched_model import BatchedModel
from .sampling import SlotSampler

log = logging.getLogger(__name__)


@dataclass
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    slots: torch.Tensor  # static input: copy the batch's slots here before replaying
    frames: torch.Tensor  # static output


class DecodeStep:
    def __init__(self, batched: BatchedModel, sampler: SlotSampler, cuda_graphs: bool):
        self.batched, self.sampler = batched, sampler
        config = batched.config
        self.last_frames = torch.zeros((batched.num_slots + 1, config.num_codebooks), dtype=torch.long,
                                       device=batched.device)
        self.cuda_graphs = cuda_graphs and batched.device.type == "cuda"
        self._captured: dict[tuple[int, int, int], _Captured] = {}
        self._pool = None

    def __call__(self, slots: torch.Tensor, num_blocks: int, top_k: int) -> torch.Tensor:
        """Next frames (rows, codebooks) for the rows' slots; each slot's last frame is updated."""
        with torch.inference_mode():
            if self.cuda_graphs:
                try:
                    return self._replay(slots, num_blocks, top_k)
                except RuntimeError:
                    log.warning("CUDA graph capture failed; decoding eagerly from now on", exc_info=True)
                    self.cuda_graphs = False
            return self.eager(slots, num_blocks, top_k)

    def eager(self, slots: torch.Tensor, num_blocks: int, top_k: int) -> torch.Tensor:
        logits = self.batched.decode(slots, self.last_frames[slots], num_blocks)
        frames = self.sampler.next_frames(slots, logits, top_k)
        self.last_frames[slots] = frames
        return frames

    def _replay(self, slots: torch.Tensor, num_blocks: int, top_k: int) -> torch.Tensor:
        key = (slots.shape[0], num_blocks, top_k)
        captured = self._captured.get(key) or self._capture(*key)
        captured.slots.copy_(slots)
        captured.graph.replay()
        return captured.frames

    def _capture(self, rows: int, num_blocks: int, top_k: int) -> _Captured:
        # Warm-up and capture run on the scratch slot only, so no request's state moves.
        static_slots = torch.full((rows,), self.batched.cache.scratch_slot, dtype=torch.long,
                                  device=self.batched.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.eager(static_slots, num_blocks, top_k)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()  # one pool: graphs replay one at a time
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            frames = self.eager(static_slots, num_blocks, top_k)
        captured = _Captured(graph, static_slots, frames)
        self._captured[(rows, num_blocks, top_k)] = captured
        log.info("captured a CUDA graph for %d rows, %d KV blocks, top-k %d", rows, num_blocks, top_k)
        return captured
