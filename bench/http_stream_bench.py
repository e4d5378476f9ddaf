"""HTTP streaming benchmark: time to the first audio byte and gaps between chunks over
`POST /v1/audio/speech`, at several concurrencies, against a real server process.

    python bench/http_stream_bench.py                    # starts tiny-random on CPU itself
    python bench/http_stream_bench.py --url http://host:8000 --voice belinda   # an existing server

Prints a table; "first byte / total" is the share of the request's time before audio starts.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import time

from server_process import BenchServer, stream_pcm

TEXT = ("A streaming benchmark reads this paragraph aloud, one sentence after another, so that the audio "
        "keeps flowing while the rest is still being generated. ") * 3


def one_stream(url: str, voice: str | None, seed: int, frames: int) -> tuple[float, float, float, int]:
    """(first byte s, largest gap between chunks s, total s, bytes)."""
    started, arrivals, sizes = stream_pcm(url, {"model": "tts-1", "input": TEXT, "voice": voice, "seed": seed,
                                               "max_new_tokens": frames})
    total = time.perf_counter() - started
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])] or [0.0]
    return arrivals[0] - started, max(gaps), total, sum(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url")
    parser.add_argument("--voice", default="en_man")
    parser.add_argument("--frames", type=int, default=150, help="max_new_tokens per text chunk")
    parser.add_argument("--concurrency", type=int, action="append")
    args = parser.parse_args()
    server = None if args.url else BenchServer("tiny-random", {"HIGGS_MAX_BATCH_SIZE": "16"})
    url = args.url or server.url
    try:
        one_stream(url, args.voice, 0, 20)  # warm-up
        print(f"server {url} | {len(TEXT)} characters per request | max_new_tokens {args.frames} per text chunk\n")
        print("| concurrent streams | first byte p50 (s) | first byte max (s) | largest gap p50 (s) | "
              "largest gap max (s) | total p50 (s) | first byte / total | audio s per request |")
        print("|---|---|---|---|---|---|---|---|")
        for level in args.concurrency or [1, 8, 16]:
            with concurrent.futures.ThreadPoolExecutor(level) as pool:
                runs = list(pool.map(lambda i: one_stream(url, args.voice, i, args.frames), range(level)))
            first, gap, total, size = (list(column) for column in zip(*runs))
            print(f"| {level} | {statistics.median(first):.3f} | {max(first):.3f} | {statistics.median(gap):.3f} | "
                  f"{max(gap):.3f} | {statistics.median(total):.2f} | "
                  f"{statistics.median(f / t for f, t in zip(first, total)):.0%} | "
                  f"{statistics.median(size) / 2 / 24000:.1f} |")
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
