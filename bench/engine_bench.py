"""Engine benchmark at the server's real configuration, against transformers' generate() one
request at a time (the baseline), measured in the same run.

    python bench/engine_bench.py                       # CPU: small-random (and --preset tiny-random)
    python bench/engine_bench.py --device cuda --preset full-random   # GPU: the real 3B architecture

Rows:
- "default, ...": the engine with the server's default settings (slots, HIGGS_MAX_SEQ_LEN, KV
  budget), with plain prompts, voice-clone prompts with a 30 s reference (~1,250 tokens: 750 audio
  frames, transcript and text), and both alternating;
- "max_seq_len N": plain prompts only (they fit 512), the same live context at max_seq_len 512, 4096
  and 16384: a step's cost must follow the live context, not the configured maximum.
Every request runs to exactly --frames frames (stream end is ignored) so all rows do equal work.
"KV read/step" is what a step's attention reads, from the live lengths (mid-request average).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from transformers import GenerationConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from higgs_runtime import prompts  # noqa: E402
from higgs_runtime.codec import Codec  # noqa: E402
from higgs_runtime.config import Settings  # noqa: E402
from higgs_runtime.engine.requests import GenerationRequest  # noqa: E402
from higgs_runtime.engine.sampling import SamplingParams  # noqa: E402
from higgs_runtime.engine.scheduler import Scheduler  # noqa: E402
from higgs_runtime.streaming import StreamingConfig, StreamingDecoder  # noqa: E402
from higgs_runtime.tiny_random import FULL_SIZE_PRESET, ensure_preset, full_size_model  # noqa: E402
from voice_clip import REFERENCE_SECONDS, reference_voice  # noqa: E402

FRAMES_PER_SECOND = 25
TEXT = "The quick brown fox jumps over the lazy dog, and then it takes a long rest in the warm afternoon sun."
DEFAULTS = Settings()


@dataclass
class Row:
    name: str
    concurrency: int
    wall_s: float
    frames: int
    latencies: list[float]
    first_audio: list[float]
    peak_mb: float
    kv_read_mb: float = 0.0

    @property
    def aggregate_fps(self) -> float:
        return self.frames / self.wall_s

    @property
    def per_request_fps(self) -> float:
        return (self.frames / self.concurrency) / statistics.mean(self.latencies)


class PeakMemory:
    """Peak resident memory (CPU) or peak allocated memory (CUDA) while the block runs, in MB."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0.0, threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        process = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, process.memory_info().rss / 2**20)
            time.sleep(0.01)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()


