"""Wire types of the REST API: request field types with their ranges, and response models."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Text = Annotated[str, Field(description="Text to speak.")]
Temperature = Annotated[float, Field(ge=0.0, le=2.0, description="Randomness, 0 to 2; 0 is greedy.")]
TopP = Annotated[float, Field(gt=0.0, le=1.0, description="Nucleus sampling mass, above 0 and at most 1.")]
TopK = Annotated[int, Field(ge=0, description="Top-k sampling; 0 turns it off.")]
MaxNewTokens = Annotated[int, Field(ge=1, description="Most audio frames to generate (25 per second).")]
Seed = Annotated[int | None, Field(ge=0, le=2**63 - 1, description="Same seed, same request: same audio.")]
ScenePrompt = Annotated[str | None, Field(description="Description of the recording scene.")]
NormalizeText = Annotated[bool, Field(description="Rewrite the text as the model was trained on: sound-event tags "
                                                  "such as [laugh], ASCII punctuation, tidy whitespace.")]
VoiceDescriptionText = Annotated[str | None, Field(description="The voice described in words, instead of a clip.")]


class VoiceDescription(BaseModel):
    """A speaker described in words instead of voiced by a clip."""

    model_config = ConfigDict(extra="forbid")

    description: str = Field(description="For example: deep male voice, slow, British accent.")


ReferenceVoices = Annotated[list[str | VoiceDescription] | None, Field(
    description="reference_voices[i] voices SPEAKERi: a voice name, or {\"description\": ...}.")]


class Usage(BaseModel):
    prompt_tokens: int = Field(description="The sum over text chunks of each one's whole prompt.")
    prefill_tokens: int = Field(description="Prompt tokens the engine computed; the rest came from cached or "
                                            "continued KV (a voice used before, the previous text chunk).")
    completion_tokens: int = Field(description="Decoding steps the model ran (one frame of 8 codes each): the audio "
                                   "frames plus 8 per text chunk for the delay pattern, 9 when the audio ended by itself.")
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


class DecodeGraphs(BaseModel):
    """The decode step's CUDA graph, captured at start-up."""

    state: Literal["off", "pending", "captured", "failed"] = Field(
        description="off: CPU, or HIGGS_CUDA_GRAPHS=false; failed: the server refused to start (error says why).")
    graphs: int
    failed_attempts: int
    error: str | None = None


class Health(BaseModel):
    status: Literal["healthy", "loading", "unhealthy"]
    model_loaded: bool
    device: str
    voices_available: int
    model_path: str
    audio_tokenizer_path: str
    version: str
    worker: int | None = None  # which worker process (1..HIGGS_WORKERS) answered
    decode_graphs: DecodeGraphs | None = None  # once the engine has started
    error: str | None = None
    note: str | None = None


# --- the OpenAI-compatible API --------------------------------------------------------------------

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
# The model names OpenAI's clients send; each serves Higgs Audio v2 here (so does the served model's path).
CANONICAL_MODEL = "higgs-audio-v2"
OPENAI_MODEL_NAMES = (CANONICAL_MODEL, "tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-tts")


class VoiceId(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(max_length=64)


class SpeechRequest(BaseModel):
    """OpenAI's `POST /v1/audio/speech` body, plus our sampling and one-off cloning fields. An unknown
    field is refused (400 naming it), as OpenAI does: it is most often a typo."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=256, description="higgs-audio-v2 (or tts-1, tts-1-hd, gpt-4o-mini-tts, "
                                                                "gpt-4o-tts, the served model's path); default higgs-audio-v2.")
    input: str = Field(description="Text to speak.")
    voice: str | VoiceId | None = Field(None, description="A voice from GET /v1/audio/voices (names and aliases such "
                                                          "as alloy); none lets the model choose.")
    response_format: ResponseFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0, description="Tempo; pitch is kept.")
    instructions: str | None = Field(None, description="Becomes the scene description.")
    stream_format: Literal["audio", "sse"] = "audio"
    stream: bool | None = Field(None, description="false: the whole file at once, with its length (Content-Length, "
                                                  "real WAV sizes); true or absent: audio as it is produced.")
    temperature: Temperature = 0.7
    top_p: TopP = 0.95
    top_k: TopK = 50
    seed: Seed = None
    max_new_tokens: MaxNewTokens = 1024
    ref_audio: str | None = Field(None, description="Base64 WAV, MP3 or FLAC clip to clone (instead of voice).")
    ref_text: str | None = Field(None, description="Transcript of ref_audio.")
    voice_description: VoiceDescriptionText = None
    normalize_text: NormalizeText = True

    @property
    def voice_name(self) -> str | None:
        return self.voice.id if isinstance(self.voice, VoiceId) else self.voice


class ModelCard(BaseModel):
    """OpenAI's model object; `root` names the model an alias serves."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AudioModel(BaseModel):
    id: str


class AudioModels(BaseModel):
    """What Open WebUI reads from `GET /v1/audio/models`."""

    models: list[AudioModel]


class AudioVoice(BaseModel):
    id: str
    name: str
    alias_of: str | None = Field(None, description="The voice an alias (an OpenAI stock name) stands for.")


class AudioVoices(BaseModel):
    """What Open WebUI and Home Assistant read from `GET /v1/audio/voices`."""

    voices: list[AudioVoice]


# --- live sessions (GET /v1/audio/speech/stream, WebSocket): the client's messages ---------------------

class LiveMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SessionConfig(LiveMessage):
    """The first message: the voice and sampling of every segment."""

    type: Literal["session.config"]
    voice: str | None = Field(None, description="A voice or alias, as on /v1/audio/speech.")
    ref_audio: str | None = Field(None, description="Base64 WAV, MP3 or FLAC clip to clone (instead of voice).")
    ref_text: str | None = Field(None, description="Transcript of ref_audio.")
    voice_description: VoiceDescriptionText = None
    scene_prompt: ScenePrompt = None
    temperature: Temperature = 0.7
    top_p: TopP = 0.95
    top_k: TopK = 50
    seed: Seed = None
    max_new_tokens: MaxNewTokens = 1024
    normalize_text: NormalizeText = True
    api_key: str | None = Field(None, max_length=1024, description="For browsers, which cannot set the "
                                                                   "Authorization header on a WebSocket.")


class InputText(LiveMessage):
    type: Literal["input.text"]
    text: str


class InputFlush(LiveMessage):
    type: Literal["input.flush"]


class InputDone(LiveMessage):
    type: Literal["input.done"]


class ResponseCancel(LiveMessage):
    type: Literal["response.cancel"]


LIVE_MESSAGES = {model.model_fields["type"].annotation.__args__[0]: model
                 for model in (SessionConfig, InputText, InputFlush, InputDone, ResponseCancel)}
