"""`bentoml build` works offline and produces a bento with the right contents.

One offline build per test session (module fixture, ~10 s on 2 cores); every test inspects its output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from paths import REPO_DIR as REPO

VENV_BIN = Path(sys.executable).parent  # the venv's bin dir: `bentoml` and `uv` live here
BENTO_NAME = "higgs_audio"
APIS = {"generate", "generate_voice_clone", "generate_multi_speaker", "upload_voice"}
CPU_TORCH_INDEX = re.compile(r"--(extra-)?index-url\b.*(/cpu\b|\+cpu|whl/cpu)", re.IGNORECASE)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bento_build")
    home = tmp / "bentoml_home"
    env = dict(
        os.environ,
        BENTOML_HOME=str(home),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HOME=str(tmp / "hf_home"),
        # If the build ever instantiated the service (model load, preset fetch), these would appear.
        HIGGS_DATA_DIR=str(tmp / "higgs_data"),
        HIGGS_CACHE_DIR=str(tmp / "higgs_cache"),
        BENTOML_DO_NOT_TRACK="true",
        PATH=os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]),
    )
    proc = subprocess.run(
        [str(VENV_BIN / "bentoml"), "build", "--output", "tag"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, f"bentoml build failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    match = re.search(rf"__tag__:{BENTO_NAME}:(\S+)", proc.stdout)
    assert match, f"no bento tag in the build output:\n{proc.stdout}\n{proc.stderr}"
    bento = home / "bentos" / BENTO_NAME / match.group(1)
    assert bento.is_dir(), f"{bento} missing; bentos dir holds {sorted(p.name for p in (home / 'bentos').rglob('*'))}"
    return bento, tmp


@pytest.fixture(scope="module")
def bento(build) -> Path:
    return build[0]


@pytest.fixture(scope="module")
def bento_yaml(bento) -> dict:
    return yaml.safe_load((bento / "bento.yaml").read_text())


def test_build_does_not_start_the_service(build):
    _, tmp = build
    for name in ("higgs_data", "higgs_cache", "hf_home"):
        assert not (tmp / name).exists(), f"bentoml build created {name}: it instantiated the service or hit the Hub"


def test_bento_yaml_names_the_service(bento_yaml):
    assert bento_yaml["service"] == "service:HiggsAudio"
    assert bento_yaml["name"] == BENTO_NAME
    assert bento_yaml["labels"]["project"] == "higgs-audio-server"
    assert "model" in bento_yaml["labels"]


def test_bento_yaml_lists_the_apis(bento_yaml):
    routes = {route["name"]: route["route"] for route in bento_yaml["schema"]["routes"]}
    assert APIS <= set(routes), f"routes in bento.yaml: {sorted(routes)}"
    assert routes["upload_voice"] == "/upload-voice"


def test_src_holds_only_runtime_files(bento):
    src = bento / "src"
    for rel in ("service.py", "main.py", "higgs_runtime/__init__.py", "higgs_runtime/engine/scheduler.py",
                "higgs_api/playground/index.html", "voice_prompts/catalog.json"):
        assert (src / rel).is_file(), f"src/{rel} missing from the bento"
    for rel in ("tests", ".venv", "bench", "docs", ".ci", ".git", ".pytest_cache"):
        assert not (src / rel).exists(), f"src/{rel} must not be in the bento"
    assert not list(src.rglob("*.pyc")) and not list(src.rglob("__pycache__"))


def test_python_requirements_pin_cuda_torch(bento, bento_yaml):
    requirements = (bento / "env" / "python" / "requirements.txt").read_text()
    lines = {line.strip() for line in requirements.splitlines()}
    for pin in ("torch==2.9.1", "torchaudio==2.9.1", "bentoml==1.4.40", "transformers==5.23.0", "soundfile==0.14.0"):
        assert pin in lines, f"{pin} missing from env/python/requirements.txt:\n{requirements}"
    for dev_only in ("pytest", "requests", "uv"):
        assert not any(re.match(rf"{dev_only}\s*(==|$)", line) for line in lines), f"{dev_only} is dev-only"
    # PyPI's Linux x86_64 torch 2.9.1 is the CUDA 12.8 build; a CPU-only index would silently swap it out.
    for text in (requirements, bento_yaml["image"]["python_requirements"]):
        assert not CPU_TORCH_INDEX.search(text), f"CPU-only torch index in the requirements:\n{text}"
        assert "+cpu" not in text


def test_dockerfile_installs_libsndfile_and_sets_device(bento):
    dockerfile = bento / "env" / "docker" / "Dockerfile"
    assert dockerfile.is_file()
    text = dockerfile.read_text()
    assert re.search(r"^RUN .*apt-get install .*\blibsndfile1\b", text, re.MULTILINE), text
    assert "ffmpeg" not in text
    assert re.search(r"^ENV HIGGS_DEVICE=", text, re.MULTILINE) and "ARG HIGGS_DEVICE=auto" in text
    assert re.search(r"^FROM python:3\.11", text, re.MULTILINE), text


def test_bento_declares_one_gpu_of_24_gb(bento_yaml):
    """The resource spec that containerized and BentoCloud deployments read; built on a machine
    without CUDA, the worker count (so the GPU count) is one."""
    (service,) = [service for service in bento_yaml["services"] if service["name"] == BENTO_NAME]
    assert service["config"]["workers"] == 1
    assert service["config"]["resources"] == {"gpu": 1, "gpu_type": "nvidia-l4", "cpu": "4", "memory": "16Gi"}
