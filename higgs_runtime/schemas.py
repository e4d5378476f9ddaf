"""Wire types of the REST API: request field types with their ranges, and response models."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field

Text = Annotated[str, Field(description="Text to speak.")]
Temperature = Annotated[float, Field(ge=0.0, le=2.0, description="Randomness, 0 to 2; 0 is greedy.")]
TopP = Annotated[float, Field(gt=0.0, le=1.0, description="Nucleus sampling mass, above 0 and at most 1.")]
TopK = Annotated[int, Field(ge=0, description="Top-k sampling; 0 turns it off.")]
MaxNewTokens = Annotated[int, Field(ge=1, description="Most audio frames to generate (25 per second).")]
Seed = Annotated[int | None, Field(ge=0, le=2**63 - 1, description="Same seed, same request: same audio.")]
ScenePrompt = Annotated[str | None, Field(description="Description of the recording scene.")]


def _form_text(value):
    # BentoML JSON-decodes multipart text fields first, so `name=123` arrives as a number.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return value


FormText = Annotated[str | None, BeforeValidator(_form_text)]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = Field(description="Audio frames the model generated.")
    total_tokens: int


class GenerateResponse(BaseModel):
    audio_base64: str = Field(description="A WAV file: 24 kHz, mono, 16-bit PCM.")
    text: str
    sampling_rate: int
    duration: float = Field(description="Seconds of audio: samples / sampling_rate.")
    usage: Usage
    finish_reason: Literal["stop", "length", "guard"] = Field(
        description="stop: the audio ended; length: max_new_tokens reached; guard: cut as runaway output.")


class VoiceSummary(BaseModel):
    name: str
    description: str


class VoiceInfo(VoiceSummary):
    kind: Literal["preset", "uploaded"]
    transcript: str | None
    duration: float
    created: str | None


class Health(BaseModel):
    status: Literal["healthy", "loading", "unhealthy"]
    model_loaded: bool
    device: str
    voices_available: int
    model_path: str
    audio_tokenizer_path: str
    version: str
    error: str | None = None
    note: str | None = None
