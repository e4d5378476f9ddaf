"""Voice listing and management: `GET /voices`, `GET /voices/{name}` (metadata), `GET
/voices/{name}/audio`, `DELETE /voices/{name}`, and `POST /upload-voice` (a BentoML API method, so
BentoML's client uploads with `client.upload_voice(file=..., name=...)`).

These routes act on voices by their own names: an alias (an OpenAI stock name) serves generation
requests only, so deleting `alloy` can never delete the voice it stands for."""

from __future__ import annotations

import functools
from pathlib import Path

import bentoml
from fastapi import APIRouter, Depends
from starlette.responses import Response

from higgs_runtime.audio import decode_audio
from higgs_runtime.voices import PresetNotDeletable, Voice, VoiceNotFound

from .errors import ApiError, json_errors
from .inputs import optional_text, voice_name
from .plans import in_thread
from .schemas import VoiceInfo, VoiceSummary
from .state import ServerState, server_state
from .upload_form import VoiceUploadForm

UPLOAD_ROUTE = "/upload-voice"

router = APIRouter(tags=["Voices"])


@router.get("/voices", response_model=list[VoiceSummary])
def list_voices(state: ServerState = Depends(server_state)) -> list[VoiceSummary]:
    return [VoiceSummary(name=voice.name, description=voice.description) for voice in state.voices.list()]


@router.get("/voices/{name}", response_model=VoiceInfo)
def voice_info(name: str, state: ServerState = Depends(server_state)) -> VoiceInfo:
    return _voice_info(_existing(state, name))


@router.get("/voices/{name}/audio", response_class=Response, responses={200: {"content": {"audio/wav": {}}}})
def voice_audio(name: str, state: ServerState = Depends(server_state)) -> Response:
    try:
        data = state.voices.audio_file(name)
    except VoiceNotFound as exc:
        raise ApiError(404, str(exc)) from None
    return Response(data, media_type="audio/wav", headers={"Content-Disposition": f'attachment; filename="{name}.wav"'})


@router.delete("/voices/{name}", status_code=204, response_class=Response)
def delete_voice(name: str, state: ServerState = Depends(server_state)) -> Response:
    try:
        state.voices.delete(name)
    except VoiceNotFound as exc:
        raise ApiError(404, str(exc)) from None
    except PresetNotDeletable as exc:
        raise ApiError(403, str(exc)) from None
    return Response(status_code=204)


def _existing(state: ServerState, name: str) -> Voice:
    """On these routes an unknown name is a missing resource (404); in a generation request it is a bad
    field (400)."""
    try:
        return state.voices.get(name)
    except VoiceNotFound as exc:
        raise ApiError(404, str(exc)) from None


def _voice_info(voice: Voice) -> VoiceInfo:
    return VoiceInfo(name=voice.name, description=voice.description, kind=voice.kind, transcript=voice.transcript,
                     duration=voice.duration, created=voice.created)


class VoiceApi:
    """The upload route, as a method of the BentoML service class (which holds `state`)."""

    state: ServerState

    @bentoml.api(route=UPLOAD_ROUTE, input_spec=VoiceUploadForm)
    @json_errors
    async def upload_voice(self, file: Path, name: str, description: str | None = None,
                           transcript: str | None = None) -> VoiceInfo:
        """Stores a reference voice (WAV, MP3 or FLAC); it is listed and usable at once."""
        settings, voices = self.state.settings, self.state.voices
        name = voice_name("name", name) or ""
        description = optional_text("description", description, settings.max_description_chars)
        transcript = optional_text("transcript", transcript, settings.max_transcript_chars)
        voices.check_new_name(name)
        data = Path(file).read_bytes()
        if len(data) > settings.max_upload_bytes:
            raise ApiError(413, f"file is larger than the limit of {settings.max_upload_bytes // (1024 * 1024)} MiB")
        clip = await in_thread(functools.partial(decode_audio, data, min_seconds=settings.min_reference_seconds,
                                                 max_seconds=settings.max_reference_seconds))
        voice = voices.add_upload(name, clip, description, transcript)
        if self.state.synthesizer is not None:  # encoded now rather than by the voice's first request (or later)
            await in_thread(self.state.synthesizer.voice_codes, name)
        return _voice_info(voice)
