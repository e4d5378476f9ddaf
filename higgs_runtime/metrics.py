"""Prometheus metrics of the service, served on /metrics beside BentoML's own.

Create `ServiceMetrics` inside the worker (the service's __init__): BentoML sets up Prometheus'
multiprocess directory only when a worker starts, and metrics made before that would not show.
"""

from __future__ import annotations

import time


class ServiceMetrics:
    def __init__(self):
        from prometheus_client import Counter, Gauge, Histogram

        self.audio_seconds = Counter("higgs_audio_seconds_generated", "Seconds of audio generated")
        self.requests = Counter("higgs_requests_finished", "Generation requests by how they finished",
                                ["finish_reason"])
        self.realtime_factor = Histogram("higgs_realtime_factor", "Audio seconds per wall-clock second of a request",
                                         buckets=(0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128))
        self.time_to_first_audio = Histogram("higgs_time_to_first_audio_seconds",
                                             "From request arrival to its first audio",
                                             buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 5, 10, 30, 60))
        self.queue_depth = Gauge("higgs_queue_depth", "Requests waiting for a decoding slot", multiprocess_mode="livesum")
        self.running = Gauge("higgs_running_batch_size", "Requests being decoded together",
                             multiprocess_mode="livesum")
        self.kv_blocks_used = Gauge("higgs_kv_cache_blocks_used", "KV cache blocks holding live requests",
                                    multiprocess_mode="livesum")
        self.kv_blocks_total = Gauge("higgs_kv_cache_blocks_total", "KV cache blocks in the pool",
                                     multiprocess_mode="livesum")
        self.prefix_cached_blocks = Gauge("higgs_prefix_cache_blocks", "KV blocks of cached prompt prefixes (voices)",
                                          multiprocess_mode="livesum")
        self.prefix_reused_blocks = Gauge("higgs_prefix_cache_reused_blocks",
                                          "KV blocks reused from the prefix cache since start", multiprocess_mode="livesum")
        self.prefill_deferred_steps = Gauge("higgs_prefill_deferred_steps",
                                            "Decoding steps in which prefill pacing held new arrivals back, since start",
                                            multiprocess_mode="livesum")
        self.kept_contexts = Gauge("higgs_kept_contexts", "Conversations' KV kept between turns (long texts, live "
                                   "sessions)", multiprocess_mode="livesum")
        self.decode_graphs = Gauge("higgs_cuda_graphs_captured",
                                   "Decode-step CUDA graphs captured at start-up (0: eager decoding steps)",
                                   multiprocess_mode="livesum")
        self.graph_capture_failures = Gauge("higgs_cuda_graph_capture_failures",
                                            "Failed CUDA graph capture attempts at start-up", multiprocess_mode="livesum")

    def observe_engine(self, load) -> None:
        """`load`: the engine's `EngineLoad`."""
        self.queue_depth.set(load.queue_depth)
        self.running.set(load.running)
        self.kv_blocks_used.set(load.kv_blocks_used)
        self.kv_blocks_total.set(load.kv_blocks_total)
        self.prefix_cached_blocks.set(load.prefix_cached_blocks)
        self.prefix_reused_blocks.set(load.prefix_hit_blocks)
        self.prefill_deferred_steps.set(load.prefill_deferred_steps)
        self.kept_contexts.set(load.kept_contexts)
        self.decode_graphs.set(load.decode_graphs)
        self.graph_capture_failures.set(load.graph_capture_failures)

    def observe_request(self, started: float, first_audio: float, audio_seconds: float, finish_reason: str) -> None:
        elapsed = max(time.monotonic() - started, 1e-6)
        self.audio_seconds.inc(audio_seconds)
        self.requests.labels(finish_reason=finish_reason).inc()
        self.realtime_factor.observe(audio_seconds / elapsed)
        self.time_to_first_audio.observe(first_audio - started)
