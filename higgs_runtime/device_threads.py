"""Every thread that runs torch work on the device selects its worker's device first.

torch keeps the current CUDA device per thread, and a new thread starts on device 0. A worker pinned
to cuda:N whose threads did not select it would create its streams, events and graph captures on
device 0 while its tensors live on device N. So every thread that touches the device (the engine,
the codec's decoder, the loader, request threads that encode voices) calls one of these before its
work. On CPU they set how many cores the thread's operations use instead (see `cpu_threads`).
"""

from __future__ import annotations

import torch

from .cpu_threads import use_all_cores, use_one_core


def use_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_device(device)


def prepare_engine_thread(device: torch.device) -> None:
    """For the engine thread: its device, or on CPU every core."""
    use_device(device)
    if device.type == "cpu":
        use_all_cores()


def prepare_helper_thread(device: torch.device) -> None:
    """For any other thread that runs torch operations: its device, or on CPU one core."""
    use_device(device)
    if device.type == "cpu":
        use_one_core()
