"""Parsing of the WAV files the server returns, shared by the end-to-end tests."""

from __future__ import annotations

import base64
import io
import wave

import numpy as np
import soundfile as sf


def parse_wav(data: bytes, streamed: bool = False) -> np.ndarray:
    """Checks a returned WAV (24 kHz, mono, 16-bit PCM) with two independent readers; returns its samples.
    A streamed WAV has one header with unknown (0xFFFFFFFF) sizes, then all the samples."""
    with wave.open(io.BytesIO(data)) as reader:
        assert reader.getframerate() == 24000
        assert reader.getnchannels() == 1
        assert reader.getsampwidth() == 2
        frames = (len(data) - 44) // 2 if streamed else reader.getnframes()
    assert data.count(b"RIFF") == 1
    if streamed:
        assert data[4:8] == b"\xff\xff\xff\xff" and data[40:44] == b"\xff\xff\xff\xff"
    samples, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == 24000 and samples.ndim == 1 and len(samples) == frames
    return samples


def check_generation(body: dict, text: str) -> np.ndarray:
    """Checks a /generate-style response body against its contract; returns the audio samples."""
    assert set(body) >= {"audio_base64", "text", "sampling_rate", "duration", "usage"}
    assert body["text"] == text
    assert body["sampling_rate"] == 24000
    samples = parse_wav(base64.b64decode(body["audio_base64"], validate=True))
    assert body["duration"] == len(samples) / 24000
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert 0 < usage["prefill_tokens"] <= usage["prompt_tokens"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["finish_reason"] in ("stop", "length", "guard")
    return samples
