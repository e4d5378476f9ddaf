import base64
import io
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from higgs_runtime.audio import (
    SAMPLE_RATE,
    AudioInputError,
    decode_audio,
    decode_base64_audio,
    duration_seconds,
    encode_wav,
)
from paths import VOICE_PROMPTS_DIR

LIMITS = {"min_seconds": 0.5, "max_seconds": 30.0}


def clip(name: str) -> tuple[np.ndarray, int]:
    return sf.read(VOICE_PROMPTS_DIR / f"{name}.wav", dtype="float32")


def encoded(samples: np.ndarray, rate: int, format: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=format, subtype=subtype)
    return buffer.getvalue()


def expected_length(frames: int, rate: int) -> int:
    return round(frames * SAMPLE_RATE / rate)


@pytest.mark.parametrize(
    ("name", "rate"), [("chadwick", 22050), ("belinda", 44100), ("mabel", 48000), ("en_man", 24000)]
)
def test_real_clips_decode_to_24khz_mono(name, rate):
    data = (VOICE_PROMPTS_DIR / f"{name}.wav").read_bytes()
    assert sf.info(io.BytesIO(data)).samplerate == rate

    samples = decode_audio(data, **LIMITS)

    frames = sf.info(io.BytesIO(data)).frames
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - expected_length(frames, rate)) <= 1
    assert abs(duration_seconds(samples) - frames / rate) <= 1 / SAMPLE_RATE
    assert np.abs(samples).max() <= 1.0
    assert np.abs(samples).max() > 0.05


def test_24khz_clip_is_unchanged():
    original, _ = clip("en_woman")
    samples = decode_audio((VOICE_PROMPTS_DIR / "en_woman.wav").read_bytes(), **LIMITS)
    np.testing.assert_array_equal(samples, original)


@pytest.mark.parametrize(
    ("format", "subtype", "tolerance"),
    [
        ("WAV", "PCM_24", 1e-4),
        ("WAV", "PCM_32", 1e-4),
        ("WAV", "FLOAT", 1e-6),
        ("WAVEX", "PCM_16", 1e-4),
        ("FLAC", "PCM_16", 1e-4),
    ],
)
def test_lossless_variants_decode_to_the_same_samples(format, subtype, tolerance):
    original, rate = clip("en_woman")
    samples = decode_audio(encoded(original, rate, format, subtype), **LIMITS)
    assert samples.shape == original.shape
    np.testing.assert_allclose(samples, original, atol=tolerance)


def test_mp3_decodes():
    original, rate = clip("en_woman")
    samples = decode_audio(encoded(original, rate, "MP3", "MPEG_LAYER_III"), **LIMITS)
    assert samples.dtype == np.float32
    assert abs(len(samples) - len(original)) <= 2048
    length = min(len(samples), len(original))
    assert np.corrcoef(samples[:length], original[:length])[0, 1] > 0.9


def test_mp3_at_44khz_is_resampled():
    original, rate = clip("belinda")
    samples = decode_audio(encoded(original, rate, "MP3", "MPEG_LAYER_III"), **LIMITS)
    assert abs(len(samples) - expected_length(len(original), rate)) <= 2048


@pytest.mark.parametrize("channels", [2, 3])
def test_multichannel_is_averaged_to_mono(channels):
    original, rate = clip("en_woman")
    gains = np.linspace(1.0, 0.5, channels, dtype=np.float32)
    multichannel = original[:, None] * gains[None, :]
    samples = decode_audio(encoded(multichannel, rate, subtype="FLOAT"), **LIMITS)
    np.testing.assert_allclose(samples, original * gains.mean(), atol=1e-6)


def test_output_is_clipped():
    loud = np.full(SAMPLE_RATE, 2.0, dtype=np.float32)
    samples = decode_audio(encoded(loud, SAMPLE_RATE, subtype="FLOAT"), **LIMITS)
    assert samples.max() == 1.0


def test_some_nan_samples_are_silenced():
    original, rate = clip("en_woman")
    damaged = original.copy()
    damaged[1000:1010] = np.nan
    samples = decode_audio(encoded(damaged, rate, subtype="FLOAT"), **LIMITS)
    assert np.isfinite(samples).all()


@pytest.mark.parametrize("rate", [16000, 48000])
def test_rate_limits_are_inclusive(rate):
    samples = decode_audio(encoded(np.zeros(rate, dtype=np.float32), rate), **LIMITS)
    assert len(samples) == SAMPLE_RATE


def error_message(data: bytes, **limits) -> str:
    with pytest.raises(AudioInputError) as info:
        decode_audio(data, **(limits or LIMITS))
    return str(info.value)


def test_empty_bytes():
    assert error_message(b"") == "audio is empty"


def test_zero_samples():
    assert "empty" in error_message(encoded(np.zeros(0, dtype=np.float32), SAMPLE_RATE))


def test_garbage_bytes():
    message = error_message(b"this is not audio at all" * 50)
    assert message == "could not decode the audio: it is not a WAV, MP3 or FLAC file"


@pytest.mark.parametrize(("format", "subtype"), [("OGG", "VORBIS"), ("AIFF", "PCM_16")])
def test_other_containers_are_refused(format, subtype):
    original, rate = clip("en_woman")
    message = error_message(encoded(original, rate, format, subtype))
    assert message == f"audio format {format} is not supported: send a WAV, MP3 or FLAC file"


@pytest.mark.parametrize("rate", [8000, 96000])
def test_unsupported_sample_rates(rate):
    message = error_message(encoded(np.zeros(rate, dtype=np.float32), rate))
    assert message == f"sample rate {rate} Hz is not supported: use 16 kHz to 48 kHz"


