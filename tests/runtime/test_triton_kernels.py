"""The CUDA path's Triton kernels, run on CPU tensors under Triton's interpreter (see conftest) in
float32, against the torch reference ops of the CPU path (`bench/kernel_checks.py`, which
`bench/device_check.py` runs in bf16 on a GPU: the interpreter computes bf16 wrongly)."""

from __future__ import annotations

import sys

import numpy as np
import torch

from higgs_runtime.engine.requests import GenerationRequest
from higgs_runtime.engine.sampling import RepetitionAware, SamplingParams
from higgs_runtime.engine.scheduler import Scheduler
from higgs_runtime.engine.step_kernels import TritonKernels
from paths import REPO_DIR
from test_engine import mode_prompts, reference_generate

sys.path.insert(0, str(REPO_DIR / "bench"))
import kernel_checks  # noqa: E402

CPU = torch.device("cpu")


def test_split_kv_attention_reads_the_pool_in_place_like_the_reference():
    """Lengths 1, 63, 64, 65, 1100 and 4096, rows sharing a prefix's blocks, padding rows."""
    errors = kernel_checks.attention_errors(CPU, torch.float32)
    assert errors["vs reference"] < 1e-6 and errors["vs float64 dense"] < 1e-5, errors
    assert not errors["padding rows not finite"]


def test_a_rows_split_kv_attention_is_bit_identical_whatever_its_neighbours():
    assert kernel_checks.attention_is_batch_invariant(CPU, torch.float32)


def test_norm_rotary_append_activation_kernels_match_the_reference():
    errors = kernel_checks.elementwise_errors(CPU, torch.float32)
    assert all(error < 1e-6 for error in errors.values()), errors


def test_uniforms_kernel_gives_the_reference_streams_bit_for_bit():
    assert kernel_checks.uniforms_match(CPU)


def test_the_cuda_paths_decode_step_gives_generates_greedy_codes(tiny_model, reference_clips):
    """The whole step of the CUDA path (every Triton kernel, the fused weights), here under the
    interpreter, against transformers' own generate()."""
    prompt = mode_prompts(tiny_model, reference_clips)["clone"]
    expected = reference_generate(tiny_model.model, prompt, max_new_tokens=40, ras=False)
    engine = Scheduler(tiny_model.model, max_batch_size=2, max_queue_size=2, max_seq_len=1024,
                       ras=RepetitionAware(window=0), kernels=TritonKernels(1024))
    engine.start()
    try:
        result = engine.submit(GenerationRequest(prompt, SamplingParams(temperature=0.0), 40, 10**9, 120)).result(120)
    finally:
        engine.stop()
    assert len(result.frames) > 8 and np.array_equal(result.frames, expected)
