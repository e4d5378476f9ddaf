"""Shared fixtures: real server processes (started through main.py) on loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

# The engine's Triton kernels run on CPU tensors under Triton's interpreter, which is chosen when a
# kernel is defined: before any test module imports one (CUDA tests are `bench/device_check.py`'s).
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import requests  # noqa: E402

from paths import REPO_DIR, VOICE_PROMPTS_DIR  # noqa: E402
from runtime_fixtures import reference_clips, tiny_model  # noqa: E402, F401  (fixtures shared by the unit tests)

os.environ["HF_HUB_OFFLINE"] = "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(self, data_dir: Path, cache_dir: Path, work_dir: Path, model_path: str = "tiny-random",
                 extra_env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = work_dir / "server.log"
        # A BentoML home of its own: servers sharing one would share (and wipe) the metrics directory.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HIGGS_CACHE_DIR": str(cache_dir),
               "HIGGS_VOICE_SOURCE": str(VOICE_PROMPTS_DIR), "BENTOML_HOME": str(work_dir / "bentoml"),
               "HIGGS_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024), **(extra_env or {})}
        command = [sys.executable, str(REPO_DIR / "main.py"), "--host", "127.0.0.1", "--port", str(self.port),
                   "--model-path", model_path, "--audio-tokenizer-path", model_path, "--device", "cpu",
                   "--data-dir", str(data_dir)]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def wait_until(self, statuses: tuple[str, ...], timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text(errors='replace')[-4000:]}")
            try:
                health = requests.get(self.url + "/health", timeout=2).json()
                if health["status"] in statuses and (health["status"] != "healthy" or health["voices_available"] >= 6):
                    return health
            except (requests.ConnectionError, requests.Timeout, ValueError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not {statuses} in {timeout} s:\n{self.log_path.read_text(errors='replace')[-4000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def start_server(tmp_path_factory, model_cache):
    started: list[ServerProcess] = []

    def start(data_dir: Path | None = None, **kwargs) -> ServerProcess:
        data_dir = data_dir or tmp_path_factory.mktemp("data")
        server = ServerProcess(data_dir, model_cache, tmp_path_factory.mktemp("server"), **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server_data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server-data")


@pytest.fixture(scope="session")
def server(start_server, server_data_dir) -> ServerProcess:
    """The main server of the session: tiny-random on CPU, presets from ../shared/voice_prompts."""
    process = start_server(server_data_dir)
    process.wait_until(("healthy",))
    return process


@pytest.fixture(scope="session")
def base_url(server) -> str:
    return server.url
