"""A real server process for the HTTP benchmarks: started through main.py on a free loopback port,
offline, with its own data directory and BentoML home."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from voice_clip import VOICES

REPO = Path(__file__).resolve().parents[1]


class BenchServer:
    def __init__(self, preset: str, extra_env: dict[str, str] | None = None, device: str = "cpu",
                 start_timeout_s: float = 300):
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
             "--model-path", preset, "--audio-tokenizer-path", preset, "--device", device],
            env=env, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        deadline, status = time.monotonic() + start_timeout_s, "not answering"
        while time.monotonic() < deadline and not status.startswith("unhealthy") and self.process.poll() is None:
            try:
                health = requests.get(self.url + "/health", timeout=2).json()
                status = health["status"] if health["status"] != "unhealthy" else f"unhealthy: {health['error']}"
                if status == "healthy":
                    return
            except (requests.ConnectionError, requests.Timeout, ValueError):
                pass
            time.sleep(0.5)
        self.stop()
        raise SystemExit(f"server did not start ({status}); see {self.log_path}")

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
