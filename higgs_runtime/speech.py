"""One request's path from text to audio: voices and reference clips -> prompt -> engine -> waveform.

The API layer validates field ranges; this layer checks what needs the model or the voices, and
raises `InvalidRequest` with a message a user can act on.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import numpy as np

from . import prompts
from .codec import Codec
from .config import Settings
from .engine.requests import GenerationRequest, GenerationResult, RequestHandle
from .engine.sampling import RepetitionAware, SamplingParams
from .engine.scheduler import Scheduler
from .loading import LoadedModel
from .streaming import StreamingDecoder
from .voices import VoiceStore

FRAMES_PER_SECOND = 25


class InvalidRequest(ValueError):
    """The request cannot be served as asked; the message says why."""


class GenerationFailed(RuntimeError):
    """The engine could not finish the request (timeout or internal fault)."""


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    seed: int | None


@dataclass
class Speech:
    samples: np.ndarray  # 24 kHz mono float32
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def runaway_guard_frames(text: str, multiple: float) -> int:
    """Frames after which audio that has not ended counts as runaway: `multiple` times a generous
    estimate of how long the text can take to say (slow speech: 4 characters a second, plus 2 s)."""
    if multiple <= 0:
        return math.inf
    plausible_seconds = 2.0 + len(text) / 4.0
    return math.ceil(multiple * plausible_seconds * FRAMES_PER_SECOND)


class Synthesizer:
    def __init__(self, loaded: LoadedModel, voices: VoiceStore, settings: Settings):
        self.loaded = loaded
        self.voices = voices
        self.settings = settings
        self.codec = Codec(loaded.codec, loaded.device)
        self.scheduler = Scheduler(loaded.model, settings.max_batch_size, settings.max_queue_size,
                                   settings.max_seq_len, RepetitionAware(settings.ras_window, settings.ras_max_repeat))
        self.scheduler.start()

    def close(self) -> None:
        self.scheduler.stop()

    # --- prompts per mode ---
    def plain_prompt(self, text: str, scene_prompt: str | None) -> prompts.Prompt:
        return self._tokenize(prompts.plain_messages(text, scene_prompt), [])

    def clone_prompt(self, text: str, scene_prompt: str | None, *, voice: str | None = None,
                     reference_audio: np.ndarray | None = None, reference_text: str | None = None) -> prompts.Prompt:
        if voice is not None:
            codes = self.voice_codes(voice)
            reference_text = reference_text or self.voices.get(voice).transcript
        else:
            codes = self.codec.encode(reference_audio)
        return self._tokenize(prompts.clone_messages(text, reference_text, scene_prompt), [codes])

    def multi_speaker_prompt(self, text: str, scene_prompt: str | None, voices: list[str]) -> prompts.Prompt:
        needed = prompts.speaker_count(text)
        if needed == 0:
            raise InvalidRequest("text has no [SPEAKER0], [SPEAKER1], ... tags; use /generate for a single voice")
        if voices and len(voices) < needed:
            raise InvalidRequest(
                f"text uses {needed} speakers (up to [SPEAKER{needed - 1}]) but reference_voices has only "
                f"{len(voices)}; give one voice per speaker or none")
        codes = [self.voice_codes(name) for name in voices]
        return self._tokenize(prompts.multi_speaker_messages(text, scene_prompt, len(voices)), codes)

    def voice_codes(self, name: str) -> np.ndarray:
        return self.voices.cached_codes(name, self.loaded.codec_id, self.codec.encode)

    def _tokenize(self, messages: list[dict], codes: list[np.ndarray]) -> prompts.Prompt:
        prompt = prompts.tokenize(messages, codes, self.loaded.tokenizer, self.loaded.config)
        room = self.settings.max_seq_len - prompt.num_tokens
        if room <= 0:
            raise InvalidRequest(f"the prompt is {prompt.num_tokens} tokens long (text and reference audio); "
                                 f"the server's limit is {self.settings.max_seq_len}")
        return prompt

    # --- generation ---
    def _submit(self, prompt: prompts.Prompt, text: str, sampling: Sampling) -> RequestHandle:
        return self.scheduler.submit(GenerationRequest(
            prompt=prompt,
            sampling=SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                                    seed=sampling.seed),
            max_new_frames=sampling.max_new_tokens,
            guard_frames=runaway_guard_frames(text, self.settings.runaway_guard_multiple),
            timeout_s=self.settings.request_timeout_s,
        ))

    async def generate(self, prompt: prompts.Prompt, text: str, sampling: Sampling) -> Speech:
        handle = self._submit(prompt, text, sampling)
        try:
            result = await handle.wait()
        finally:
            handle.cancel()  # no-op once finished; frees the slot if the client went away
        self._raise_if_failed(result)
        samples = await asyncio.to_thread(self.codec.decode_frames, result.frames)
        return Speech(samples, result.finish_reason, result.prompt_tokens, result.steps)

    def stream(self, prompt: prompts.Prompt, text: str, sampling: Sampling) -> "SpeechStream":
        """Queues the request now (so a full queue fails before any byte is sent); audio comes by iterating."""
        decoder = StreamingDecoder(self.codec, self.loaded.config.num_codebooks, self.settings.streaming)
        return SpeechStream(self._submit(prompt, text, sampling), decoder, self._raise_if_failed)

    def _raise_if_failed(self, result: GenerationResult) -> None:
        if result.finish_reason == "timeout":
            raise GenerationFailed(f"generation did not finish within {self.settings.request_timeout_s:g} s")
        if result.finish_reason == "error":
            raise GenerationFailed(result.error or "generation failed")


class SpeechStream:
    """Audio chunks (24 kHz float32) as the engine produces frames; `result` is set once iteration ends."""

    def __init__(self, handle: RequestHandle, decoder: StreamingDecoder, check):
        self._handle, self._decoder, self._check = handle, decoder, check
        self.result: GenerationResult | None = None

    async def __aiter__(self):
        try:
            async for frame in self._handle.frames(wanted=self._decoder.frames_until_chunk):
                if self._decoder.push(frame):
                    yield await asyncio.to_thread(self._decoder.take)
            self.result = self._handle.result(timeout=0)
            self._check(self.result)
            tail = await asyncio.to_thread(self._decoder.finish)
            if len(tail):
                yield tail
        finally:
            self._handle.cancel()
