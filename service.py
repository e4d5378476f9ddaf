"""The BentoML service: routes, status codes and wiring. Model logic lives in `higgs_runtime`."""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import threading
import time
from pathlib import Path

import bentoml
from fastapi import FastAPI, HTTPException, Request
from pydantic import ValidationError
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse

from higgs_runtime import __version__, playground
from higgs_runtime.audio import SAMPLE_RATE, AudioInputError, decode_audio, decode_base64_audio, duration_seconds
from higgs_runtime.config import Settings
from higgs_runtime.drain import Drain, DrainGate
from higgs_runtime.encoding import FORMATS, encode
from higgs_runtime.engine.requests import QueueFull, RequestTooLarge
from higgs_runtime.http_middleware import (ApiKeyAuth, BodySizeLimit, CancelOnDisconnect, ClientErrorLogFilter,
                                           ErrorContract, RequestBodyTooLarge, RequestId, RequestIdLogFilter)
from higgs_runtime.http_streams import audio_bytes, sse_events
from higgs_runtime.inputs import optional_text, present, required_text, speaker_voices, voice_name
from higgs_runtime.loading import BackgroundLoader, resolve_device
from higgs_runtime.scaling import for_worker, resources, worker_count
from higgs_runtime.schemas import (OPENAI_MODEL_NAMES, GenerateResponse, Health, MaxNewTokens, NormalizeText,
                                   ReferenceVoices, ResponseFormat, ScenePrompt, Seed, SpeechRequest, Temperature, Text,
                                   TopK, TopP, Usage, VoiceDescriptionText, VoiceInfo, VoiceSummary)
from higgs_runtime.speech import (GenerationFailed, GenerationTimeout, InvalidRequest, Sampling, Speech, SpeechPlan,
                                  Synthesizer)
from higgs_runtime.upload_form import VoiceUploadForm
from higgs_runtime.voices import (CATALOG_PATH, PresetNotDeletable, Voice, VoiceError, VoiceExists, VoiceNotFound,
                                  VoiceStore, fetch_presets, load_catalog)

log = logging.getLogger("higgs_audio.service")
# BentoML's logging leaves the root at WARNING: our INFO lines (client errors, model loading) need their own level.
OUR_LOGGERS = ("higgs_audio", "higgs_runtime")
for name in OUR_LOGGERS:
    logging.getLogger(name).setLevel(logging.INFO)
# A logger's filters apply only to its own records, not its children's: each of our loggers gets one.
for name in list(logging.root.manager.loggerDict):
    if name.partition(".")[0] in OUR_LOGGERS:
        logging.getLogger(name).addFilter(RequestIdLogFilter())
# The logger of BentoML's API error handling (bentoml._internal.server.http_app.log_exception).
logging.getLogger("bentoml._internal.server.http_app").addFilter(ClientErrorLogFilter())
settings = for_worker(Settings.from_env(), bentoml.server_context.worker_index)
WORKERS = worker_count(settings)
UPLOAD_ROUTE = "/upload-voice"
OPEN_PATHS = frozenset({"/health", "/livez", "/readyz", *playground.PUBLIC_PATHS})
GENERATION_PATHS = frozenset({"/generate", "/generate/voice-clone", "/generate/multi-speaker", "/v1/audio/speech"})
RANDOM_PRESET_NOTE = ("{} is a small randomly initialised model for offline testing and benchmarks: it produces "
                      "noise, not speech")

http_app = FastAPI(title="Higgs Audio v2 server")
playground.add_routes(http_app)
drain = Drain(settings.drain_timeout_s)


class ApiError(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def _status_for(exc: Exception) -> int | None:
    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, VoiceExists):
        return 409
    if isinstance(exc, RequestBodyTooLarge):
        return 413  # BodySizeLimit answers it
    if isinstance(exc, (InvalidRequest, AudioInputError, VoiceError, RequestTooLarge)):
        return 400
    if isinstance(exc, QueueFull):
        return 429
    if isinstance(exc, GenerationTimeout):
        return 504
    if isinstance(exc, GenerationFailed):
        return 500
    return None


