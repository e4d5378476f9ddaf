import io
import struct
import wave

import av
import numpy as np
import pytest
import soundfile as sf

from higgs_runtime.audio import SAMPLE_RATE, decode_audio
from higgs_runtime.encoding import FORMATS, TempoStream, change_tempo, encode, stream_encoder
from paths import VOICE_PROMPTS_DIR

LOSSY = ("mp3", "opus", "aac")
# Opus is always decoded at 48 kHz, whatever rate it was encoded from.
DECODED_RATE = {"mp3": SAMPLE_RATE, "opus": 48000, "aac": SAMPLE_RATE}
# Opus (Ogg) marks its exact length. ADTS cannot say how much of the first and last AAC frame
# (1024 samples each) is filler; a streamed MP3 cannot either, having no LAME tag (1105 samples of
# delay plus the last 576-sample frame); a whole MP3 file has one and decodes to the exact length.
STREAM_TOLERANCE_S = {"mp3": 0.075, "opus": 0.0, "aac": 0.09}
FILE_TOLERANCE_S = dict(STREAM_TOLERANCE_S, mp3=0.0)
# Uneven chunk lengths, as a generator hands them over: 0.2 s, 1 s, 37 ms, 0.5 s, one sample.
CHUNK_SECONDS = (0.2, 1.0, 0.037, 0.5, 1 / SAMPLE_RATE)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return decode_audio((VOICE_PROMPTS_DIR / "en_man.wav").read_bytes(), min_seconds=0, max_seconds=60)


def sine(seconds: float, hertz: float = 440.0) -> np.ndarray:
    times = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * hertz * times)).astype(np.float32)


def av_decode(data: bytes) -> tuple[np.ndarray, int]:
    """Samples and rate of a mono file, read back by FFmpeg's decoders."""
    with av.open(io.BytesIO(data)) as container:
        context = container.streams.audio[0].codec_context
        samples = np.concatenate([frame.to_ndarray()[0] for frame in container.decode(audio=0)])
        assert context.layout.nb_channels == 1
        return samples, context.sample_rate


def assert_av_mono(data: bytes, rate: int, seconds: float, tolerance: float) -> None:
    samples, decoded_rate = av_decode(data)
    assert decoded_rate == rate
    assert abs(len(samples) / rate - seconds) <= tolerance + 1 / rate


def in_chunks(samples: np.ndarray, seconds: tuple[float, ...] = CHUNK_SECONDS) -> list[np.ndarray]:
    chunks, start, turn = [], 0, 0
    while start < len(samples):
        length = max(1, round(seconds[turn % len(seconds)] * SAMPLE_RATE))
        chunks.append(samples[start:start + length])
        start, turn = start + length, turn + 1
    return chunks


def streamed(samples: np.ndarray, fmt: str) -> tuple[list[bytes], bytes]:
    """The bytes of each write() and of close()."""
    encoder = stream_encoder(fmt)
    writes = [encoder.write(chunk) for chunk in in_chunks(samples)]
    return writes, encoder.close()


def assert_lossless(decoded: np.ndarray, original: np.ndarray) -> None:
    """Equal within 16-bit quantisation; `decoded` is float in [-1, 1)."""
    assert decoded.shape == original.shape
    np.testing.assert_allclose(decoded, original, rtol=0, atol=2 / 32768)


def test_formats_and_mime_types():
    assert FORMATS == {"wav": "audio/wav", "pcm": "audio/pcm", "flac": "audio/flac", "mp3": "audio/mpeg",
                       "opus": "audio/ogg", "aac": "audio/aac"}


def test_wav_file(speech):
    data = encode(speech, "wav")
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (SAMPLE_RATE, 1, 2)
        assert reader.getnframes() == len(speech)
    decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == SAMPLE_RATE
    assert_lossless(decoded, speech)


def test_pcm_file(speech):
    decoded = np.frombuffer(encode(speech, "pcm"), dtype="<i2").astype(np.float32) / 32768
    assert_lossless(decoded, speech)


def test_flac_file(speech):
    data = encode(speech, "flac")
    info = sf.info(io.BytesIO(data))
    assert (info.format, info.samplerate, info.channels, info.frames) == ("FLAC", SAMPLE_RATE, 1, len(speech))
    decoded, _ = sf.read(io.BytesIO(data), dtype="float32")
    assert_lossless(decoded, speech)


