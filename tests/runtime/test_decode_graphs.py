"""The decode graphs' lifecycle, on CPU with a stand-in for CUDA's graph API: every graph is
captured before the engine reports started, steps replay it, failed captures are retried and
reported, and an engine whose capture keeps failing refuses to start. (Capturing on a real GPU is
`bench/device_check.py`'s.)"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from higgs_runtime.engine.decode_graphs import CAPTURE_ATTEMPTS, CaptureAttemptFailed
from higgs_runtime.engine.decode_step import GraphCaptureFailed
from higgs_runtime.engine.requests import GenerationRequest
from higgs_runtime.engine.sampling import SamplingParams
from higgs_runtime.engine.scheduler import Scheduler
from higgs_runtime.engine.step_kernels import TritonKernels
from test_paged_engine import plain_prompt


class StandInGraphs:
    """CUDA's graph API as `DecodeStep` uses it; a "graph" runs the captured step again into the
    tensor the capture returned, reading only what the closure holds: like a real graph, it sees a
    step's inputs only through the static tensors it was captured with."""

    def __init__(self, failures=()):
        self.failures, self.attempts, self.replays = list(failures), 0, 0

    def stream_context(self):
        return contextlib.nullcontext()

    def warm_up(self, step):
        step()

    def capture(self, step):
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        output = step()
        return _Replay(self, step, output), output

    def replayed(self):
        self.replays += 1


class _Replay:
    def __init__(self, graphs, step, output):
        self.graphs, self.step, self.output = graphs, step, output

    def replay(self):
        self.graphs.replayed()
        self.output.copy_(self.step())


def greedy(prompt, frames=12):
    return GenerationRequest(prompt, SamplingParams(temperature=0.0, ignore_stream_end=True), frames, 10**9, 120)


def test_the_decode_graph_is_captured_before_the_engine_starts_and_every_step_replays_it(tiny_model):
    prompt, loads = plain_prompt(tiny_model), []
    graphs = StandInGraphs()
    engine = Scheduler(tiny_model.model, max_batch_size=2, max_queue_size=2, max_seq_len=512,
                       kernels=TritonKernels(512), graphs=graphs, on_load_change=loads.append)
    engine.start()
    try:
        assert graphs.attempts == 1 and engine.graph_status.state == "captured" and engine.graph_status.graphs == 1
        assert loads[0].decode_graphs == 1 and loads[0].graph_capture_failures == 0  # reported before any request
        replayed = engine.submit(greedy(prompt)).result(120)
    finally:
        engine.stop()
    eager = Scheduler(tiny_model.model, max_batch_size=2, max_queue_size=2, max_seq_len=512, kernels=TritonKernels(512))
    eager.start()
    try:
        expected = eager.submit(greedy(prompt)).result(120)
    finally:
        eager.stop()
    assert graphs.replays == replayed.steps - 1  # every step but the first frame, drawn from prefill's logits
    assert np.array_equal(replayed.frames, expected.frames)


def test_a_failed_capture_is_retried_and_reported(tiny_model):
    loads = []
    graphs = StandInGraphs([CaptureAttemptFailed("operation not permitted when stream is capturing")] * 2)
    engine = Scheduler(tiny_model.model, max_batch_size=2, max_queue_size=2, max_seq_len=512, graphs=graphs,
                       on_load_change=loads.append)
    engine.start()
    engine.stop()
    assert graphs.attempts == 3 and engine.graph_status.state == "captured"
    assert engine.graph_status.failed_attempts == 2 and loads[0].graph_capture_failures == 2


def test_an_engine_whose_capture_keeps_failing_refuses_to_start(tiny_model):
    loads = []
    graphs = StandInGraphs([CaptureAttemptFailed("capture invalidated")] * CAPTURE_ATTEMPTS)
    engine = Scheduler(tiny_model.model, max_batch_size=2, max_queue_size=2, max_seq_len=512, graphs=graphs,
                       on_load_change=loads.append)
    with pytest.raises(GraphCaptureFailed, match="HIGGS_CUDA_GRAPHS=false"):
        engine.start()
    assert engine.graph_status.state == "failed" and loads[-1].graph_capture_failures == CAPTURE_ATTEMPTS
    assert loads[-1].decode_graphs == 0


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory"),
                                   RuntimeError("CUDA error: an illegal memory access was encountered")],
                         ids=["out of memory", "sticky CUDA error"])
def test_out_of_memory_and_sticky_errors_are_not_taken_for_capture_failures(tiny_model, error):
    graphs = StandInGraphs([error])
    engine = Scheduler(tiny_model.model, max_batch_size=2, max_queue_size=2, max_seq_len=512, graphs=graphs)
    with pytest.raises(type(error), match=str(error)):
        engine.start()
    assert graphs.attempts == 1  # not retried