def _error_response(exc: Exception, where: str) -> JSONResponse:
    status = _status_for(exc)
    if status is None:
        log.exception("internal error in %s", where)
        return JSONResponse({"detail": "internal server error; the server log has the details"}, 500)
    if status >= 500:
        log.error("%s failed: %s", where, exc)
    return JSONResponse({"detail": getattr(exc, "detail", str(exc))}, status)


def json_errors(route):
    """Our errors become `{"detail": ...}` with their status (reshaped under /v1/); anything else is a logged 500."""

    @functools.wraps(route)
    async def wrapper(*args, **kwargs):
        try:
            return await route(*args, **kwargs)
        except Exception as exc:
            return _error_response(exc, route.__name__)

    return wrapper


async def _in_thread(function, *args):
    """Runs blocking work (prompt building, audio decoding) off the event loop. asyncio cannot put a
    StopIteration into the awaiting future, which would then never complete: it becomes a RuntimeError."""

    def call():
        try:
            return function(*args)
        except StopIteration as exc:
            raise RuntimeError("StopIteration escaped blocking work") from exc

    return await asyncio.to_thread(call)


@bentoml.service(
    name="higgs_audio",
    # No BentoML max_concurrency: the engine's bounded queue answers 429 with a useful detail. The traffic
    # timeout stays above the engine's own request timeout, which reports itself.
    traffic={"timeout": int(settings.request_timeout_s) + 30},
    workers=WORKERS,
    resources=resources(settings, WORKERS),
)
@bentoml.asgi_app(http_app, path="/")
class HiggsAudio:
    def __init__(self) -> None:
        from higgs_runtime.metrics import ServiceMetrics

        self.metrics = ServiceMetrics()
        self.voices = VoiceStore(CATALOG_PATH, settings.presets_dir, settings.uploads_dir)
        self.synthesizer: Synthesizer | None = None
        threading.Thread(target=self._fetch_missing_presets, name="preset-fetch", daemon=True).start()
        self.loader = BackgroundLoader(settings, self._on_model_ready)
        self.loader.start()

    @bentoml.on_startup
    async def _drain_on_sigterm(self) -> None:
        drain.install()

    def __is_ready__(self) -> bool:
        """/readyz: the model is loaded and the server is not draining."""
        return self.loader.status == "ready" and not drain.draining

    def _fetch_missing_presets(self) -> None:
        results = fetch_presets(load_catalog(), settings.voice_source, settings.presets_dir)
        for name, outcome in results.items():
            if outcome not in ("ok", "already present"):
                log.warning("preset voice %s unavailable: %s", name, outcome)
        self.voices.refresh()

    def _on_model_ready(self, loaded) -> None:
        self.synthesizer = Synthesizer(loaded, self.voices, settings, on_load_change=self.metrics.observe_engine)

    def _ready_synthesizer(self) -> Synthesizer:
        if self.loader.status == "failed":
            raise ApiError(503, f"the model failed to load: {self.loader.error}")
        if self.synthesizer is None:
            raise ApiError(503, "the model is still loading; retry in a moment (GET /health shows progress)")
        return self.synthesizer

    # --- health and voices (GET and DELETE routes: BentoML APIs are POST only) ---
    @http_app.get("/health", response_model=Health)
    def health(self) -> Health:
        status = {"ready": "healthy", "loading": "loading", "failed": "unhealthy"}[self.loader.status]
        device = str(self.synthesizer.loaded.device) if self.synthesizer else _requested_device_name()
        return Health(status=status, model_loaded=self.synthesizer is not None, device=device,
                      voices_available=len(self.voices.list()), model_path=settings.model_path,
                      audio_tokenizer_path=settings.audio_tokenizer_path, version=__version__,
                      worker=bentoml.server_context.worker_index,
                      error=self.loader.error, note=RANDOM_PRESET_NOTE.format(settings.model_path) if settings.is_random_preset else None)

    @http_app.get("/voices", response_model=list[VoiceSummary])
    def list_voices(self) -> list[VoiceSummary]:
        return [VoiceSummary(name=v.name, description=v.description) for v in self.voices.list()]

    @http_app.get("/voices/{name}", response_model=VoiceInfo)
    def voice_info(self, name: str) -> VoiceInfo:
        return _voice_info(self._voice_resource(name))

    @http_app.get("/voices/{name}/audio")
    def voice_audio(self, name: str) -> FileResponse:
        voice = self._voice_resource(name)
        return FileResponse(voice.audio_path, media_type="audio/wav", filename=f"{voice.name}.wav")

    @http_app.delete("/voices/{name}", status_code=204)
    def delete_voice(self, name: str) -> Response:
        try:
            self.voices.delete(name)
        except VoiceNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except PresetNotDeletable as exc:
            raise HTTPException(403, str(exc)) from None
        return Response(status_code=204)

    def _voice_resource(self, name: str) -> Voice:
        """On the voice routes an unknown name is a missing resource (404); in a generation request it
        is a bad field (400)."""
        try:
            return self.voices.get(name)
        except VoiceNotFound as exc:
            raise HTTPException(404, str(exc)) from None

    # --- the seed's generation routes ---
    @bentoml.api(route="/generate")
    @json_errors
    async def generate(self, text: Text, temperature: Temperature = 0.7, top_p: TopP = 0.95, top_k: TopK = 50,
                       max_new_tokens: MaxNewTokens = 1024, seed: Seed = None, scene_prompt: ScenePrompt = None,
                       response_format: ResponseFormat = "wav", voice_description: VoiceDescriptionText = None,
                       normalize_text: NormalizeText = True) -> GenerateResponse:
        """Text to speech; the model picks a voice, following voice_description when given."""
        started, synthesizer = time.monotonic(), self._ready_synthesizer()
        text, scene_prompt = _text(text), _scene(scene_prompt)
        voice_description = _voice_description(voice_description)
        sampling = _sampling(temperature, top_p, top_k, max_new_tokens, seed)
        plan = await _in_thread(synthesizer.plan_plain, text, scene_prompt, voice_description, normalize_text)
        return await self._respond(text, plan, sampling, response_format, started)

    @bentoml.api(route="/generate/voice-clone")
    @json_errors
    async def generate_voice_clone(self, text: Text, reference_voice: str | None = None,
                                   reference_audio: str | None = None, reference_text: str | None = None,
                                   temperature: Temperature = 0.7, top_p: TopP = 0.95, top_k: TopK = 50,
                                   max_new_tokens: MaxNewTokens = 1024, seed: Seed = None,
                                   scene_prompt: ScenePrompt = None, response_format: ResponseFormat = "wav",
                                   normalize_text: NormalizeText = True) -> GenerateResponse:
        """Zero-shot voice cloning from a named voice or a base64 WAV/MP3/FLAC clip."""
        started, synthesizer = time.monotonic(), self._ready_synthesizer()
        text, scene_prompt = _text(text), _scene(scene_prompt)
        sampling = _sampling(temperature, top_p, top_k, max_new_tokens, seed)
        reference_voice = voice_name("reference_voice", reference_voice)
        reference_audio = present(reference_audio)
        reference_text = optional_text("reference_text", reference_text, settings.max_transcript_chars)
        if (reference_voice is None) == (reference_audio is None):
            raise ApiError(400, "give exactly one of reference_voice (a voice name from GET /voices) "
                                "or reference_audio (base64 WAV, MP3 or FLAC)")
        # Decoding and encoding a reference clip is heavy: off the event loop.
        plan = await _in_thread(self._clone_plan, synthesizer, text, scene_prompt, reference_voice,
                                reference_audio, reference_text, normalize_text)
        return await self._respond(text, plan, sampling, response_format, started)

    @bentoml.api(route="/generate/multi-speaker")
    @json_errors
    async def generate_multi_speaker(self, text: Text, reference_voices: ReferenceVoices = None,
                                     temperature: Temperature = 0.7, top_p: TopP = 0.95, top_k: TopK = 50,
                                     max_new_tokens: MaxNewTokens = 1024, seed: Seed = None,
                                     scene_prompt: ScenePrompt = None, response_format: ResponseFormat = "wav",
                                     normalize_text: NormalizeText = True) -> GenerateResponse:
        """Dialogue from text tagged [SPEAKER0], [SPEAKER1], ...; reference_voices[i] voices SPEAKERi, by
        name or by {"description": ...}."""
        started, synthesizer = time.monotonic(), self._ready_synthesizer()
        text, scene_prompt = _text(text), _scene(scene_prompt)
        sampling = _sampling(temperature, top_p, top_k, max_new_tokens, seed)
        voices = speaker_voices("reference_voices", reference_voices or [], settings.max_speakers,
                                settings.max_description_chars)
        for voice in voices:
            if isinstance(voice, str):
                self.voices.get(voice)
        plan = await _in_thread(synthesizer.plan_multi_speaker, text, scene_prompt, voices, normalize_text)
        return await self._respond(text, plan, sampling, response_format, started)

    # --- voices ---
    @bentoml.api(route=UPLOAD_ROUTE, input_spec=VoiceUploadForm)
    @json_errors
    async def upload_voice(self, file: Path, name: str, description: str | None = None,
                           transcript: str | None = None) -> VoiceInfo:
        """Stores a reference voice (WAV, MP3 or FLAC); it is listed and usable at once."""
        name = voice_name("name", name) or ""
        description = optional_text("description", description, settings.max_description_chars)
        transcript = optional_text("transcript", transcript, settings.max_transcript_chars)
        self.voices.check_new_name(name)
        data = Path(file).read_bytes()
        if len(data) > settings.max_upload_bytes:
            raise ApiError(413, f"file is larger than the limit of {settings.max_upload_bytes // (1024 * 1024)} MiB")
        clip = await _in_thread(functools.partial(decode_audio, data, min_seconds=settings.min_reference_seconds,
                                                  max_seconds=settings.max_reference_seconds))
        voice = self.voices.add_upload(name, clip, description, transcript)
        if self.synthesizer is not None:  # encoded now rather than by the voice's first request (or later, once loaded)
            await _in_thread(self.synthesizer.voice_codes, name)
        return _voice_info(voice)

    # --- the OpenAI-compatible route ---
    @http_app.post("/v1/audio/speech")
    async def openai_speech(self, request: Request):
        """OpenAI's speech API: audio bytes (streamed as produced) or server-sent events."""
        started = time.monotonic()
        try:
            body = _openai_body(await request.body())
            synthesizer = self._ready_synthesizer()
            text = required_text("input", body.input, settings.max_text_chars)
            sampling = _sampling(body.temperature, body.top_p, body.top_k, body.max_new_tokens, body.seed)
            voice = voice_name("voice", body.voice_name)
            reference_audio = present(body.ref_audio)
            scene_prompt = optional_text("instructions", body.instructions, settings.max_scene_chars)
            reference_text = optional_text("ref_text", body.ref_text, settings.max_transcript_chars)
            voice_description = _voice_description(body.voice_description)
            if sum(choice is not None for choice in (voice, reference_audio, voice_description)) > 1:
                raise ApiError(400, "give at most one voice: either voice or ref_audio (a clip), or voice_description (words)")
            if voice is None and reference_audio is None:
                plan = await _in_thread(synthesizer.plan_plain, text, scene_prompt, voice_description,
                                        body.normalize_text)
            else:
                plan = await _in_thread(self._clone_plan, synthesizer, text, scene_prompt, voice, reference_audio,
                                        reference_text, body.normalize_text)
            stream = synthesizer.stream(plan, sampling)
        except Exception as exc:
            return _error_response(exc, "openai_speech")

        def done(speech: Speech) -> None:
            self._observe(started, speech)

        if body.stream_format == "sse":
            return StreamingResponse(sse_events(stream, body.response_format, body.speed, done),
                                     media_type="text/event-stream")
        return StreamingResponse(audio_bytes(stream, body.response_format, body.speed, done),
                                 media_type=FORMATS[body.response_format])

    # --- helpers ---
    def _clone_plan(self, synthesizer: Synthesizer, text: str, scene_prompt: str | None, voice: str | None,
                    reference_audio: str | None, reference_text: str | None, normalize_text: bool) -> SpeechPlan:
        if voice is not None:
            self.voices.get(voice)
            return synthesizer.plan_clone(text, scene_prompt, voice=voice, reference_text=reference_text,
                                          normalize=normalize_text)
        clip = decode_base64_audio(reference_audio, min_seconds=settings.min_reference_seconds,
                                   max_seconds=settings.max_reference_seconds)
        return synthesizer.plan_clone(text, scene_prompt, reference_audio=clip, reference_text=reference_text,
                                      normalize=normalize_text)

    async def _respond(self, text: str, plan: SpeechPlan, sampling: Sampling, response_format: str,
                       started: float) -> GenerateResponse:
        speech = await self._ready_synthesizer().generate(plan, sampling)
        self._observe(started, speech)
        audio = await _in_thread(encode, speech.samples, response_format)
        return GenerateResponse(
            audio_base64=base64.b64encode(audio).decode(),
            text=text,
            sampling_rate=SAMPLE_RATE,
            duration=duration_seconds(speech.samples),
            usage=Usage(prompt_tokens=speech.prompt_tokens, completion_tokens=speech.completion_tokens,
                        total_tokens=speech.prompt_tokens + speech.completion_tokens),
            finish_reason=speech.finish_reason,
        )

    def _observe(self, started: float, speech: Speech) -> None:
        self.metrics.observe_request(started, speech.first_audio_at, speech.audio_seconds, speech.finish_reason)



