"""The original REST API: `GET /health` and the generation routes `POST /generate`,
`/generate/voice-clone` and `/generate/multi-speaker` (BentoML API methods, so BentoML's client
calls them by name), answering a whole WAV (or another format) in base64 JSON."""

from __future__ import annotations

import base64
import time
from dataclasses import asdict

import bentoml
from fastapi import APIRouter, Depends

from higgs_runtime import __version__
from higgs_runtime.audio import SAMPLE_RATE, duration_seconds
from higgs_runtime.encoding import encode
from higgs_runtime.loading import resolve_device
from higgs_runtime.speech import Sampling, SpeechPlan

from .errors import ApiError, json_errors
from .inputs import optional_text, present, required_text, speaker_voices, voice_name
from .plans import clone_plan, in_thread, sampling, voice_named
from .schemas import (DecodeGraphs, GenerateResponse, Health, MaxNewTokens, NormalizeText, ReferenceVoices, ResponseFormat,
                      ScenePrompt, Seed, Temperature, Text, TopK, TopP, Usage, VoiceDescriptionText)
from .state import ServerState, server_state

RANDOM_PRESET_NOTE = ("{} is a small randomly initialised model for offline testing and benchmarks: it produces "
                      "noise, not speech")

router = APIRouter(tags=["REST API"])


@router.get("/health", response_model=Health)
def health(state: ServerState = Depends(server_state)) -> Health:
    settings, synthesizer = state.settings, state.synthesizer
    status = {"ready": "healthy", "loading": "loading", "failed": "unhealthy"}[state.loader.status]
    return Health(status=status, model_loaded=synthesizer is not None,
                  device=str(synthesizer.loaded.device) if synthesizer else _requested_device_name(settings.device),
                  voices_available=len(state.voices.list()), model_path=settings.model_path,
                  audio_tokenizer_path=settings.audio_tokenizer_path, version=__version__,
                  worker=bentoml.server_context.worker_index, error=state.loader.error,
                  decode_graphs=DecodeGraphs(**asdict(synthesizer.scheduler.graph_status)) if synthesizer else None,
                  note=RANDOM_PRESET_NOTE.format(settings.model_path) if settings.is_random_preset else None)


def _requested_device_name(device: str) -> str:
    try:
        return str(resolve_device(device))
    except ValueError:
        return device


class RestApi:
    """The generation routes, as methods of the BentoML service class (which holds `state`)."""

    state: ServerState

    @bentoml.api(route="/generate")
    @json_errors
    async def generate(self, text: Text, temperature: Temperature = 0.7, top_p: TopP = 0.95, top_k: TopK = 50,
                       max_new_tokens: MaxNewTokens = 1024, seed: Seed = None, scene_prompt: ScenePrompt = None,
                       response_format: ResponseFormat = "wav", voice_description: VoiceDescriptionText = None,
                       normalize_text: NormalizeText = True) -> GenerateResponse:
        """Text to speech; the model picks a voice, following voice_description when given."""
        started, synthesizer, settings = time.monotonic(), self.state.ready_synthesizer(), self.state.settings
        text, scene_prompt = self._text(text), self._scene(scene_prompt)
        voice_description = optional_text("voice_description", voice_description, settings.max_description_chars)
        chosen = sampling(settings, temperature, top_p, top_k, max_new_tokens, seed)
        plan = await in_thread(synthesizer.plan_plain, text, scene_prompt, voice_description, normalize_text)
        return await self._respond(text, plan, chosen, response_format, started)

    @bentoml.api(route="/generate/voice-clone")
    @json_errors
    async def generate_voice_clone(self, text: Text, reference_voice: str | None = None,
                                   reference_audio: str | None = None, reference_text: str | None = None,
                                   temperature: Temperature = 0.7, top_p: TopP = 0.95, top_k: TopK = 50,
                                   max_new_tokens: MaxNewTokens = 1024, seed: Seed = None,
                                   scene_prompt: ScenePrompt = None, response_format: ResponseFormat = "wav",
                                   normalize_text: NormalizeText = True) -> GenerateResponse:
        """Zero-shot voice cloning from a named voice or a base64 WAV/MP3/FLAC clip."""
        started, synthesizer, settings = time.monotonic(), self.state.ready_synthesizer(), self.state.settings
        text, scene_prompt = self._text(text), self._scene(scene_prompt)
        chosen = sampling(settings, temperature, top_p, top_k, max_new_tokens, seed)
        reference_voice = voice_name("reference_voice", reference_voice)
        reference_audio = present(reference_audio)
        reference_text = optional_text("reference_text", reference_text, settings.max_transcript_chars)
        if (reference_voice is None) == (reference_audio is None):
            raise ApiError(400, "give exactly one of reference_voice (a voice name from GET /voices) "
                                "or reference_audio (base64 WAV, MP3 or FLAC)")
        if reference_voice is not None:
            reference_voice = voice_named(self.state.voices, "reference_voice", reference_voice)
        # Decoding and encoding a reference clip is heavy: off the event loop.
        plan = await in_thread(clone_plan, settings, synthesizer, text, scene_prompt, reference_voice,
                               reference_audio, reference_text, normalize_text)
        return await self._respond(text, plan, chosen, response_format, started)

    @bentoml.api(route="/generate/multi-speaker")
    @json_errors
    async def generate_multi_speaker(self, text: Text, reference_voices: ReferenceVoices = None,
                                     temperature: Temperature = 0.7, top_p: TopP = 0.95, top_k: TopK = 50,
                                     max_new_tokens: MaxNewTokens = 1024, seed: Seed = None,
                                     scene_prompt: ScenePrompt = None, response_format: ResponseFormat = "wav",
                                     normalize_text: NormalizeText = True) -> GenerateResponse:
        """Dialogue from text tagged [SPEAKER0], [SPEAKER1], ...; reference_voices[i] voices SPEAKERi, by
        name or by {"description": ...}."""
        started, synthesizer, settings = time.monotonic(), self.state.ready_synthesizer(), self.state.settings
        text, scene_prompt = self._text(text), self._scene(scene_prompt)
        chosen = sampling(settings, temperature, top_p, top_k, max_new_tokens, seed)
        voices = speaker_voices("reference_voices", reference_voices or [], settings.max_speakers,
                                settings.max_description_chars)
        voices = [voice_named(self.state.voices, f"reference_voices[{index}]", voice) if isinstance(voice, str)
                  else voice for index, voice in enumerate(voices)]
        plan = await in_thread(synthesizer.plan_multi_speaker, text, scene_prompt, voices, normalize_text)
        return await self._respond(text, plan, chosen, response_format, started)

    def _text(self, text: str) -> str:
        return required_text("text", text, self.state.settings.max_text_chars)

    def _scene(self, scene_prompt: str | None) -> str | None:
        return optional_text("scene_prompt", scene_prompt, self.state.settings.max_scene_chars)

    async def _respond(self, text: str, plan: SpeechPlan, chosen: Sampling, response_format: str,
                       started: float) -> GenerateResponse:
        speech = await self.state.ready_synthesizer().generate(plan, chosen)
        self.state.observe(started, speech)
        audio = await in_thread(encode, speech.samples, response_format)
        return GenerateResponse(
            audio_base64=base64.b64encode(audio).decode(),
            text=text,
            sampling_rate=SAMPLE_RATE,
            duration=duration_seconds(speech.samples),
            usage=Usage(prompt_tokens=speech.prompt_tokens, prefill_tokens=speech.prefill_tokens,
                        completion_tokens=speech.completion_tokens,
                        total_tokens=speech.prompt_tokens + speech.completion_tokens),
            finish_reason=speech.finish_reason,
        )
