"""One decoding step for a whole batch: the model over the paged cache, then the sampler.

The step reads and writes only persistent device tensors (the cache, each slot's last frame and
sampling state) and takes what changes between steps: the slots of the batch's rows and the live
blocks to attend over (tensors whose lengths fix the shapes), and the top-k width. It has no host
synchronisation, so on CUDA each shape is captured once as a CUDA graph and replayed; capture
failures fall back to eager steps with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .batched_model import BatchedModel
from .kv_cache import LiveBlocks
from .sampling import SlotSampler

log = logging.getLogger(__name__)


@dataclass
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    slots: torch.Tensor  # static inputs: the batch's are copied here before each replay
    live: LiveBlocks
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

    def __call__(self, slots: torch.Tensor, live: LiveBlocks, top_k: int) -> torch.Tensor:
        """Next frames (rows, codebooks) for the rows' slots; each slot's last frame is updated."""
        with torch.inference_mode():
            if self.cuda_graphs:
                try:
                    return self._replay(slots, live, top_k)
                except RuntimeError:
                    log.warning("CUDA graph capture failed; decoding eagerly from now on", exc_info=True)
                    self.cuda_graphs = False
            return self.eager(slots, live, top_k)

    def eager(self, slots: torch.Tensor, live: LiveBlocks, top_k: int) -> torch.Tensor:
        logits = self.batched.decode(slots, self.last_frames[slots], live)
        frames = self.sampler.next_frames(slots, logits, top_k)
        self.last_frames[slots] = frames
        return frames

    def _replay(self, slots: torch.Tensor, live: LiveBlocks, top_k: int) -> torch.Tensor:
        key = (slots.shape[0], live.count, top_k)
        captured = self._captured.get(key) or self._capture(*key)
        captured.slots.copy_(slots)
        for static, given in zip((captured.live.ids, captured.live.rows, captured.live.positions),
                                 (live.ids, live.rows, live.positions)):
            static.copy_(given)
        captured.graph.replay()
        return captured.frames

    def _capture(self, rows: int, blocks: int, top_k: int) -> _Captured:
        # Warm-up and capture run on the scratch slot and block only, so no request's state moves.
        device = self.batched.device
        slots = torch.full((rows,), self.batched.cache.scratch_slot, dtype=torch.long, device=device)
        live = LiveBlocks(ids=torch.zeros(blocks, dtype=torch.long, device=device),
                          rows=torch.arange(blocks, device=device) % rows,
                          positions=torch.zeros(blocks, dtype=torch.long, device=device))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.eager(slots, live, top_k)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()  # one pool: graphs replay one at a time
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            frames = self.eager(slots, live, top_k)
        captured = _Captured(graph, slots, live, frames)
        self._captured[(rows, blocks, top_k)] = captured
        log.info("captured a CUDA graph for %d rows, %d live KV blocks, top-k %d", rows, blocks, top_k)
        return captured
