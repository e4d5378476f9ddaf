"""The GPU check: one command for the day a GPU is available. It runs the CUDA path's checks, the
engine and arrivals benchmarks at full size and a server smoke, then prints one markdown table of
goals with PASS or FAIL, also written to `<out>/device_check.md`.

    python bench/device_check.py --out device-check      # one H100 or H200: within 8 minutes
    python bench/device_check.py --smoke --out /tmp/dc   # every step on CPU at tiny scale, under 3 minutes

Steps (full scale: the `full-random` preset, the real 5.4 B-parameter shape with random weights, in
bf16, built on the GPU; the engine with 64 slots):
1. launches per decode step of the CUDA path at 28 layers (`launch_count.py`);
2. the Triton kernels in bf16 against the float32 torch reference (`kernel_checks.py`);
3. one decode step of the model in bf16 against an float32 copy run through the torch reference;
4. every decode graph captured at start-up, and a seeded request's codes equal with and without graphs;
5. a seeded request alone and among 63 neighbours (other prompts, seeds, sampling): identical codes;
6. the engine benchmark (`engine_bench.py`) with 30 s voice-clone prompts at 1, 8, 32 and 64 streams,
   against transformers' generate();
7. a server (default settings) on the device: a stream, a clone and a dialogue, then the arrivals
   benchmark (`burst_bench.py`: first audio alone, a burst of clones against running streams).
With --smoke every step runs on CPU with tiny-random (the Triton kernels under Triton's
interpreter, in float32); speed goals are shown, not judged. Exit status 1 if any goal fails.
"""

from __future__ import annotations

import argparse
import base64
import copy
import gc
import io
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:  # the Triton kernels run on CPU tensors under the interpreter, chosen when a kernel is defined
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import requests  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import burst_bench  # noqa: E402
import engine_bench  # noqa: E402
import kernel_checks  # noqa: E402
import launch_count  # noqa: E402
from server_process import BenchServer, stream_pcm  # noqa: E402
from voice_clip import reference_wav  # noqa: E402

from higgs_runtime.engine.batched_model import BatchedModel  # noqa: E402
from higgs_runtime.engine.requests import GenerationRequest  # noqa: E402
from higgs_runtime.engine.sampling import SamplingParams  # noqa: E402
from higgs_runtime.engine.scheduler import Scheduler  # noqa: E402
from higgs_runtime.engine.step_kernels import TorchKernels, TritonKernels  # noqa: E402

FRAMES_PER_SECOND = 25
MAX_SEQ_LEN = 4096  # the server's default


@dataclass(frozen=True)
class Scale:
    device: torch.device
    dtype: torch.dtype
    preset: str
    slots: int  # the engine's rows: the crowd of step 5 is slots - 1 neighbours
    levels: list[int]  # engine benchmark concurrencies
    frames: int  # per request in the engine benchmark
    kv_heads: int  # in the kernel checks
    precision_tolerance: float  # step 3's relative error
    judge_speed: bool


FULL = Scale(torch.device("cuda"), torch.bfloat16, "full-random", 64, [1, 8, 32, 64], 250, 8, 0.05, True)
TINY = Scale(torch.device("cpu"), torch.float32, "tiny-random", 8, [1, 2], 40, 2, 1e-4, False)


@dataclass
class Goal:
    step: str
    goal: str
    figure: str
    passed: bool | None  # None: shown, not judged

    @property
    def verdict(self) -> str:
        return {True: "PASS", False: "FAIL", None: "shown"}[self.passed]


@dataclass
class Report:
    scale: Scale
    goals: list[Goal] = field(default_factory=list)

    def add(self, step: str, goal: str, figure: str, passed: bool | None) -> None:
        self.goals.append(Goal(step, goal, figure, passed))
        print(f"  {step}: {figure} ({goal}): {self.goals[-1].verdict}", flush=True)

    def speed(self, step: str, goal: str, figure: float, unit: str, passed: bool) -> None:
        self.add(step, goal, f"{figure:.3g} {unit}", passed if self.scale.judge_speed else None)

    def table(self) -> str:
        rows = [f"| {g.step} | {g.goal} | {g.figure} | {g.verdict} |" for g in self.goals]
        return "\n".join(["| step | goal | measured | result |", "|---|---|---|---|", *rows])


