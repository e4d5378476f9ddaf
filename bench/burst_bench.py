"""Arrivals against running streams, over HTTP: does a burst of voice-clone requests stall the
listeners, how soon do the arrivals hear audio, and what does batched codec decoding save.

    python bench/burst_bench.py            # small-random on this CPU, default settings
    python bench/burst_bench.py --preset tiny-random

For each server configuration ("after": the defaults, chunked and paced prefill and the prefix cache;
"before": whole prompts prefilled at once, unpaced, no prefix cache), in the same run:
1. a plain request alone, then a named-voice clone request alone (first and repeated use of a 30 s
   reference voice) and a one-off `ref_audio` clone: time to first audio (plain and repeated: the
   median of 3);
2. 4 streams running (`/v1/audio/speech`, pcm), then 8 named-voice clone requests at once: the
   running streams' largest gap between audio chunks during the burst, how long a player of each
   running stream (playing from its first audio on) would wait for audio, the arrivals' first
   audio, and aggregate audio-seconds per second.
Then, in this process, the codec: 16 streams' decode windows one at a time against batched calls.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from server_process import BenchServer, stream_pcm  # noqa: E402
from voice_clip import REFERENCE_SECONDS, reference_wav  # noqa: E402

RUNNING_TEXT = ("A listener keeps hearing this long paragraph while other requests arrive, and the audio must "
                "keep flowing without a stall. ") * 2  # one generation chunk
ARRIVAL_TEXT = "A new voice joins the conversation."
CHUNK_SECONDS = 1.0  # audio in one streamed chunk after the first (HIGGS_STREAM_CHUNK_FRAMES = 25)
PCM_BYTES_PER_SECOND = 2 * 24000


def stream(url: str, text: str, frames: int, seed: int, **voice) -> dict:
    """One /v1/audio/speech pcm stream: first audio, chunk times and sizes, audio seconds."""
    started, times, sizes = stream_pcm(url, {"model": "tts-1", "input": text, "seed": seed,
                                             "max_new_tokens": frames, "temperature": 0.7, **voice})
    return {"first": times[0] - started, "times": times, "sizes": sizes, "seconds": sum(sizes) / PCM_BYTES_PER_SECOND,
            "started": started}


def playback_stall(listener: dict, start: float, end: float) -> float:
    """Seconds between `start` and `end` that a player of the stream, started at its first audio and
    playing on without pausing, spends waiting for audio that has not arrived."""
    stalled, runs_dry = 0.0, listener["times"][0]
    for arrival, size in zip(listener["times"], listener["sizes"]):
        if arrival > runs_dry:
            stalled += max(0.0, min(arrival, end) - max(runs_dry, start))
            runs_dry = arrival
        runs_dry += size / PCM_BYTES_PER_SECOND
    return stalled


def measure(preset: str, label: str, env: dict[str, str], frames: int, device: str = "cpu") -> dict:
    server = BenchServer(preset, env, device)
    try:
        return scenario(server.url, label, frames)
    finally:
        server.stop()


def scenario(url: str, label: str, frames: int) -> dict:
    """Steps 1 and 2 of the module's docstring against the server at `url` (left running)."""
    wav, transcript = reference_wav()
    upload = requests.post(url + "/upload-voice", files={"file": ("burst.wav", wav)},
                           data={"name": "burst", "transcript": transcript}, timeout=120)
    upload.raise_for_status()
    ref = {"ref_audio": base64.b64encode(wav).decode(), "ref_text": transcript}
    stream(url, "Warm up.", 10, 0)
    alone = {
        "plain": statistics.median(stream(url, ARRIVAL_TEXT, 30, seed)["first"] for seed in (1, 2, 3)),
        "named voice, first use": stream(url, ARRIVAL_TEXT, 30, 2, voice="burst")["first"],
        "named voice, repeated": statistics.median(stream(url, ARRIVAL_TEXT, 30, seed, voice="burst")["first"]
                                                   for seed in (3, 4, 5)),
        "one-off ref_audio": stream(url, ARRIVAL_TEXT, 30, 4, **ref)["first"],
    }
    # The burst voice must be cold again: a second voice, same length, never used before.
    upload = requests.post(url + "/upload-voice", files={"file": ("burst2.wav", wav[:44] + wav[44:][::-1])},
                           data={"name": "burst2", "transcript": transcript}, timeout=120)
    upload.raise_for_status()
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        running = [pool.submit(stream, url, RUNNING_TEXT, frames, 10 + i) for i in range(4)]
        time.sleep(0.5)
        while not all(r.running() or r.done() for r in running):  # (a short stream may be over already)
            time.sleep(0.05)
        time.sleep(1.0)  # the streams are playing (and still generating: about 3x faster than realtime)
        burst_started = time.perf_counter()
        arrivals = [pool.submit(stream, url, ARRIVAL_TEXT, 30, 20 + i, voice="burst2") for i in range(8)]
        arrived = [a.result() for a in arrivals]
        burst_ended = max(a["started"] + a["first"] for a in arrived)
        listeners = [r.result() for r in running]
    gaps = [b - a for listener in listeners for a, b in zip(listener["times"], listener["times"][1:])
            if b >= burst_started and a <= burst_ended]
    audio = sum(x["seconds"] for x in arrived + listeners)
    wall = max(x["times"][-1] for x in arrived + listeners) - min(x["started"] for x in listeners)
    return {"label": label, "alone": alone, "largest gap": max(gaps, default=0.0),
            "stall": max(playback_stall(listener, burst_started, burst_ended) for listener in listeners),
            "arrival first p50": statistics.median(a["first"] for a in arrived),
            "arrival first max": max(a["first"] for a in arrived), "audio_s_per_s": audio / wall}


