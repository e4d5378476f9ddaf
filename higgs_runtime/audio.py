"""Audio in and out: decode user-supplied reference audio, encode generated speech as WAV."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 24000
MIN_INPUT_RATE = 16000
MAX_INPUT_RATE = 48000
# Container names as libsndfile reports them (soundfile says "MP3" for MPEG audio).
ACCEPTED_FORMATS = frozenset({"WAV", "WAVEX", "FLAC", "MP3"})
_DATA_URL_PREFIX = re.compile(r"^data:audio/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)


class AudioInputError(ValueError):
    """Audio the caller sent cannot be used. The message is shown to API users as-is."""


def decode_audio(data: bytes, *, min_seconds: float, max_seconds: float) -> np.ndarray:
    """Decode a WAV, FLAC or MP3 file into mono float32 samples at SAMPLE_RATE, clipped to [-1, 1]."""
    if not data:
        raise AudioInputError("audio is empty")
    try:
        with sf.SoundFile(io.BytesIO(data)) as audio_file:
            _check_header(audio_file, max_seconds)
            # Never decode more than the limit allows, even when the header's frame count is wrong.
            max_frames = int(max_seconds * audio_file.samplerate) + 1
            samples = audio_file.read(frames=max_frames, dtype="float32", always_2d=True)
            rate = audio_file.samplerate
    except sf.LibsndfileError as exc:
        raise AudioInputError("could not decode the audio: it is not a WAV, MP3 or FLAC file") from exc
    _check_duration(len(samples) / rate, min_seconds, max_seconds)
    mono = _finite(samples.mean(axis=1, dtype=np.float32))
    return np.clip(_resample(mono, rate), -1.0, 1.0)


def decode_base64_audio(text: str, *, min_seconds: float, max_seconds: float) -> np.ndarray:
    """Decode base64 text (optionally a `data:audio/...;base64,` URL) holding a WAV, FLAC or MP3 file."""
    compact = _DATA_URL_PREFIX.sub("", "".join(text.split()), count=1)
    try:
        data = base64.b64decode(compact, validate=True)
    except ValueError as exc:
        raise AudioInputError(
            "reference_audio is not valid base64: send the audio file encoded as standard base64"
        ) from exc
    return decode_audio(data, min_seconds=min_seconds, max_seconds=max_seconds)


def encode_wav(samples: np.ndarray) -> bytes:
    """A complete 16-bit PCM mono WAV file at SAMPLE_RATE."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected 1-D mono samples, got shape {samples.shape}")
    clipped = np.clip(np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    buffer = io.BytesIO()
    sf.write(buffer, clipped, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def duration_seconds(samples: np.ndarray) -> float:
    return len(samples) / SAMPLE_RATE


def _check_header(audio_file: sf.SoundFile, max_seconds: float) -> None:
    if audio_file.format not in ACCEPTED_FORMATS:
        raise AudioInputError(f"audio format {audio_file.format} is not supported: send a WAV, MP3 or FLAC file")
    rate = audio_file.samplerate
    if not MIN_INPUT_RATE <= rate <= MAX_INPUT_RATE:
        raise AudioInputError(f"sample rate {rate} Hz is not supported: use 16 kHz to 48 kHz")
    _check_not_too_long(audio_file.frames / rate, max_seconds)


def _check_duration(seconds: float, min_seconds: float, max_seconds: float) -> None:
    if seconds == 0:
        raise AudioInputError("audio is empty: it contains no samples")
    _check_not_too_long(seconds, max_seconds)
    if seconds < min_seconds:
        raise AudioInputError(f"reference audio is {seconds:.2f} s long; the minimum is {min_seconds:g} s")


def _check_not_too_long(seconds: float, max_seconds: float) -> None:
    if seconds > max_seconds:
        raise AudioInputError(f"reference audio is {seconds:.2f} s long; the limit is {max_seconds:g} s")


def _finite(samples: np.ndarray) -> np.ndarray:
    finite = np.isfinite(samples)
    if not finite.any():
        raise AudioInputError("audio contains no valid samples (all are NaN or infinite)")
    # A few bad samples would spread through the resampling filter; silence them instead.
    return np.where(finite, samples, np.float32(0.0))


def _resample(samples: np.ndarray, rate: int) -> np.ndarray:
    """To SAMPLE_RATE with libsoxr's polyphase resampler: its time and memory grow with the clip's
    length, never with the rates' factors (a sinc kernel over rate / gcd(rate, 24000) phases would
    take gigabytes for a clip at 16,001 Hz)."""
    if rate == SAMPLE_RATE:
        return samples
    # "HQ": 20-bit precision (about 120 dB), finer than the 16-bit clips users send and the codec can
    # hear, at a fraction of "VHQ"'s (28-bit) cost.
    return soxr.resample(np.ascontiguousarray(samples, dtype=np.float32), rate, SAMPLE_RATE, quality="HQ")