# --- the steps ---------------------------------------------------------------------------------------

def launches(report: Report) -> None:
    counter = launch_count.count_decode_step(report.scale.device)
    print(f"launches per decode step: {counter.total}")
    report.add("launches per decode step (28 layers)", f"<= {launch_count.GOAL}", str(counter.total),
               counter.total <= launch_count.GOAL)


def kernels(report: Report) -> None:
    scale = report.scale
    tolerance = kernel_checks.TOLERANCE[scale.dtype]
    kind = str(scale.dtype).removeprefix("torch.")
    attention = kernel_checks.attention_errors(scale.device, scale.dtype, scale.kv_heads)
    report.add(f"split-KV attention, {kind}, vs float32 reference", f"relative error <= {tolerance:g}",
               f"{attention['vs reference']:.2g} (vs float64 dense {attention['vs float64 dense']:.2g})",
               max(attention["vs reference"], attention["vs float64 dense"]) <= tolerance
               and not attention["padding rows not finite"])
    report.add("split-KV attention: a row alone, crowded, reordered", "bit-identical",
               *_same(kernel_checks.attention_is_batch_invariant(scale.device, scale.dtype, scale.kv_heads)))
    elementwise = kernel_checks.elementwise_errors(scale.device, scale.dtype, scale.kv_heads)
    report.add(f"norm, rotary + append, SiLU kernels, {kind}", f"relative error <= {tolerance:g}",
               ", ".join(f"{name} {error:.2g}" for name, error in elementwise.items()),
               all(error <= tolerance for error in elementwise.values()))
    report.add("sampler's uniforms kernel vs torch", "bit-identical", *_same(kernel_checks.uniforms_match(scale.device)))


def precision(report: Report, model, prompt) -> None:
    """One prefill and one decode step through the device's path against a float32 copy of the same
    weights through the torch reference."""
    scale = report.scale
    reference_model = copy.deepcopy(model).float()
    kernels = TritonKernels(MAX_SEQ_LEN) if scale.device.type == "cpu" else None  # CPU: the Triton path, interpreted
    logits = [_one_step(model, prompt, kernels), _one_step(reference_model, prompt, TorchKernels(scale.device))]
    del reference_model
    _free_memory()
    errors = [kernel_checks.relative_error(got, expected) for got, expected in zip(*logits)]
    agree = float((logits[0][1].argmax(-1) == logits[1][1].argmax(-1)).float().mean())
    kind = str(scale.dtype).removeprefix("torch.")
    report.add(f"model step, {kind} path vs float32 reference", f"logits' relative error <= {scale.precision_tolerance:g}",
               f"prefill {errors[0]:.2g}, decode {errors[1]:.2g} (top-1 agreement {agree:.0%})",
               max(errors) <= scale.precision_tolerance)


def _one_step(model, prompt, kernels) -> tuple[torch.Tensor, torch.Tensor]:
    batched = BatchedModel(model, num_slots=1, max_len=MAX_SEQ_LEN, kv_budget_tokens=MAX_SEQ_LEN, kernels=kernels)
    tokens = prompt.num_tokens
    batched.cache.reserve(0, tokens + 1)
    batched.cache.ensure(0, tokens + 1)
    with torch.inference_mode():
        first = batched.prefill(0, prompt.input_ids, prompt.audio_frames, 0, tokens)
        live = batched.kernels.attention_batch(batched.cache, [0], [tokens + 1])
        begin = torch.full((1, model.config.num_codebooks), model.config.audio_stream_bos_id, device=batched.device)
        step = batched.decode(torch.tensor([0], device=batched.device), begin, live)[0]
    return first.float().cpu(), step.float().cpu()


