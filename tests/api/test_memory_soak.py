"""A soak: mixed traffic from careless clients against a real server at its default settings, and the
worker's memory once warm must stay flat (docs/benchmarks.md has the longer runs behind the bound)."""

from __future__ import annotations

import statistics

from mixed_traffic import MixedTraffic, sample_rss_mib
from paths import VOICE_PROMPTS_DIR
from server_checks import worker_process

CLIENTS = 4
WARM_UP_S = 60  # the caches fill (kernels and convolution descriptions per shape, clip codes, prefixes)
MEASURE_S = 150
SAMPLE_EVERY_S = 5
HALF_MINUTE = round(30 / SAMPLE_EVERY_S)  # samples
# Measured once warm: a few MiB of allocator noise over the whole window. A request that left ~7 KiB
# behind (BentoML's timeout did, for 630 s each) grew the worker by 25 to 30 MiB in this window.
MAX_GROWTH_MIB = 16


def test_memory_stays_flat_under_mixed_traffic_once_warm(start_server, tmp_path):
    server = start_server(tmp_path / "data")
    server.wait_until(("healthy",))
    worker = worker_process(server.process.pid)
    traffic = MixedTraffic(server.url, VOICE_PROMPTS_DIR / "en_man.wav", CLIENTS).start()
    try:
        sample_rss_mib(worker, WARM_UP_S, every=SAMPLE_EVERY_S)
        files_warm = worker.num_fds()
        measured = sample_rss_mib(worker, MEASURE_S, every=SAMPLE_EVERY_S)
    finally:
        traffic.stop()
    assert not traffic.failures, traffic.failures[:5]
    assert traffic.total > 1000, "too little traffic to judge"
    assert worker_process(server.process.pid).pid == worker.pid, "the worker was restarted"
    assert worker.num_fds() <= files_warm + 4
    # Medians of the first and last half minute: single samples catch the allocator mid-request.
    start, end = statistics.median(measured[:HALF_MINUTE]), statistics.median(measured[-HALF_MINUTE:])
    print(f"{traffic.total} requests; worker RSS {start:.0f} -> {end:.0f} MiB once warm")
    assert end - start <= MAX_GROWTH_MIB, f"the worker grew {end - start:.0f} MiB under steady traffic once warm"
