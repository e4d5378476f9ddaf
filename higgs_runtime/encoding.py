"""Audio out: speech (24 kHz mono float32) as bytes in a response format, whole or as a stream.

The format names are those of OpenAI's `response_format`. Every format has one encoder, used both for
complete files (`encode`) and for streamed responses (`stream_encoder`).
"""

from __future__ import annotations

import io
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from fractions import Fraction

import av
import av.filter
import numpy as np

from higgs_runtime.audio import SAMPLE_RATE

FORMATS = {
    "wav": "audio/wav",
    "pcm": "audio/pcm",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
}
"""Response format -> MIME type.

`pcm` is headerless audio: signed 16-bit little-endian samples, 24 kHz, mono. `opus` is Opus in an Ogg
container and `aac` is AAC in ADTS frames.
"""

MIN_SPEED = 0.25
MAX_SPEED = 4.0
# One atempo stage keeps its best quality within 0.5..2.0; larger changes are chained stages.
_ATEMPO_RANGE = (0.5, 2.0)
# atempo's output depends on where its input frames split, and it hands over an output buffer (sized
# from the input frame) only once full. Frames of one atempo window (24 kHz / 24, rounded up to a power
# of two), whatever the chunks written, make the result independent of chunking and keep it a window
# or two behind the input rather than a whole chunk.
_TEMPO_FRAME = 1024
# atempo drops the last windows of its input when it ends (up to ~190 ms of output at speed 0.25).
# This much silence after the input flushes them out at every speed with a wide margin (measured);
# the result is then cut to the input's length / speed.
_TEMPO_PADDING = 8 * _TEMPO_FRAME
_UNKNOWN_WAV_SIZE = 0xFFFFFFFF
_TIME_BASE = Fraction(1, SAMPLE_RATE)


@dataclass(frozen=True)
class _AvFormat:
    container: str
    codec: str
    bit_rate: int | None = None
    container_options: dict[str, str] = field(default_factory=dict)


# Bit rates suit 24 kHz mono speech (the usual 128k figures are for 44.1 kHz stereo music).
_AV_FORMATS = {
    # FFmpeg reserves 8 KiB of FLAC header padding for later tag edits by default; a response needs none.
    "flac": _AvFormat("flac", "flac", container_options={"metadata_header_padding": "0"}),
    "mp3": _AvFormat("mp3", "libmp3lame", 64_000),
    # libopus takes 24 kHz input as is; Opus decoders play it back at 48 kHz. The Ogg muxer holds
    # packets until a page covers page_duration (default 1 s); 200 ms pages keep streaming prompt.
    "opus": _AvFormat("ogg", "libopus", 32_000, {"page_duration": "200000"}),
    "aac": _AvFormat("adts", "aac", 64_000),
}


class StreamEncoder(ABC):
    """Encodes speech arriving in chunks. The bytes of all write() calls then close() form one file."""

    @abstractmethod
    def write(self, samples: np.ndarray) -> bytes:
        """Encodes a chunk; returns the bytes ready to send now, possibly none."""

    @abstractmethod
    def close(self) -> bytes:
        """Ends the stream; returns the remaining bytes."""


def encode(samples: np.ndarray, fmt: str) -> bytes:
    """A complete file in `fmt` holding `samples` (24 kHz mono float32, clipped to [-1, 1])."""
    _check_format(fmt)
    pcm = _to_int16(samples)
    if fmt == "pcm":
        return pcm.tobytes()
    if fmt == "wav":
        return _wav_header(pcm.nbytes) + pcm.tobytes()
    # A seekable output lets the muxer fill in its header at the end (FLAC STREAMINFO length and
    # checksum, MP3 Xing/LAME tag with the encoder delay), which a stream cannot have.
    output = io.BytesIO()
    encoder = _AvEncoder(_AV_FORMATS[fmt], output)
    encoder.encode(pcm)
    encoder.finish()
    return output.getvalue()


def stream_encoder(fmt: str) -> StreamEncoder:
    """A new encoder for one streamed response in `fmt`.

    A streamed `wav` starts with one header whose RIFF and data sizes are 0xFFFFFFFF (length unknown),
    as streaming WAV servers do; readers then take the data to run to the end of the stream.
    """
    _check_format(fmt)
    if fmt in _AV_FORMATS:
        return _AvStreamEncoder(_AV_FORMATS[fmt])
    return _PcmStreamEncoder(_wav_header(None) if fmt == "wav" else b"")


def change_tempo(samples: np.ndarray, speed: float) -> np.ndarray:
    """Plays `samples` (24 kHz mono float32) `speed` times faster, keeping the pitch.

    The result is round(len(samples) / speed) samples long. `speed` must lie in [MIN_SPEED, MAX_SPEED].
    """
    tempo = TempoStream(speed)
    head = tempo.write(samples)
    tail = tempo.close()
    # At speed 1.0 this returns the input itself, uncopied.
    return np.concatenate([head, tail]) if tail.size else head


