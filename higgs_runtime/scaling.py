"""How the service scales on one host: its BentoML resource spec, its worker count, and the GPU each
worker runs its own engine on."""

from __future__ import annotations

import dataclasses
import typing

import torch
from _bentoml_sdk.service.config import GpuLiteralType

from .config import Settings

# What one worker (one engine) of the 3B model needs besides its GPU (about 16 GiB of it at the
# defaults, so a 24 GB card): host memory to load the bf16 weights (10.7 GiB) and the codec with
# torch around them, and cores for audio decoding, encoding and the HTTP side.
CPU_PER_WORKER = 4
MEMORY_GIB_PER_WORKER = 16


def worker_count(settings: Settings) -> int:
    """HIGGS_WORKERS, else one worker per GPU present (one on a machine without CUDA)."""
    return settings.workers or torch.cuda.device_count() or 1


def resources(settings: Settings, workers: int) -> dict:
    """One GPU per worker (BentoML makes these visible to every worker), of a type with 24 GB or more."""
    if settings.gpu_type not in typing.get_args(GpuLiteralType):
        raise ValueError(f"HIGGS_GPU_TYPE={settings.gpu_type!r} is not a GPU type BentoML knows; use one of "
                         f"{list(typing.get_args(GpuLiteralType))}")
    return {"gpu": workers, "gpu_type": settings.gpu_type, "cpu": str(CPU_PER_WORKER * workers),
            "memory": f"{MEMORY_GIB_PER_WORKER * workers}Gi"}


def for_worker(settings: Settings, worker_index: int | None) -> Settings:
    """Pins worker N (1-based, BentoML's `server_context.worker_index`) to GPU N-1 when the device is
    `auto` or a bare `cuda`; an explicit `cuda:N` or `cpu` is kept as given."""
    if worker_index is None or settings.device not in ("auto", "cuda") or not torch.cuda.is_available():
        return settings
    return dataclasses.replace(settings, device=f"cuda:{(worker_index - 1) % torch.cuda.device_count()}")
