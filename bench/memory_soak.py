"""Memory under mixed traffic: does the worker's memory stay flat once warm?

Starts a server, sends mixed traffic (tests/mixed_traffic.py) from several clients for a warm-up, then
samples the worker's resident memory and open files for the measured time. Prints requests by kind
and status, failures, and the memory at the end of the warm-up against the end of the run.

    python bench/memory_soak.py --clients 6 --warmup-s 60 --measure-s 600
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from mixed_traffic import MixedTraffic, sample_rss_mib  # noqa: E402
from server_checks import worker_process  # noqa: E402
from server_process import BenchServer  # noqa: E402
from voice_clip import VOICES  # noqa: E402

SAMPLE_EVERY_S = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny-random")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--warmup-s", type=float, default=60)
    parser.add_argument("--measure-s", type=float, default=600)
    parser.add_argument("--kinds", default=",".join(MixedTraffic.KINDS), help="request kinds to mix, comma-separated")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server, repeatable")
    args = parser.parse_args()

    server = BenchServer(args.preset, dict(item.split("=", 1) for item in args.env))
    try:
        worker = worker_process(server.process.pid)
        traffic = MixedTraffic(server.url, VOICES / "en_man.wav", args.clients,
                               kinds=tuple(args.kinds.split(","))).start()
        warm = sample_rss_mib(worker, args.warmup_s, every=SAMPLE_EVERY_S)
        files_before = worker.num_fds()
        measured = sample_rss_mib(worker, args.measure_s, every=SAMPLE_EVERY_S)
        files_after = worker.num_fds()
        traffic.stop()
    finally:
        server.stop()
    print(f"preset {args.preset}, {args.clients} clients, warm-up {args.warmup_s:g} s, measured {args.measure_s:g} s")
    for (kind, status), count in sorted(traffic.counts.items(), key=str):
        print(f"  {kind:<20} {status!s:<22} {count}")
    print(f"requests: {traffic.total}, unexpected answers: {len(traffic.failures)} {traffic.failures[:5]}")
    print(f"worker RSS: {warm[0]:.0f} MiB at start, {measured[0]:.0f} MiB after warm-up, "
          f"{measured[-1]:.0f} MiB at the end (peak {max(measured):.0f}); growth after warm-up "
          f"{measured[-1] - measured[0]:+.0f} MiB")
    print(f"open files: {files_before} after warm-up, {files_after} at the end")
    per_minute = measured[::round(60 / SAMPLE_EVERY_S)]
    print("worker RSS each minute after warm-up (MiB): " + ", ".join(f"{rss:.0f}" for rss in per_minute))


if __name__ == "__main__":
    main()
