"""In-process fixtures for runtime unit tests: the tiny-random model, loaded once per session."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from higgs_runtime import loading
from higgs_runtime.audio import decode_audio
from higgs_runtime.codec import Codec
from higgs_runtime.config import Settings
from paths import VOICE_PROMPTS_DIR


@dataclass
class TinyModel:
    loaded: loading.LoadedModel
    codec_wrapper: Codec

    def __getattr__(self, name):
        return getattr(self.loaded, name)


@pytest.fixture(scope="session")
def tiny_model(model_cache) -> TinyModel:
    settings = Settings(model_path="tiny-random", audio_tokenizer_path="tiny-random", device="cpu",
                        cache_dir=model_cache)
    loaded = loading.load(settings)
    return TinyModel(loaded, Codec(loaded.codec, loaded.device))


@pytest.fixture(scope="session")
def reference_clips() -> list[np.ndarray]:
    """Two real voices, cut short to keep the tests quick (24 kHz mono float32)."""
    clips = []
    for name, seconds in (("en_man", 2.0), ("belinda", 1.5)):
        samples = decode_audio((VOICE_PROMPTS_DIR / f"{name}.wav").read_bytes(), min_seconds=0, max_seconds=60)
        clips.append(samples[: int(seconds * 24000)])
    return clips
