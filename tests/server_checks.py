"""Reading a running test server from outside: its Prometheus metrics and its worker process."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import requests


def metric_value(text: str, name: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name) and not line.startswith("#")]
    return sum(values)


def engine_load(base_url: str) -> tuple[float, float]:
    """(requests generating, requests queued), from /metrics."""
    text = requests.get(base_url + "/metrics", timeout=10).text
    return metric_value(text, "higgs_running_batch_size"), metric_value(text, "higgs_queue_depth")


def wait_for_load(base_url: str, done, timeout: float, what: str) -> float:
    """Polls the engine load until `done(running, queued)`; returns the seconds it took."""
    started = time.monotonic()
    while not done(*engine_load(base_url)):
        assert time.monotonic() - started < timeout, f"{what} within {timeout} s; load is {engine_load(base_url)}"
        time.sleep(0.05)
    return time.monotonic() - started


def worker_process(server_pid: int) -> psutil.Process:
    """The BentoML worker that holds the model: the largest process under the server."""
    return max(psutil.Process(server_pid).children(recursive=True), key=lambda p: p.memory_info().rss)


def peak_rss_bytes(process: psutil.Process) -> int:
    """The process's peak resident memory so far (Linux's VmHWM)."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/<pid>/status")
