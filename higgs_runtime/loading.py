"""Loads the generation model, its text tokenizer and the audio tokenizer, by Hub id or local path."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import torch

from .config import RANDOM_PRESETS, Settings
from .device_threads import use_device
from .tiny_random import FULL_SIZE_PRESET, ensure_preset, full_size_model

log = logging.getLogger(__name__)


def resolve_device(requested: str) -> torch.device:
    """`auto` picks cuda when present; `cpu`, `cuda` and `cuda:N` are taken as given (and checked)."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {requested!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {requested!r} does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {requested!r}: use auto, cpu, cuda or cuda:N")
    return device


def dtype_for(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@dataclass
class LoadedModel:
    model: object  # HiggsAudioV2ForConditionalGeneration
    tokenizer: object  # the text tokenizer
    codec: object  # HiggsAudioV2TokenizerModel
    device: torch.device
    dtype: torch.dtype
    codec_id: str  # identifies the audio tokenizer, so cached voice codes are never reused across codecs

    @property
    def config(self):
        return self.model.config


def load(settings: Settings) -> LoadedModel:
    from transformers import AutoTokenizer, HiggsAudioV2ForConditionalGeneration, HiggsAudioV2TokenizerModel

    device = resolve_device(settings.device)
    use_device(device)
    dtype = dtype_for(device)
    model_path, codec_path = settings.model_path, settings.audio_tokenizer_path
    codec_id = codec_path
    if model_path in RANDOM_PRESETS or codec_path in RANDOM_PRESETS:
        if model_path != codec_path:
            raise ValueError(f"a random preset must be used for both --model-path and --audio-tokenizer-path "
                             f"({' or '.join(RANDOM_PRESETS)})")
        built = ensure_preset(settings.cache_dir, model_path)
        codec_id = built.audio_tokenizer.parent.name
        model_path, codec_path = str(built.model), str(built.audio_tokenizer)
    log.info("loading model %s and audio tokenizer %s on %s (%s)", settings.model_path, codec_path, device, dtype)
    if settings.model_path == FULL_SIZE_PRESET:
        model = full_size_model(device, dtype)
    else:
        model = HiggsAudioV2ForConditionalGeneration.from_pretrained(model_path, dtype=dtype, attn_implementation="sdpa")
        model = model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    # The codec stays in fp32: it is small, and its convolutions lose quality in bf16.
    codec = HiggsAudioV2TokenizerModel.from_pretrained(codec_path).to(device).eval()
    return LoadedModel(model, tokenizer, codec, device, dtype, codec_id=codec_id)


class BackgroundLoader:
    """Loads the model once on a thread so the service answers /health while it loads."""

    def __init__(self, settings: Settings, on_ready):
        self._settings = settings
        self._on_ready = on_ready
        self._lock = threading.Lock()
        self.status = "loading"  # loading | ready | failed
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="model-loader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            loaded = load(self._settings)
            self._on_ready(loaded)
        except Exception as exc:  # any failure is reported through /health and every 503
            log.exception("model loading failed")
            with self._lock:
                self.status, self.error = "failed", f"{type(exc).__name__}: {exc}"
            return
        with self._lock:
            self.status = "ready"
