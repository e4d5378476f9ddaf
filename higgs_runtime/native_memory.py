"""Bounds on memory that Python never sees: the caches of oneDNN and ideep, and glibc's heaps.

Under mixed traffic (prompts of every length, clips at every rate, threads of BentoML, the engine and
the codec) a CPU worker's resident memory kept growing after warm-up beyond what Python objects hold:
- oneDNN compiles a kernel per shape it meets and caches up to 1024 of them;
- ideep (PyTorch's layer over oneDNN for convolutions: the codec) caches up to 1024 convolution
  descriptions per thread, one per layer and input shape, and reference clips come in every length;
- glibc gives each thread that allocates its own heap (up to 8 per core) and returns freed memory at
  the top of a heap only, so freed tensors in the middle of busy heaps stay resident.
Call `bound_native_memory` in the worker before the model is loaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
import time

log = logging.getLogger(__name__)

ONEDNN_CACHED_KERNELS = 256
IDEEP_CACHED_DESCRIPTIONS = 256  # per thread; the codec's working set of shapes fits (no slower, measured)
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number in glibc's malloc.h


def bound_native_memory(trim_interval_s: float) -> None:
    """Caps oneDNN's and ideep's caches and glibc's heaps, and every `trim_interval_s` (0: never) hands freed
    heap memory back to the system."""
    # Read when oneDNN makes its first kernel, which has not happened yet in a fresh worker.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(ONEDNN_CACHED_KERNELS))
    os.environ.setdefault("LRU_CACHE_CAPACITY", str(IDEEP_CACHED_DESCRIPTIONS))  # read at its first convolution
    libc = _glibc()
    if libc is None:
        return
    libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
    if trim_interval_s > 0:
        threading.Thread(target=_trim_forever, args=(libc, trim_interval_s), name="malloc-trim", daemon=True).start()


def _glibc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018  (present in glibc only)
    except (OSError, AttributeError, TypeError):
        log.info("not glibc: native memory is left to the system's allocator")
        return None
    return libc


def _trim_forever(libc, interval_s: float) -> None:
    while True:
        time.sleep(interval_s)
        libc.malloc_trim(0)
