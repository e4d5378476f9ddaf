"""A real server process for the HTTP benchmarks: started through main.py on a free loopback port,
offline, with its own data directory and BentoML home."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
import soundfile as sf

from higgs_runtime.audio import decode_audio

REPO = Path(__file__).resolve().parents[1]
VOICES = REPO.parent / "shared" / "voice_prompts"
REFERENCE_SECONDS = 30.0  # a real clone reference: about 770 prompt tokens of audio


def reference_wav() -> tuple[bytes, str]:
    """A 30 s reference voice (the shared voices one after another) and a transcript for it."""
    clips = [decode_audio(path.read_bytes(), min_seconds=0, max_seconds=60) for path in sorted(VOICES.glob("*.wav"))]
    buffer = io.BytesIO()
    sf.write(buffer, np.concatenate(clips)[: int(REFERENCE_SECONDS * 24000)], 24000, format="WAV", subtype="PCM_16")
    transcript = " ".join(path.read_text().strip() for path in sorted(VOICES.glob("*.txt")))
    return buffer.getvalue(), transcript[:1000]


class BenchServer:
    def __init__(self, preset: str, extra_env: dict[str, str] | None = None):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        work = Path(tempfile.mkdtemp(prefix="higgs-bench-server-"))
        env = dict(os.environ, HF_HUB_OFFLINE="1", HIGGS_CACHE_DIR=str(Path(tempfile.gettempdir()) / "higgs-bench-cache"),
                   HIGGS_DATA_DIR=str(work / "data"), BENTOML_HOME=str(work / "bentoml"),
                   HIGGS_VOICE_SOURCE=str(VOICES), **(extra_env or {}))
        self.log_path = work / "server.log"
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "main.py"), "--host", "127.0.0.1", "--port", str(port),
             "--model-path", preset, "--audio-tokenizer-path", preset, "--device", "cpu"],
            env=env, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=2).json()["status"] == "healthy":
                    return
            except (requests.ConnectionError, requests.Timeout, ValueError):
                pass
            time.sleep(0.5)
        self.stop()
        raise SystemExit(f"server did not start; see {self.log_path}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def stream_pcm(url: str, body: dict) -> tuple[float, list[float], list[int]]:
    """POSTs a `/v1/audio/speech` body (pcm) and reads the stream: (start time, each piece's arrival
    time, its bytes), times from time.perf_counter()."""
    started, arrivals, sizes = time.perf_counter(), [], []
    with requests.post(url + "/v1/audio/speech", json={**body, "response_format": "pcm"}, stream=True,
                       timeout=900) as response:
        response.raise_for_status()
        for chunk in response.iter_content(chunk_size=None):
            if chunk:
                arrivals.append(time.perf_counter())
                sizes.append(len(chunk))
    return started, arrivals, sizes
