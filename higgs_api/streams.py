"""Response bodies: encoded audio bytes as they are produced, OpenAI's server-sent events
(`speech.audio.delta` with base64 audio, then `speech.audio.done` with usage and `finish_reason`), or
one whole file when the client asks for it."""

from __future__ import annotations

import base64
import json
import logging
from typing import AsyncIterator, Callable

import numpy as np

from higgs_runtime.encoding import TempoStream, change_tempo, encode, stream_encoder
from higgs_runtime.speech import GenerationFailed, InvalidRequest, Speech, SpeechStream

log = logging.getLogger(__name__)


# FLAC goes out whole: a streamed FLAC header cannot hold the length, and common readers
# (libsndfile, so soundfile) then refuse the file.
WHOLE_FILE_FORMATS = frozenset({"flac"})


async def audio_bytes(stream: SpeechStream, fmt: str, speed: float,
                      on_done: Callable[[Speech], None]) -> AsyncIterator[bytes]:
    """The audio in `fmt` at `speed`: tempo-changed and encoded incrementally as it is produced (one
    header, one encoder for the whole stream), or as one file at the end where the format needs it.

    A failure ends the body early (the status line is long gone): the client sees an incomplete body,
    never a complete-looking file with audio missing.
    """
    tempo = TempoStream(speed)
    try:
        if fmt in WHOLE_FILE_FORMATS:
            chunks = [tempo.write(chunk) async for chunk in stream]
            yield encode(np.concatenate([*chunks, tempo.close()]), fmt)
        else:
            encoder = stream_encoder(fmt)
            async for chunk in stream:
                if data := encoder.write(tempo.write(chunk)):
                    yield data
            yield encoder.write(tempo.close()) + encoder.close()
    except Exception as exc:
        _log_failure(exc)
        raise
    on_done(stream.speech)


def whole_audio(samples: np.ndarray, fmt: str, speed: float) -> bytes:
    """One complete file: its length is known, so a WAV carries its real sizes."""
    return encode(change_tempo(samples, speed), fmt)


def _log_failure(exc: Exception) -> None:
    if isinstance(exc, (GenerationFailed, InvalidRequest)):
        log.error("streamed generation failed after the response started: %s", exc)
    else:
        log.exception("streamed generation failed after the response started")


def _event(payload: dict) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


async def sse_events(stream: SpeechStream, fmt: str, speed: float,
                     on_done: Callable[[Speech], None]) -> AsyncIterator[bytes]:
    """Audio deltas, then `speech.audio.done`; a failure ends the stream with an `error` event instead."""
    try:
        async for data in audio_bytes(stream, fmt, speed, on_done):
            if data:
                yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
    except Exception as exc:
        message = str(exc) if isinstance(exc, (GenerationFailed, InvalidRequest)) else \
            "internal server error; the server log has the details"
        yield _event({"type": "error", "error": {"message": message, "type": "server_error"}})
        return
    speech = stream.speech
    yield _event({"type": "speech.audio.done", "finish_reason": speech.finish_reason, "usage": {
        "input_tokens": speech.prompt_tokens, "prefill_tokens": speech.prefill_tokens,
        "output_tokens": speech.completion_tokens, "total_tokens": speech.prompt_tokens + speech.completion_tokens}})
