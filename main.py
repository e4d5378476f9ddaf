"""Command line of the original API spec: starts the same BentoML service that `bentoml serve` starts.

    python main.py --host 0.0.0.0 --port 8000 --model-path ... --audio-tokenizer-path ... --device cuda

Flags become the `HIGGS_*` environment variables that service.py reads, so both ways of starting
the server take the same settings.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from higgs_runtime.config import DEFAULT_AUDIO_TOKENIZER, DEFAULT_MODEL

REPO = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Higgs Audio v2 text-to-speech server")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-path", default=os.environ.get("HIGGS_MODEL_PATH", DEFAULT_MODEL),
                        help="Hugging Face id or local directory; 'tiny-random' or 'small-random' for an offline "
                             "random model (noise, for tests and benchmarks)")
    parser.add_argument("--audio-tokenizer-path", default=os.environ.get("HIGGS_AUDIO_TOKENIZER_PATH", DEFAULT_AUDIO_TOKENIZER))
    parser.add_argument("--device", default=os.environ.get("HIGGS_DEVICE", "auto"), help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--data-dir", default=os.environ.get("HIGGS_DATA_DIR"),
                        help="where uploaded voices and fetched presets live")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    env = dict(os.environ,
               HIGGS_MODEL_PATH=args.model_path,
               HIGGS_AUDIO_TOKENIZER_PATH=args.audio_tokenizer_path,
               HIGGS_DEVICE=args.device)
    if args.data_dir:
        env["HIGGS_DATA_DIR"] = str(Path(args.data_dir).resolve())
    command = [sys.executable, "-m", "bentoml", "serve", "service:HiggsAudio",
               "--host", args.host, "--port", str(args.port), "--working-dir", str(REPO)]
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    main()