def test_too_short():
    original, rate = clip("en_woman")
    message = error_message(encoded(original[: rate // 5], rate))
    assert message == "reference audio is 0.20 s long; the minimum is 0.5 s"


def test_too_long():
    original, rate = clip("en_woman")
    message = error_message(encoded(original, rate), min_seconds=0.5, max_seconds=5)
    assert message == f"reference audio is {len(original) / rate:.2f} s long; the limit is 5 s"


def test_too_long_is_refused_without_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the samples were decoded")

    original, rate = clip("en_woman")
    data = encoded(original, rate)
    monkeypatch.setattr(sf.SoundFile, "read", refuse)
    assert "the limit is 5 s" in error_message(data, min_seconds=0.5, max_seconds=5)


def test_all_nan():
    nan = np.full(SAMPLE_RATE, np.nan, dtype=np.float32)
    assert "NaN" in error_message(encoded(nan, SAMPLE_RATE, subtype="FLOAT"))


def test_base64_with_data_url_and_line_breaks():
    data = (VOICE_PROMPTS_DIR / "en_woman.wav").read_bytes()
    text = base64.encodebytes(data).decode("ascii")
    plain = decode_base64_audio(text, **LIMITS)
    with_prefix = decode_base64_audio("data:audio/wav;base64," + text, **LIMITS)
    np.testing.assert_array_equal(plain, with_prefix)
    np.testing.assert_array_equal(plain, clip("en_woman")[0])


@pytest.mark.parametrize("text", ["not base64 at all!", "QUJDRA", "QUJDRA==é", "data:audio/wav;base64,@@@@"])
def test_bad_base64(text):
    with pytest.raises(AudioInputError, match="^reference_audio is not valid base64"):
        decode_base64_audio(text, **LIMITS)


def test_base64_of_garbage_is_a_decode_error():
    text = base64.b64encode(b"hello" * 100).decode("ascii")
    with pytest.raises(AudioInputError, match="could not decode the audio"):
        decode_base64_audio(text, **LIMITS)


def test_encode_wav_round_trip():
    original, _ = clip("en_woman")
    louder = original.copy()
    louder[:100] = 1.5
    data = encode_wav(louder)

    info = sf.info(io.BytesIO(data))
    assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", SAMPLE_RATE, 1)
    with wave.open(io.BytesIO(data)) as reader:
        assert reader.getframerate() == SAMPLE_RATE
        assert reader.getnchannels() == 1
        assert reader.getsampwidth() == 2
        assert reader.getnframes() == len(original)

    decoded = decode_audio(data, **LIMITS)
    assert np.all(decoded[:100] > 0.999)
    np.testing.assert_allclose(decoded[100:], original[100:], atol=1 / 32768)


def test_encode_wav_refuses_multichannel():
    with pytest.raises(ValueError):
        encode_wav(np.zeros((10, 2), dtype=np.float32))


def test_duration_seconds():
    assert duration_seconds(np.zeros(SAMPLE_RATE * 3)) == 3.0


ODD_RATES = [16001, 16006, 22050, 44100, 47999, 48000]


@pytest.mark.parametrize("rate", ODD_RATES)
def test_any_rate_resamples_to_the_right_length(rate):
    frames = int(rate * 1.7) + 3
    samples = decode_audio(encoded(np.zeros(frames, dtype=np.float32) + 0.01, rate, subtype="FLOAT"), **LIMITS)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - frames * SAMPLE_RATE / rate) <= 1


@pytest.mark.parametrize("rate", ODD_RATES)
def test_a_tone_keeps_its_pitch_through_resampling(rate):
    seconds, pitch = 2.0, 440.0
    tone = 0.5 * np.sin(2 * np.pi * pitch * np.arange(int(rate * seconds)) / rate).astype(np.float32)
    samples = decode_audio(encoded(tone, rate, subtype="FLOAT"), **LIMITS)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    peak = np.fft.rfftfreq(len(samples), 1 / SAMPLE_RATE)[spectrum.argmax()]
    assert abs(peak - pitch) <= 1.0  # the FFT's bins are 0.5 Hz apart
    middle = samples[SAMPLE_RATE // 2:-SAMPLE_RATE // 2]  # away from the filter's edges
    assert abs(np.sqrt(np.mean(middle ** 2)) - 0.5 / np.sqrt(2)) < 0.01  # and its level


# Run in a fresh interpreter: its peak resident memory (ru_maxrss, which sees the C library's
# allocations that tracemalloc does not) grows only by what decoding these clips takes.
_PEAK_MEMORY_PROBE = """
import io, resource, sys
import numpy as np, soundfile as sf
from higgs_runtime.audio import decode_audio

rate = int(sys.argv[1])
clips = []
for seconds in (0.6, 30.0):
    buffer = io.BytesIO()
    tone = 0.3 * np.sin(np.arange(int(rate * seconds)) * 0.05).astype(np.float32)
    sf.write(buffer, tone, rate, format="WAV", subtype="PCM_16")
    clips.append(buffer.getvalue())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for data in clips:
    decode_audio(data, min_seconds=0.5, max_seconds=30.0)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)  # KiB -> MiB
"""


@pytest.mark.parametrize("rate", [16001, 16006, 47999])
def test_resampling_memory_does_not_depend_on_the_rate(rate):
    """A rate sharing few factors with 24 kHz once made a WAV of 18 KB take gigabytes to resample."""
    probe = subprocess.run([sys.executable, "-c", _PEAK_MEMORY_PROBE, str(rate)], capture_output=True, text=True,
                           timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert probe.returncode == 0, probe.stderr
    assert int(probe.stdout.strip()) < 100  # MiB, for a 0.6 s and a 30 s clip