@pytest.mark.parametrize("fmt", LOSSY)
def test_lossy_file(speech, fmt):
    assert_av_mono(encode(speech, fmt), DECODED_RATE[fmt], len(speech) / SAMPLE_RATE, FILE_TOLERANCE_S[fmt])


def test_mp3_file_reads_with_libsndfile(speech):
    decoded, rate = sf.read(io.BytesIO(encode(speech, "mp3")), dtype="float32")
    assert rate == SAMPLE_RATE and decoded.ndim == 1
    assert len(decoded) == len(speech)


def test_input_is_clipped():
    loud = np.array([-3.0, -1.0, 0.0, 1.0, 3.0, np.nan], dtype=np.float32)
    assert np.frombuffer(encode(loud, "pcm"), dtype="<i2").tolist() == [-32767, -32767, 0, 32767, 32767, 0]


def test_unknown_format_names_the_supported_ones():
    for build in (lambda: encode(sine(0.1), "ogg"), lambda: stream_encoder("ogg")):
        with pytest.raises(ValueError, match="wav, pcm, flac, mp3, opus, aac"):
            build()


def test_stereo_input_is_refused():
    with pytest.raises(ValueError, match="mono"):
        encode(np.zeros((2, 100), dtype=np.float32), "wav")


def test_streamed_wav_has_one_header_of_unknown_length(speech):
    writes, rest = streamed(speech, "wav")
    data = b"".join(writes) + rest
    assert data.count(b"RIFF") == 1
    assert struct.unpack_from("<I", data, 4)[0] == 0xFFFFFFFF
    assert data[36:44] == b"data" + b"\xff\xff\xff\xff"
    decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == SAMPLE_RATE
    assert_lossless(decoded, speech)
    assert data[44:] == encode(speech, "pcm")


def test_streamed_pcm_is_the_file(speech):
    writes, rest = streamed(speech, "pcm")
    assert b"".join(writes) + rest == encode(speech, "pcm")


def test_streamed_flac(speech):
    # The length is unknown when the header goes out, which the soundfile wrapper cannot read: use FFmpeg.
    writes, rest = streamed(speech, "flac")
    samples, rate = av_decode(b"".join(writes) + rest)
    assert rate == SAMPLE_RATE
    assert_lossless(samples.astype(np.float32) / 32768, speech)


@pytest.mark.parametrize("fmt", LOSSY)
def test_streamed_lossy(speech, fmt):
    writes, rest = streamed(speech, fmt)
    data = b"".join(writes) + rest
    assert_av_mono(data, DECODED_RATE[fmt], len(speech) / SAMPLE_RATE, STREAM_TOLERANCE_S[fmt])


def test_streamed_mp3_reads_with_libsndfile(speech):
    writes, rest = streamed(speech, "mp3")
    decoded, rate = sf.read(io.BytesIO(b"".join(writes) + rest), dtype="float32")
    assert rate == SAMPLE_RATE and decoded.ndim == 1
    assert abs(len(decoded) / SAMPLE_RATE - len(speech) / SAMPLE_RATE) <= STREAM_TOLERANCE_S["mp3"]


@pytest.mark.parametrize("fmt", LOSSY + ("flac",))
def test_streaming_is_incremental(speech, fmt):
    encoder = stream_encoder(fmt)
    half_second = SAMPLE_RATE // 2
    writes = [encoder.write(speech[start:start + half_second]) for start in range(0, 3 * SAMPLE_RATE, half_second)]
    rest = encoder.close()
    assert all(writes), [len(chunk) for chunk in writes]
    assert len(rest) < sum(len(chunk) for chunk in writes) / 2


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_empty_chunks_are_harmless(fmt):
    encoder = stream_encoder(fmt)
    data = encoder.write(np.zeros(0, np.float32)) + encoder.write(sine(1.0)) + encoder.write(np.zeros(0, np.float32))
    data += encoder.close()
    if fmt == "pcm":
        assert len(data) == 2 * SAMPLE_RATE
    else:
        rate = DECODED_RATE.get(fmt, SAMPLE_RATE)
        assert_av_mono(data, rate, 1.0, STREAM_TOLERANCE_S.get(fmt, 0.0))


HERTZ_WINDOW = 4096


