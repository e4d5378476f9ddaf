"""The reference voice the benchmarks clone: the shared voice prompts one after another, cut to
length, with their transcripts (`../shared/voice_prompts`). Where that folder is absent (a bare GPU
machine) a synthetic voice-like signal stands in, with a fixed transcript: the random presets make
noise of any voice, and what a clone costs depends only on the clip's length."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf

VOICES = Path(__file__).resolve().parents[2] / "shared" / "voice_prompts"
REFERENCE_SECONDS = 30.0  # a real clone reference: about 770 prompt tokens of audio
SAMPLE_RATE = 24000
TRANSCRIPT_CHARS = 1000  # the server's default HIGGS_MAX_TRANSCRIPT_CHARS
_STAND_IN_TRANSCRIPT = ("A stand-in voice reads a long passage at an even pace, sentence after sentence, so that the "
                        "clone has thirty seconds of reference audio to follow.")


def reference_voice(seconds: float = REFERENCE_SECONDS) -> tuple[np.ndarray, str]:
    """(24 kHz mono float32 samples, transcript)."""
    wavs = sorted(VOICES.glob("*.wav"))
    if not wavs:
        return _stand_in(seconds), _STAND_IN_TRANSCRIPT
    from higgs_runtime.audio import decode_audio

    clips = [decode_audio(path.read_bytes(), min_seconds=0, max_seconds=60) for path in wavs]
    transcript = " ".join(path.read_text().strip() for path in sorted(VOICES.glob("*.txt")))
    return np.concatenate(clips)[: int(seconds * SAMPLE_RATE)], transcript


def reference_wav(seconds: float = REFERENCE_SECONDS) -> tuple[bytes, str]:
    """The reference voice as a 16-bit WAV file, and its transcript as far as a server takes it."""
    samples, transcript = reference_voice(seconds)
    buffer = io.BytesIO()
    sf.write(buffer, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue(), transcript[:TRANSCRIPT_CHARS]


def _stand_in(seconds: float) -> np.ndarray:
    """Syllable-like bursts of a wandering pitch with its harmonics, over a little noise."""
    time = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 140 + 30 * np.sin(2 * np.pi * 0.3 * time)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
    syllables = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * time)
    noise = np.random.default_rng(0).normal(0, 0.02, time.shape)
    return (0.3 * voiced * syllables + noise).astype(np.float32)
