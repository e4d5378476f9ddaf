"""Kernel launches per decode step of the CUDA path, at the real model's depth (28 layers).

    python bench/launch_count.py                 # on CPU: the Triton kernels run under Triton's interpreter
    python bench/launch_count.py --device cuda

The step of the CUDA path (Triton kernels, one fixed row count) runs once on a 28-layer model of the
real head layout (3 query heads per KV head) and small width, in bf16, while a `TorchDispatchMode`
records every operation it dispatches. An operation launches a kernel unless it only makes a view of
its input (a reshape, a slice; a `.to()` that changes nothing) or only allocates; each of our Triton
kernels is a custom op, one launch. Width changes no count; depth does. On CPU the bf16 values that
the interpreter computes are garbage (numpy has no bfloat16), which changes no count either.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LAYERS = 28  # Higgs Audio v2's depth
GOAL = 1000
_ALLOCATIONS = {"aten::empty.memory_format", "aten::empty_strided", "aten::empty_like", "aten::lift_fresh"}


class LaunchCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.launches: collections.Counter[str] = collections.Counter()

    @property
    def total(self) -> int:
        return sum(self.launches.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.name()
        if name not in _ALLOCATIONS and not (func.is_view and _aliases(out, (args, kwargs))):
            self.launches[name] += 1
        return out


def _aliases(out, inputs) -> bool:
    storages = {leaf.untyped_storage().data_ptr() for leaf in tree_leaves(inputs) if isinstance(leaf, torch.Tensor)}
    outputs = [leaf for leaf in tree_leaves(out) if isinstance(leaf, torch.Tensor)]
    return bool(outputs) and all(leaf.untyped_storage().data_ptr() in storages for leaf in outputs)


def count_decode_step(device: torch.device, rows: int = 2) -> LaunchCounter:
    """Records one decode step of the CUDA path on a `LAYERS`-deep model with `rows` requests."""
    from transformers import HiggsAudioV2ForConditionalGeneration

    from higgs_runtime.engine.requests import GenerationRequest
    from higgs_runtime.engine.sampling import SamplingParams
    from higgs_runtime.engine.scheduler import Scheduler
    from higgs_runtime.engine.step_kernels import TritonKernels
    from higgs_runtime.prompts import Prompt
    from higgs_runtime.tiny_random import model_config

    torch.manual_seed(0)
    config = model_config(hidden_size=96, num_layers=LAYERS, num_heads=6, num_kv_heads=2)  # 16-wide heads: tl.dot's least
    with torch.device(device):
        model = HiggsAudioV2ForConditionalGeneration(config).to(torch.bfloat16).eval()
    max_len = 512
    engine = Scheduler(model, max_batch_size=rows, max_queue_size=rows, max_seq_len=max_len,
                       kernels=TritonKernels(max_len), cuda_graphs=False)  # not started: driven step by step here
    prompt = Prompt([128000, 1, 2, 3, config.audio_bos_token_id], np.zeros((0, config.num_codebooks), dtype=np.int64))
    for seed in range(rows):
        engine.submit(GenerationRequest(prompt, SamplingParams(seed=seed), 10, 10**9, 60))
    engine._admit()
    engine._prefill_chunks()
    slots = torch.tensor([running.slot for running in engine._running], device=device)
    width = config.codebook_size  # the CUDA path's fixed top-k width
    with torch.inference_mode():
        with LaunchCounter() as counter:
            engine.step.eager(slots, None, width)
    return counter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--by-op", action="store_true", help="also list the launches of each operation")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("on CPU, run with TRITON_INTERPRET=1 (the Triton kernels run under the interpreter)")
    counter = count_decode_step(device)
    if args.by_op:
        for name, count in counter.launches.most_common():
            print(f"{count:5d}  {name}")
    print(f"launches per decode step: {counter.total}")


if __name__ == "__main__":
    main()
