"""From validated request fields to the runtime's speech plans, shared by every generation route."""

from __future__ import annotations

import asyncio

import numpy as np

from higgs_runtime.audio import decode_base64_audio
from higgs_runtime.config import Settings
from higgs_runtime.speech import Sampling, SpeechPlan, Synthesizer
from higgs_runtime.voices import VoiceNotFound, VoiceStore

from .errors import ApiError


async def in_thread(function, *args):
    """Runs blocking work (prompt building, audio decoding) off the event loop. asyncio cannot put a
    StopIteration into the awaiting future, which would then never complete: it becomes a RuntimeError."""

    def call():
        try:
            return function(*args)
        except StopIteration as exc:
            raise RuntimeError("StopIteration escaped blocking work") from exc

    return await asyncio.to_thread(call)


def sampling(settings: Settings, temperature: float, top_p: float, top_k: int, max_new_tokens: int,
             seed: int | None) -> Sampling:
    if max_new_tokens > settings.max_new_tokens_cap:
        raise ApiError(400, f"max_new_tokens is {max_new_tokens}; this server allows at most "
                            f"{settings.max_new_tokens_cap}", "max_new_tokens")
    return Sampling(temperature, top_p, top_k, max_new_tokens, seed)


def voice_named(voices: VoiceStore, field: str, name: str) -> str:
    """The voice a request's field names (an alias stands for its voice): its real name; an unknown
    name is a fault of that field."""
    try:
        return voices.resolve(name).name
    except VoiceNotFound as exc:
        raise ApiError(400, str(exc), field) from None


def clone_plan(settings: Settings, synthesizer: Synthesizer, text: str, scene_prompt: str | None,
               voice: str | None, reference_audio: str | None, reference_text: str | None,
               normalize_text: bool) -> SpeechPlan:
    """A plan in a named voice (resolved already), or in a one-off base64 clip. Blocking: decodes and
    encodes audio."""
    if voice is not None:
        return synthesizer.plan_clone(text, scene_prompt, voice=voice, reference_text=reference_text,
                                      normalize=normalize_text)
    return synthesizer.plan_clone(text, scene_prompt, reference_audio=decoded_clip(settings, reference_audio),
                                  reference_text=reference_text, normalize=normalize_text)


def decoded_clip(settings: Settings, reference_audio: str) -> np.ndarray:
    """A base64 clip (WAV, MP3 or FLAC) as 24 kHz samples, within the reference length limits. Blocking."""
    return decode_base64_audio(reference_audio, min_seconds=settings.min_reference_seconds,
                               max_seconds=settings.max_reference_seconds)