def graphs(report: Report, engine: Scheduler, model, prompt) -> None:
    status = engine.graph_status
    expected = 1 if report.scale.device.type == "cuda" else 0
    report.add("decode graphs captured at start-up", f"{expected} (one row count)" if expected else "none on CPU",
               f"{status.state}: {status.graphs} graph(s), {status.failed_attempts} failed attempt(s)",
               status.graphs == expected and status.failed_attempts == 0)
    eager = Scheduler(model, max_batch_size=report.scale.slots, max_queue_size=4, max_seq_len=MAX_SEQ_LEN,
                      kv_cache_tokens=2 * MAX_SEQ_LEN, cuda_graphs=False)
    eager.start()
    try:
        without = eager.submit(_request(prompt, seed=7)).result(600).frames
    finally:
        eager.stop()
    with_graphs = engine.submit(_request(prompt, seed=7)).result(600).frames
    report.add("a seeded request's codes: graph steps vs eager steps", "identical", *_same(
        np.array_equal(with_graphs, without), len(with_graphs)))


def invariance(report: Report, engine: Scheduler, prompts: dict) -> None:
    crowd = engine.max_batch_size - 1
    alone = engine.submit(_request(prompts["clone"], seed=7)).result(600).frames
    neighbours = [_request(prompts["plain" if index % 2 else "clone"], seed=100 + index, frames=60 + index,
                           temperature=0.0 if index % 5 == 0 else 1.0, top_k=0 if index % 3 == 0 else 50)
                  for index in range(crowd)]
    handles = [engine.submit(request) for request in neighbours[:crowd // 2]]
    together = engine.submit(_request(prompts["clone"], seed=7))
    handles += [engine.submit(request) for request in neighbours[crowd // 2:]]
    crowded = together.result(600).frames
    for handle in handles:
        handle.result(600)
    report.add(f"a seeded request alone vs among {crowd} neighbours", "identical codes",
               *_same(np.array_equal(alone, crowded), len(alone)))


def engine_benchmark(report: Report, engine: Scheduler, model, prompts: dict, codec) -> None:
    scale, device = report.scale, report.scale.device
    base = engine_bench.baseline(model, prompts["plain"], scale.frames // 2, 1, device)
    for level in scale.levels:  # warm-up: the voice's prefix cached, every code path run once
        engine_bench.engine("warm-up", engine, codec, [prompts["clone"]], 20, level, device)
    rows = [max((engine_bench.engine("engine, 30 s clone", engine, codec, [prompts["clone"]], scale.frames, level, device)
                 for _ in range(2)), key=lambda row: row.aggregate_fps) for level in scale.levels]
    engine_bench.print_table(scale.preset, base, rows)
    single, crowded = rows[0], rows[-1]
    report.speed("one stream, 30 s clone: realtime factor", ">= 15x", single.per_request_fps / FRAMES_PER_SECOND, "x",
                 single.per_request_fps / FRAMES_PER_SECOND >= 15)
    report.speed(f"{crowded.concurrency} streams, 30 s clone: audio-seconds per second", ">= 400",
                 crowded.aggregate_fps / FRAMES_PER_SECOND, "audio-s/s", crowded.aggregate_fps / FRAMES_PER_SECOND >= 400)
    report.add("engine first audio, one stream, cached voice (p50)", "shown",
               f"{statistics.median(single.first_audio) * 1000:.0f} ms", None)
    report.add("transformers generate(), one request: frames per second", "baseline", f"{base.aggregate_fps:.1f}", None)


def server(report: Report) -> None:
    scale = report.scale
    started = time.perf_counter()
    bench_server = BenchServer(scale.preset, {}, str(scale.device), start_timeout_s=240)
    report.add("server start (model, graphs, codec)", "healthy", f"{time.perf_counter() - started:.0f} s", True)
    try:
        report.add("server smoke: stream, clone, dialogue", "audio from each", *_smoke(bench_server.url))
        arrivals = burst_bench.scenario(bench_server.url, "defaults", 250 if scale.judge_speed else 40)
    finally:
        bench_server.stop()
    alone = arrivals["alone"]
    report.speed("first audio over HTTP, plain request (p50 of 3)", "<= 150 ms", alone["plain"] * 1000, "ms",
                 alone["plain"] <= 0.150)
    report.add("arrivals: 8 clones of a cold voice against 4 running streams",
               "shown", f"streams' largest gap {arrivals['largest gap']:.2f} s, stall {arrivals['stall']:.2f} s, "
               f"arrivals' first audio p50 {arrivals['arrival first p50']:.2f} s, "
               f"{arrivals['audio_s_per_s']:.1f} audio-s/s", None)


def _smoke(url: str) -> tuple[str, bool]:
    wav, transcript = reference_wav(5.0)
    seconds = {}
    _, _, sizes = stream_pcm(url, {"model": "tts-1", "input": "A streamed sentence.", "seed": 1, "max_new_tokens": 50})
    seconds["stream"] = sum(sizes) / 2 / 24000
    for name, route, body in (
            ("clone", "/generate/voice-clone", {"text": "A cloned sentence.", "reference_text": transcript[:500],
                                                "reference_audio": base64.b64encode(wav).decode()}),
            ("dialogue", "/generate/multi-speaker", {"text": "[SPEAKER0] Hello there.\n[SPEAKER1] Hi, how are you?"})):
        response = requests.post(url + route, json={**body, "seed": 1, "max_new_tokens": 50}, timeout=300)
        response.raise_for_status()
        samples, rate = sf.read(io.BytesIO(base64.b64decode(response.json()["audio_base64"])))
        seconds[name] = len(samples) / rate
    return ", ".join(f"{name} {value:.2f} s" for name, value in seconds.items()), all(seconds.values())


def _request(prompt, seed: int, frames: int = 100, temperature: float = 0.7, top_k: int = 50) -> GenerationRequest:
    sampling = SamplingParams(temperature=temperature, top_k=top_k, seed=seed, ignore_stream_end=True)
    return GenerationRequest(prompt, sampling, frames, 10**9, 600)


def _same(equal: bool, frames: int | None = None) -> tuple[str, bool]:
    figure = "identical" if equal else "different"
    return (f"{figure} ({frames} frames)" if frames is not None else figure), bool(equal)


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- the run -----------------------------------------------------------------------------------------

def run(report: Report) -> None:
    scale = report.scale

    def step(name: str, function, *args) -> None:
        started = time.perf_counter()
        print(f"\n## {name}", flush=True)
        try:
            function(report, *args)
        except (Exception, SystemExit) as exc:  # a failed step is a FAIL row; the other steps still run
            traceback.print_exc()
            report.add(name, "runs", f"{type(exc).__name__}: {str(exc)[:200]}", False)
        print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)

    step("launch count", launches)
    step("kernels", kernels)
    model, tokenizer, codec = engine_bench.load_preset(scale.preset, scale.device,
                                                       Path(tempfile.gettempdir()) / "higgs-bench-cache")
    prompts = engine_bench.bench_prompts(model, tokenizer, codec)
    step("precision", precision, model, prompts["plain"])
    engine = Scheduler(model, max_batch_size=scale.slots, max_queue_size=2 * scale.slots, max_seq_len=MAX_SEQ_LEN)
    try:
        engine.start()
        step("graphs", graphs, engine, model, prompts["clone"])
        step("batch invariance", invariance, engine, prompts)
        step("engine benchmark", engine_benchmark, engine, model, prompts, codec)
    finally:
        engine.stop()
        del engine, model, codec
        _free_memory()
    step("server", server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every step on CPU at tiny scale (what the tests run)")
    parser.add_argument("--out", required=True, help="directory for device_check.md")
    args = parser.parse_args()
    scale = TINY if args.smoke else FULL
    if scale.device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU, or with --smoke")
    started = time.perf_counter()
    where = torch.cuda.get_device_name(0) if scale.device.type == "cuda" else "CPU (smoke)"
    import transformers
    import triton

    header = (f"{where} | torch {torch.__version__} | triton {triton.__version__} | transformers "
              f"{transformers.__version__} | {scale.preset}, {str(scale.dtype).removeprefix('torch.')}")
    print(header, flush=True)
    report = Report(scale)
    run(report)
    text = f"{header} | {time.perf_counter() - started:.0f} s\n\n{report.table()}\n"
    print("\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "device_check.md").write_text(text)
    sys.exit(1 if any(goal.passed is False for goal in report.goals) else 0)


if __name__ == "__main__":
    main()
