"""One host, several workers: the resource spec, the worker count, each worker's GPU, and two CPU
workers that both serve and share voices."""

from __future__ import annotations

import time

import pytest
import requests
import torch

from audio_checks import check_generation
from higgs_runtime.config import Settings
from higgs_runtime.scaling import for_worker, resources, worker_count
from test_server_api import clip_bytes


@pytest.fixture
def gpus(monkeypatch):
    def present(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    return present


@pytest.mark.parametrize(("present", "setting", "expected"), [(0, "", 1), (4, "", 4), (4, "2", 2), (0, "3", 3)])
def test_worker_count_defaults_to_the_gpus_present(gpus, present, setting, expected):
    gpus(present)
    assert worker_count(Settings.from_env({"HIGGS_WORKERS": setting})) == expected


def test_each_worker_gets_its_own_gpu(gpus):
    gpus(4)
    devices = [for_worker(Settings(), index).device for index in (1, 2, 3, 4)]
    assert devices == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert for_worker(Settings(device="cuda:2"), 1).device == "cuda:2"
    assert for_worker(Settings(), None).device == "auto"  # not a BentoML worker
    gpus(0)
    assert for_worker(Settings(), 2).device == "auto"


def test_resource_spec_asks_for_a_gpu_per_worker_of_an_overridable_type():
    assert resources(Settings(), 1) == {"gpu": 1, "gpu_type": "nvidia-l4", "cpu": "4", "memory": "16Gi"}
    assert resources(Settings(gpu_type="nvidia-a100-80gb"), 2)["gpu_type"] == "nvidia-a100-80gb"
    with pytest.raises(ValueError, match="HIGGS_GPU_TYPE='bogus'"):
        resources(Settings(gpu_type="bogus"), 1)
    with pytest.raises(ValueError, match="HIGGS_WORKERS"):
        Settings.from_env({"HIGGS_WORKERS": "-1"})


def wait_for_healthy_workers(url: str, count: int, timeout: float = 180) -> None:
    """Opens connections (each answered by one worker) until `count` workers said they are healthy."""
    healthy, deadline = set(), time.monotonic() + timeout
    while len(healthy) < count:
        assert time.monotonic() < deadline, f"only workers {healthy} healthy after {timeout} s"
        with requests.Session() as session:
            health = session.get(url + "/health", timeout=10).json()
        if health["status"] == "healthy":
            healthy.add(health["worker"])
        time.sleep(0.1)


def connection_to(url: str, worker: int, attempts: int = 200) -> requests.Session:
    """A kept-alive connection to `worker`: every request sent through it reaches that worker."""
    for _ in range(attempts):
        session = requests.Session()
        if session.get(url + "/health", timeout=10).json()["worker"] == worker:
            return session
        session.close()
    raise AssertionError(f"none of {attempts} connections reached worker {worker}")


def test_two_cpu_workers_both_serve_and_share_voices(start_server, tmp_path):
    server = start_server(tmp_path / "data", extra_env={"HIGGS_WORKERS": "2"})
    server.wait_until(("loading", "healthy"))
    wait_for_healthy_workers(server.url, 2)

    first = connection_to(server.url, 1)
    uploaded = first.post(server.url + "/upload-voice", files={"file": ("w.wav", clip_bytes("mabel", seconds=3))},
                          data={"name": "between_workers"}, timeout=60)
    assert uploaded.status_code == 200, uploaded.text
    assert first.get(server.url + "/health", timeout=10).json()["worker"] == 1

    second = connection_to(server.url, 2)
    body = {"text": "Heard through the other worker.", "reference_voice": "between_workers", "max_new_tokens": 40}
    answer = second.post(server.url + "/generate/voice-clone", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    check_generation(answer.json(), body["text"])
    health = second.get(server.url + "/health", timeout=10).json()
    assert health["worker"] == 2 and health["device"] == "cpu"  # a GPU in the resource spec, served on the CPU