def dominant_hertz(samples: np.ndarray) -> float:
    """Peak of the power spectrum averaged over half-overlapping windows, to one bin (about 5.9 Hz).

    Averaging keeps the peak of speech on its pitch; one spectrum of a whole clip can peak on any harmonic.
    """
    windows = np.lib.stride_tricks.sliding_window_view(samples, HERTZ_WINDOW)[::HERTZ_WINDOW // 2]
    power = (np.abs(np.fft.rfft(windows * np.hanning(HERTZ_WINDOW), axis=1)) ** 2).mean(axis=0)
    return float(np.argmax(power)) * SAMPLE_RATE / HERTZ_WINDOW


@pytest.mark.parametrize("speed", [0.25, 0.5, 0.8, 1.5, 2.0, 4.0])
def test_tempo_changes_length_not_pitch(speed):
    original = sine(2.0)
    faster = change_tempo(original, speed)
    assert faster.dtype == np.float32 and faster.ndim == 1
    assert abs(len(faster) / SAMPLE_RATE - 2.0 / speed) <= 0.06
    assert abs(dominant_hertz(faster) - 440.0) <= 5.0


def test_tempo_of_one_is_the_input():
    original = sine(0.5)
    assert change_tempo(original, 1.0) is original


@pytest.mark.parametrize("speed", [0.2, 0.0, -1.0, 4.01, 5.0, float("nan")])
def test_tempo_out_of_range_is_refused(speed):
    with pytest.raises(ValueError, match="speed"):
        change_tempo(sine(0.5), speed)


@pytest.mark.parametrize("speed", [0.25, 0.7, 1.5, 4.0])
def test_tempo_length_is_exact_even_for_short_clips(speed):
    for length in (1, 500, 1025, 30001):
        assert len(change_tempo(sine(length / SAMPLE_RATE), speed)) == round(length / speed)


def test_tempo_of_empty_audio_is_empty():
    assert len(change_tempo(np.zeros(0, np.float32), 2.0)) == 0


def test_tempo_refuses_stereo():
    with pytest.raises(ValueError, match="mono"):
        change_tempo(np.zeros((2, 24000), dtype=np.float32), 2.0)


def tempo_streamed(
    samples: np.ndarray, speed: float, seconds: tuple[float, ...] = CHUNK_SECONDS
) -> tuple[list[np.ndarray], np.ndarray]:
    """The audio of each TempoStream.write() and of close()."""
    tempo = TempoStream(speed)
    writes = [tempo.write(chunk) for chunk in in_chunks(samples, seconds)]
    return writes, tempo.close()


@pytest.mark.parametrize("speed", [0.25, 0.5, 2.0, 4.0])
@pytest.mark.parametrize("clip", ["sine", "speech"])
def test_streamed_tempo_changes_length_not_pitch(speech, clip, speed):
    original = sine(2.0) if clip == "sine" else speech
    writes, rest = tempo_streamed(original, speed)
    result = np.concatenate(writes + [rest])
    assert result.dtype == np.float32
    assert len(result) == round(len(original) / speed)
    assert abs(dominant_hertz(result) - dominant_hertz(original)) <= SAMPLE_RATE / HERTZ_WINDOW


@pytest.mark.parametrize("speed", [0.25, 0.5, 0.8, 2.0, 3.0, 4.0])
@pytest.mark.parametrize("seconds", [CHUNK_SECONDS, (0.01,), (0.3, 1 / SAMPLE_RATE, 0.0421)])
def test_streamed_tempo_is_the_whole_clip_tempo(speech, seconds, speed):
    # Equal to the sample however the input is chunked: TempoStream feeds atempo fixed-size frames.
    writes, rest = tempo_streamed(speech, speed, seconds)
    np.testing.assert_array_equal(np.concatenate(writes + [rest]), change_tempo(speech, speed))


@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_streamed_tempo_is_incremental(speech, speed):
    writes, rest = tempo_streamed(speech[:3 * SAMPLE_RATE], speed, (0.5,))
    assert len(writes) == 6 and all(len(chunk) for chunk in writes), [len(chunk) for chunk in writes]
    # Output keeps up with the input: close() holds back well under one 0.5 s chunk.
    assert len(rest) * speed <= 0.15 * SAMPLE_RATE


def test_streamed_tempo_of_one_is_the_input(speech):
    tempo = TempoStream(1.0)
    chunks = in_chunks(speech)
    assert all(tempo.write(chunk) is chunk for chunk in chunks)
    assert len(tempo.close()) == 0