class TempoStream:
    """Plays speech arriving in chunks (24 kHz mono float32) `speed` times faster, keeping the pitch.

    The arrays of all write() calls then close(), joined, are change_tempo() of the whole input, however
    it was chunked. `speed` must lie in [MIN_SPEED, MAX_SPEED]; at 1.0 the audio passes through unchanged.
    """

    def __init__(self, speed: float):
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}")
        self._speed = speed
        self._graph = None if speed == 1.0 else _tempo_graph(_atempo_stages(speed))
        self._pending = np.zeros(0, np.float32)  # Input not yet filling a frame.
        self._samples_pushed = 0
        self._samples_in = 0
        self._samples_out = 0

    def write(self, samples: np.ndarray) -> np.ndarray:
        """Takes a chunk; returns the audio ready now, possibly none."""
        samples = _mono(samples)
        if self._graph is None:
            return samples
        self._samples_in += samples.size
        self._feed(samples)
        ready = self._pull()
        self._samples_out += ready.size
        return ready

    def close(self) -> np.ndarray:
        """Ends the input; returns the remaining audio."""
        if self._graph is None:
            return np.zeros(0, np.float32)
        # What is left pending after the padding is padding too, and needs no frame of its own.
        self._feed(np.zeros(_TEMPO_PADDING, np.float32))
        self._graph.push(None)
        return self._pull()[:max(0, round(self._samples_in / self._speed) - self._samples_out)]

    def _feed(self, samples: np.ndarray) -> None:
        pending = np.concatenate([self._pending, samples])
        whole = len(pending) - len(pending) % _TEMPO_FRAME
        for start in range(0, whole, _TEMPO_FRAME):
            self._graph.push(_frame(pending[start:start + _TEMPO_FRAME], "flt", pts=self._samples_pushed))
            self._samples_pushed += _TEMPO_FRAME
        self._pending = pending[whole:]

    def _pull(self) -> np.ndarray:
        """Every frame the graph has ready (all it has left, once its input has ended)."""
        chunks = []
        while True:
            try:
                chunks.append(self._graph.pull().to_ndarray()[0])
            except (av.BlockingIOError, av.EOFError):  # Wants more input / has ended.
                return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


class _PcmStreamEncoder(StreamEncoder):
    """Raw s16le samples, after `header` (nothing for pcm, the WAV header for wav)."""

    def __init__(self, header: bytes):
        self._pending_header = header

    def write(self, samples: np.ndarray) -> bytes:
        return self._take_header() + _to_int16(samples).tobytes()

    def close(self) -> bytes:
        return self._take_header()

    def _take_header(self) -> bytes:
        header, self._pending_header = self._pending_header, b""
        return header


class _AvStreamEncoder(StreamEncoder):
    """An FFmpeg codec and muxer whose output is handed on as soon as it is written."""

    def __init__(self, av_format: _AvFormat):
        self._output = _PendingBytes()
        self._encoder = _AvEncoder(av_format, self._output)

    def write(self, samples: np.ndarray) -> bytes:
        self._encoder.encode(_to_int16(samples))
        return self._output.take()

    def close(self) -> bytes:
        self._encoder.finish()
        return self._output.take()


class _PendingBytes:
    """Write-only output that the muxer appends to and we empty after every call.

    Having no seek() tells FFmpeg the output is not seekable, so no muxer goes back to rewrite bytes
    already sent, and it flushes every packet to us as soon as it is muxed.
    """

    def __init__(self):
        self._data = bytearray()

    def write(self, data: bytes) -> int:
        self._data += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self._data)
        self._data.clear()
        return data


class _AvEncoder:
    """One PyAV encoder and muxer, kept open from the first sample to the last."""

    def __init__(self, av_format: _AvFormat, output):
        self._container = av.open(
            output, "w", format=av_format.container, container_options=av_format.container_options
        )
        self._stream = self._container.add_stream(av_format.codec, rate=SAMPLE_RATE, layout="mono")
        if av_format.bit_rate:
            self._stream.bit_rate = av_format.bit_rate
        self._samples_sent = 0

    def encode(self, pcm: np.ndarray) -> None:
        if pcm.size == 0:  # FFmpeg refuses a frame of no samples (PyAV reports it as a MemoryError).
            return
        self._container.mux(self._stream.encode(_frame(pcm, "s16", pts=self._samples_sent)))
        self._samples_sent += pcm.size

    def finish(self) -> None:
        self._container.mux(self._stream.encode(None))
        self._container.close()


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unsupported audio format {fmt!r}: use one of {', '.join(FORMATS)}")


def _to_int16(samples: np.ndarray) -> np.ndarray:
    """Little-endian 16-bit PCM of float samples, clipped to [-1, 1] (NaN becomes silence)."""
    clipped = np.clip(np.nan_to_num(_mono(samples), nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    return np.round(clipped * 32767).astype("<i2")


def _mono(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected 1-D mono samples, got shape {samples.shape}")
    return samples


def _wav_header(data_size: int | None) -> bytes:
    """Header of a 16-bit PCM mono WAV at SAMPLE_RATE; `data_size` None means length unknown."""
    riff_size = _UNKNOWN_WAV_SIZE if data_size is None else 36 + data_size
    data_size = _UNKNOWN_WAV_SIZE if data_size is None else data_size
    fmt_chunk = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16)
    return (struct.pack("<4sI4s", b"RIFF", riff_size, b"WAVE") + fmt_chunk
            + struct.pack("<4sI", b"data", data_size))


def _frame(samples: np.ndarray, sample_format: str, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples[np.newaxis, :], format=sample_format, layout="mono")
    frame.sample_rate = SAMPLE_RATE
    frame.pts = pts
    frame.time_base = _TIME_BASE
    return frame


def _atempo_stages(speed: float) -> list[float]:
    low, high = _ATEMPO_RANGE
    stages = []
    while speed > high:
        stages.append(high)
        speed /= high
    while speed < low:
        stages.append(low)
        speed /= low
    return stages + [speed]


def _tempo_graph(stages: list[float]) -> av.filter.Graph:
    graph = av.filter.Graph()
    source = graph.add_abuffer(sample_rate=SAMPLE_RATE, format="flt", layout="mono", time_base=_TIME_BASE)
    tempo_filters = [graph.add("atempo", f"tempo={stage}") for stage in stages]
    graph.link_nodes(source, *tempo_filters, graph.add("abuffersink")).configure()
    return graph