def _voice_info(voice: Voice) -> VoiceInfo:
    return VoiceInfo(name=voice.name, description=voice.description, kind=voice.kind, transcript=voice.transcript,
                     duration=voice.duration, created=voice.created)


def _openai_body(raw: bytes) -> SpeechRequest:
    try:
        body = SpeechRequest.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}" for error in exc.errors())
        raise ApiError(400, f"invalid request: {problems}") from None
    if body.model not in OPENAI_MODEL_NAMES:
        raise ApiError(400, f"model '{body.model}' is not served here; use one of {list(OPENAI_MODEL_NAMES)}")
    return body


def _text(text: str) -> str:
    return required_text("text", text, settings.max_text_chars)


def _scene(scene_prompt: str | None) -> str | None:
    return optional_text("scene_prompt", scene_prompt, settings.max_scene_chars)


def _voice_description(description: str | None) -> str | None:
    return optional_text("voice_description", description, settings.max_description_chars)


def _sampling(temperature, top_p, top_k, max_new_tokens, seed) -> Sampling:
    if max_new_tokens > settings.max_new_tokens_cap:
        raise ApiError(400, f"max_new_tokens is {max_new_tokens}; this server allows at most "
                            f"{settings.max_new_tokens_cap}")
    return Sampling(temperature, top_p, top_k, max_new_tokens, seed)


def _requested_device_name() -> str:
    try:
        return str(resolve_device(settings.device))
    except ValueError:
        return settings.device


# Outermost first: request ids on everything, then the error shapes, the drain gate, keys and body limits, and
# innermost the disconnect watch, which cancels the route's own work.
HiggsAudio.add_asgi_middleware(RequestId)
HiggsAudio.add_asgi_middleware(ErrorContract)
HiggsAudio.add_asgi_middleware(DrainGate, drain=drain, refused_paths=GENERATION_PATHS,
                               untracked_paths=OPEN_PATHS | {"/metrics"})
HiggsAudio.add_asgi_middleware(ApiKeyAuth, keys=settings.api_key_set(), open_paths=OPEN_PATHS)
HiggsAudio.add_asgi_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes, upload_path=UPLOAD_ROUTE,
                               max_upload_bytes=settings.max_upload_bytes + 64 * 1024)
HiggsAudio.add_asgi_middleware(CancelOnDisconnect)
