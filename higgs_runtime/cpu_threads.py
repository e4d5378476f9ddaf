"""How many cores each thread's torch operations use on CPU: all for the engine, one for the rest.

torch runs CPU operations on OpenMP, and every thread that runs a multi-threaded operation keeps a
team of worker threads of its own. Once the process holds more workers than it has cores, idle
workers stop spinning and sleep, and every parallel region then pays to wake them. Measured on 2
cores with `small-random`: a decode step of 8 requests took 14.5 ms on a lone thread and 35 ms on
the engine thread while the codec's and loader's teams were alive (20 ms single-threaded). So the
engine thread, the one that sets the pace, keeps every core, and the codec threads run
single-threaded: they use a core beside the engine instead of stalling it.

The setting is per thread. A thread adopts the process-wide value the first time it asks torch
for its thread count, so these functions ask before they set; a thread already set is left alone
(the codec calls `use_one_core` on every call, from whichever thread runs it).
"""

from __future__ import annotations

import threading

import torch

# The process default (the cores, or OMP_NUM_THREADS), less one core for the codec and the HTTP server.
ENGINE_THREADS = max(1, torch.get_num_threads() - 1)


_this_thread = threading.local()


def _use(threads: int) -> None:
    if getattr(_this_thread, "threads", None) != threads:
        torch.get_num_threads()
        torch.set_num_threads(threads)
        _this_thread.threads = threads


def use_all_cores() -> None:
    """For the engine thread."""
    _use(ENGINE_THREADS)


def use_one_core() -> None:
    """For any other thread that runs torch operations."""
    _use(1)
