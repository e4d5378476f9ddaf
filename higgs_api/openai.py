"""The OpenAI-compatible API: `POST /v1/audio/speech` (audio bytes as they are produced, a whole file,
or server-sent events), and the listings SDKs and voice pickers call: `GET /v1/models`,
`/v1/models/{id}`, `/v1/audio/models` and `/v1/audio/voices`.

Model names: every OpenAI speech model name (`tts-1`, ...), our canonical `higgs-audio-v2`, and the
served model's own path (a Hub id or a directory) name the one model served; `model` may be left
out. Voice names: every voice, and the aliases of OpenAI's stock voices (`alloy`, ...)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Query
from starlette.responses import JSONResponse, Response, StreamingResponse

from higgs_runtime.audio import AudioInputError
from higgs_runtime.encoding import FORMATS
from higgs_runtime.speech import Speech

from .errors import ApiError, error_response
from .inputs import optional_text, present, required_text, voice_name
from .plans import clone_plan, in_thread, sampling, voice_named
from .schemas import (CANONICAL_MODEL, OPENAI_MODEL_NAMES, AudioModel, AudioModels, AudioVoice, AudioVoices,
                      ModelCard, ModelList, SpeechRequest)
from .state import ServerState, server_state
from .streams import audio_bytes, sse_events, whole_audio

OWNER = "bosonai"
MAX_VOICES_LISTED = 1000

router = APIRouter(prefix="/v1", tags=["OpenAI-compatible API"])


def model_names(state: ServerState) -> list[str]:
    """Every name the served model answers to, the canonical one first."""
    return list(dict.fromkeys([*OPENAI_MODEL_NAMES, state.settings.model_path]))


def _model_card(state: ServerState, name: str) -> ModelCard:
    return ModelCard(id=name, created=state.started_at, owned_by=OWNER, root=CANONICAL_MODEL)


@router.get("/models", response_model=ModelList)
def list_models(state: ServerState = Depends(server_state)) -> ModelList:
    return ModelList(data=[_model_card(state, name) for name in model_names(state)])


@router.get("/models/{model_id:path}", response_model=ModelCard, responses={404: {"description": "No such model"}})
def retrieve_model(model_id: str, state: ServerState = Depends(server_state)):
    if model_id not in model_names(state):
        return JSONResponse({"error": {"message": f"The model '{model_id}' does not exist; this server serves "
                                                  f"{model_names(state)}", "type": "invalid_request_error",
                                       "param": "model", "code": "model_not_found"}}, 404)
    return _model_card(state, model_id)


@router.get("/audio/models", response_model=AudioModels)
def list_audio_models(state: ServerState = Depends(server_state)) -> AudioModels:
    return AudioModels(models=[AudioModel(id=name) for name in model_names(state)])


@router.get("/audio/voices", response_model=AudioVoices)
def list_audio_voices(limit: int | None = Query(None, ge=1, le=MAX_VOICES_LISTED, description="At most this many."),
                      state: ServerState = Depends(server_state)) -> AudioVoices:
    """Voices, then the aliases in effect (OpenAI's stock names), each with the voice it stands for."""
    voices = [AudioVoice(id=voice.name, name=voice.name) for voice in state.voices.list()]
    voices += [AudioVoice(id=alias, name=alias, alias_of=voice) for alias, voice in state.voices.aliases().items()]
    return AudioVoices(voices=voices[:limit])


@router.post("/audio/speech", response_class=Response, responses={200: {"content": {
    media_type: {} for media_type in {*FORMATS.values(), "text/event-stream"}}}})
async def speech(body: SpeechRequest, state: ServerState = Depends(server_state)):
    """OpenAI's speech API: audio bytes (streamed as produced unless `stream` is false) or server-sent events."""
    started = time.monotonic()
    try:
        settings = state.settings
        if body.model is not None and body.model not in model_names(state):
            raise ApiError(400, f"model '{body.model}' is not served here; use one of {model_names(state)}", "model")
        if body.stream is False and body.stream_format == "sse":
            raise ApiError(400, "stream false asks for one whole file; server-sent events are a stream", "stream")
        synthesizer = state.ready_synthesizer()
        text = required_text("input", body.input, settings.max_text_chars)
        chosen = sampling(settings, body.temperature, body.top_p, body.top_k, body.max_new_tokens, body.seed)
        voice = voice_name("voice", body.voice_name)
        reference_audio = present(body.ref_audio)
        scene_prompt = optional_text("instructions", body.instructions, settings.max_scene_chars)
        reference_text = optional_text("ref_text", body.ref_text, settings.max_transcript_chars)
        voice_description = optional_text("voice_description", body.voice_description, settings.max_description_chars)
        if sum(choice is not None for choice in (voice, reference_audio, voice_description)) > 1:
            raise ApiError(400, "give at most one voice: either voice or ref_audio (a clip), or voice_description "
                                "(words)", "voice")
        if voice is None and reference_audio is None:
            plan = await in_thread(synthesizer.plan_plain, text, scene_prompt, voice_description, body.normalize_text)
        else:
            voice = voice and voice_named(state.voices, "voice", voice)
            plan = await in_thread(clone_plan, settings, synthesizer, text, scene_prompt, voice, reference_audio,
                                   reference_text, body.normalize_text)
        if body.stream is False:
            whole = await synthesizer.generate(plan, chosen)
            state.observe(started, whole)
            data = await in_thread(whole_audio, whole.samples, body.response_format, body.speed)
            return Response(data, media_type=FORMATS[body.response_format])
        stream = synthesizer.stream(plan, chosen)
    except Exception as exc:
        return error_response(exc, "openai speech", param="ref_audio" if isinstance(exc, AudioInputError) else None)

    def done(speech: Speech) -> None:
        state.observe(started, speech)

    if body.stream_format == "sse":
        return StreamingResponse(sse_events(stream, body.response_format, body.speed, done),
                                 media_type="text/event-stream")
    return StreamingResponse(audio_bytes(stream, body.response_format, body.speed, done),
                             media_type=FORMATS[body.response_format])