def load_preset(preset: str, device: torch.device, cache_dir: Path):
    from transformers import AutoTokenizer, HiggsAudioV2ForConditionalGeneration, HiggsAudioV2TokenizerModel

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    paths = ensure_preset(cache_dir, preset)
    if preset == FULL_SIZE_PRESET:
        model = full_size_model(device, dtype)
    else:
        model = HiggsAudioV2ForConditionalGeneration.from_pretrained(paths.model, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(paths.model)
    codec = HiggsAudioV2TokenizerModel.from_pretrained(paths.audio_tokenizer).to(device).eval()
    return model, tokenizer, Codec(codec, device)


def baseline(model, prompt, frames: int, concurrency: int, device) -> Row:
    """transformers generate(), one request after another (it has one parameter set per batch and no
    per-request seed, so a server built on it serves requests one by one)."""
    config = GenerationConfig(do_sample=True, temperature=0.7, top_k=50, top_p=0.95, max_new_tokens=frames,
                              eos_token_id=128255, pad_token_id=128001,  # an id never produced: no early stop
                              ras_win_len=7, ras_win_max_num_repeat=2)
    ids = torch.tensor([prompt.input_ids], device=device)
    latencies = []
    with PeakMemory(device) as memory:
        started = time.perf_counter()
        for _ in range(concurrency):
            began = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
            assert out.shape[1] == frames, out.shape
            _sync(device)
            latencies.append(time.perf_counter() - began)
        wall = time.perf_counter() - started
    return Row("generate() one by one", concurrency, wall, frames * concurrency, latencies, latencies, memory.peak)


def engine(name: str, scheduler: Scheduler, codec: Codec, prompt_mix: list, frames: int, concurrency: int,
           device) -> Row:
    """`concurrency` requests submitted together, request i using prompt_mix[i % len(prompt_mix)]."""
    chosen = [prompt_mix[index % len(prompt_mix)] for index in range(concurrency)]

    async def one(index: int):
        request = GenerationRequest(chosen[index], SamplingParams(temperature=0.7, top_k=50, top_p=0.95, seed=index,
                                                                  ignore_stream_end=True), frames, 10**9, 3600)
        began = time.perf_counter()
        handle = scheduler.submit(request)
        decoder = StreamingDecoder(codec, 8, StreamingConfig())
        first = None
        async for frame in handle.frames(wanted=lambda: decoder.frames_until_chunk() if first is None else 10**9):
            if decoder.push(frame) and first is None:
                await asyncio.to_thread(decoder.take)
                first = time.perf_counter() - began
        assert handle.result(0).steps == frames
        return time.perf_counter() - began, first

    async def run_all():
        return await asyncio.gather(*(one(i) for i in range(concurrency)))

    with PeakMemory(device) as memory:
        started = time.perf_counter()
        results = asyncio.run(run_all())
        wall = time.perf_counter() - started
    live_tokens = sum(prompt.num_tokens + frames / 2 for prompt in chosen[:scheduler.max_batch_size])
    return Row(name, concurrency, wall, frames * concurrency, [r[0] for r in results], [r[1] for r in results],
               memory.peak, live_tokens * kv_bytes_per_token(scheduler) / 2**20)


def kv_bytes_per_token(scheduler: Scheduler) -> int:
    config = scheduler.config
    element = torch.finfo(scheduler.batched.dtype).bits // 8
    return config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim * element


def bench_prompts(model, tokenizer, codec: Codec) -> dict[str, prompts.Prompt]:
    clip, transcript = reference_voice()
    codes = codec.encode(clip)
    clone = prompts.clone_messages(TEXT, transcript, None)
    return {"plain": prompts.tokenize(prompts.plain_messages(TEXT, None), [], tokenizer, model.config),
            "clone": prompts.tokenize(clone, [codes], tokenizer, model.config)}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def print_table(preset: str, base: Row, rows: list[Row]) -> None:
    print(f"\n### {preset}\n")
    print("| run | concurrency | aggregate frames/s | x baseline | per-stream frames/s | first audio p50 (s) "
          "| aggregate audio-s per s | KV read/step (MB) | peak memory (MB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in [base, *rows]:
        print(f"| {row.name} | {row.concurrency} | {row.aggregate_fps:.1f} | "
              f"{row.aggregate_fps / base.aggregate_fps:.2f} | {row.per_request_fps:.1f} | "
              f"{statistics.median(row.first_audio):.3f} | {row.aggregate_fps / FRAMES_PER_SECOND:.1f} | "
              f"{row.kv_read_mb:.1f} | {row.peak_mb:.0f} |")


def print_ratios(rows: list[Row], top: int) -> None:
    by_name = {(row.name, row.concurrency): row for row in rows}
    print()
    for kind in ("plain", "clone"):
        single, crowded = by_name[(f"default, {kind}", 1)], by_name[(f"default, {kind}", top)]
        print(f"- default settings, {kind} prompts: {top} concurrent / 1 = "
              f"{crowded.aggregate_fps / single.aggregate_fps:.2f}x aggregate")
    short = by_name[("max_seq_len 512", top)]
    for length in (DEFAULTS.max_seq_len, 16384):
        row = by_name[(f"max_seq_len {length}", top)]
        print(f"- {top} concurrent at max_seq_len {length} / at 512 (same live context): "
              f"{row.aggregate_fps / short.aggregate_fps:.2f}x aggregate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", action="append", choices=["tiny-random", "small-random", "full-random"])
    parser.add_argument("--frames", type=int, default=None, help="frames per request (default 100 CPU, 500 GPU)")
    parser.add_argument("--concurrency", type=int, action="append")
    parser.add_argument("--rounds", type=int, default=3, help="each row is the best of this many runs")
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "higgs-bench-cache"))
    args = parser.parse_args()
    device = torch.device(args.device)
    presets = args.preset or (["full-random"] if device.type == "cuda" else ["small-random"])
    frames = args.frames or (500 if device.type == "cuda" else 100)
    levels = args.concurrency or ([1, 8, 32, 64] if device.type == "cuda" else [1, 8])
    # The default slots, unless the levels need more (on a GPU, 64 concurrent).
    slots = max(DEFAULTS.max_batch_size, max(levels))
    torch.manual_seed(0)
    print(f"device {device} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
          f"{frames} frames per request ({frames / FRAMES_PER_SECOND:.0f} s of audio) | {slots} slots | "
          f"baseline: 3 requests in a row; best of {args.rounds} rounds")
    for preset in presets:
        model, tokenizer, codec = load_preset(preset, device, Path(args.cache_dir))
        mixes = bench_prompts(model, tokenizer, codec)
        print(f"prompts: plain {mixes['plain'].num_tokens} tokens, clone {mixes['clone'].num_tokens} tokens "
              f"({REFERENCE_SECONDS:.0f} s reference)")
        top = max(levels)
        # (row name, engine's max_seq_len, prompts, concurrencies)
        configs = [("default, plain", DEFAULTS.max_seq_len, [mixes["plain"]], levels),
                   ("default, clone", DEFAULTS.max_seq_len, [mixes["clone"]], levels),
                   ("default, plain + clone", DEFAULTS.max_seq_len, [mixes["plain"], mixes["clone"]], [top])]
        configs += [(f"max_seq_len {length}", length, [mixes["plain"]], [1, top]) for length in (512, 4096, 16384)]
        engines = {}
        for name, max_seq_len, prompt_mix, concurrencies in configs:
            if max_seq_len not in engines:
                # The default engine has the default KV budget; the others, enough for their rows (the
                # budget does not change a step's cost, and four default budgets overflow an 80 GB GPU).
                budget = None if name.startswith("default") else max(
                    max_seq_len, slots * (mixes["plain"].num_tokens + frames + 64))
                engines[max_seq_len] = Scheduler(model, max_batch_size=slots, max_queue_size=DEFAULTS.max_queue_size,
                                                 max_seq_len=max_seq_len, kv_cache_tokens=budget)
                engines[max_seq_len].start()
            for level in concurrencies:  # every shape seen once (CUDA graphs are captured on first use)
                engine("warm-up", engines[max_seq_len], codec, prompt_mix, 20, level, device)
        # Rounds interleave baseline and engine rows, and each row keeps its best round, so a noisy
        # neighbour on a shared machine skews neither side.
        rounds = []
        for _ in range(args.rounds):
            rows = [baseline(model, mixes["plain"], frames, 3, device)]
            for name, max_seq_len, prompt_mix, concurrencies in configs:
                rows += [engine(name, engines[max_seq_len], codec, prompt_mix, frames, level, device)
                         for level in concurrencies]
            rounds.append(rows)
        base, *rows = [max(candidates, key=lambda row: row.aggregate_fps) for candidates in zip(*rounds)]
        for scheduler in engines.values():
            scheduler.stop()
        print_table(preset, base, rows)
        print_ratios(rows, top)
        del model, engines


if __name__ == "__main__":
    main()