def codec_rounds(preset: str, streams: int = 16, window_frames: int = 37, rounds: int = 10) -> tuple[float, float]:
    """Seconds of codec time per audio-second: one window at a time, and batched as the server does
    on CPU (calls of at most `codec_batching.CPU_MAX_BATCH` windows)."""
    import torch
    from transformers import HiggsAudioV2TokenizerModel

    from higgs_runtime.codec import Codec
    from higgs_runtime.codec_batching import CPU_MAX_BATCH
    from higgs_runtime.tiny_random import ensure_preset

    paths = ensure_preset(Path(tempfile.gettempdir()) / "higgs-bench-cache", preset)
    codec = Codec(HiggsAudioV2TokenizerModel.from_pretrained(paths.audio_tokenizer).eval(), torch.device("cpu"))
    rng = np.random.default_rng(0)
    windows = [rng.integers(0, 1024, (8, window_frames)) for _ in range(streams)]
    kept_seconds = streams * 25 / 25  # each window yields one 25-frame chunk

    def one_by_one():
        for window in windows:
            codec.decode(window)

    def timed(run) -> float:  # best of `rounds`, after a warm-up call
        run()
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - started)
        return best / kept_seconds

    def batched():
        for start in range(0, streams, CPU_MAX_BATCH):
            codec.decode_batch(windows[start:start + CPU_MAX_BATCH])

    return timed(one_by_one), timed(batched)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small-random", choices=["tiny-random", "small-random", "full-random"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=250, help="max_new_tokens of the running streams")
    args = parser.parse_args()
    configs = [("after (defaults)", {}),
               ("before (whole-prompt prefill, no prefix cache)",
                {"HIGGS_PREFILL_CHUNK_TOKENS": "4096", "HIGGS_PREFILL_PACING": "false",
                 "HIGGS_PREFIX_CACHE_TOKENS": "0"})]
    results = [measure(args.preset, label, env, args.frames, args.device) for label, env in configs]
    print(f"preset {args.preset} | {args.device} | {REFERENCE_SECONDS:.0f} s reference voice | a streamed chunk carries "
          f"{CHUNK_SECONDS:.0f} s of audio\n")
    print("| configuration | plain, first audio (s) | named voice first use (s) | named voice repeated (s) "
          "| one-off ref_audio (s) | burst: running streams' largest gap (s) | burst: running streams' playback "
          "stall (s) | burst: arrivals' first audio p50 / max (s) | audio-s per s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        a = r["alone"]
        print(f"| {r['label']} | {a['plain']:.2f} | {a['named voice, first use']:.2f} | {a['named voice, repeated']:.2f} "
              f"| {a['one-off ref_audio']:.2f} | {r['largest gap']:.2f} | {r['stall']:.2f} | {r['arrival first p50']:.2f} / "
              f"{r['arrival first max']:.2f} | {r['audio_s_per_s']:.2f} |")
    after = results[0]["alone"]
    print(f"\n- repeated named-voice clone / plain, first audio: {after['named voice, repeated'] / after['plain']:.2f}x")
    one_by_one, batched = codec_rounds(args.preset)
    print(f"- codec, 16 streams: {one_by_one * 1000:.1f} ms per audio-second one window at a time, "
          f"{batched * 1000:.1f} ms batched: {one_by_one / batched:.1f}x less")


if __name__ == "__main__":
    main()
