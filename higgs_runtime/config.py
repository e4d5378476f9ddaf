"""Service settings, read once from environment variables (main.py turns its flags into these)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from .streaming import StreamingConfig

DEFAULT_MODEL = "bosonai/higgs-audio-v2-generation-3B-base"
DEFAULT_AUDIO_TOKENIZER = "bosonai/higgs-audio-v2-tokenizer"
MAX_WORKERS = 64
# Offline presets: the real architecture with random weights (they produce noise, not speech);
# full-random is the real size, for GPUs.
RANDOM_PRESETS = ("tiny-random", "small-random", "full-random")
# Raw URL prefix of the reference repository's voice prompts, pinned to one commit.
DEFAULT_VOICE_SOURCE = (
    "https://raw.githubusercontent.com/boson-ai/higgs-audio/"
    "f04f5df76a6a7b14674e0d6d715b436c422883c6/examples/voice_prompts"
)


# OpenAI's stock voice names, for clients that accept no other name (Pipecat, and the defaults of
# LiveKit and Open WebUI), onto the preset voices: by the voice's character, feminine or masculine.
DEFAULT_VOICE_ALIASES = ("alloy=en_woman,ash=en_man,ballad=chadwick,cedar=en_man,coral=mabel,echo=en_man,"
                         "fable=chadwick,marin=en_woman,nova=belinda,onyx=en_man,sage=mabel,shimmer=belinda,"
                         "verse=chadwick")


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "higgs-audio-server"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "higgs-audio-server"


def _parse(raw: str, kind: type):
    if issubclass(kind, Path):
        return Path(raw).expanduser()
    if kind is bool:
        if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
            raise ValueError(raw)
        return raw.lower() in ("1", "true", "yes")
    return kind(raw)


@dataclass(frozen=True)
class Settings:
    """Every knob of the service. Each field is read from `HIGGS_<FIELD NAME IN CAPITALS>`."""

    model_path: str = DEFAULT_MODEL
    audio_tokenizer_path: str = DEFAULT_AUDIO_TOKENIZER
    device: str = "auto"
    # Worker processes, each with its own engine on its own GPU (0: one per GPU present, one without CUDA).
    workers: int = 0
    # The GPU type the resource spec asks for (BentoCloud's naming): one with 24 GB or more.
    gpu_type: str = "nvidia-l4"
    data_dir: Path = _default_data_dir()
    cache_dir: Path = _default_cache_dir()
    voice_source: str = DEFAULT_VOICE_SOURCE
    # Other names for voices, `alias=voice,...` (`none`: no aliases); a voice of the alias's own name wins.
    voice_aliases: str = DEFAULT_VOICE_ALIASES
    # Origins whose browser pages may call the API: empty (none, the default), `*` or a comma-separated list.
    cors_origins: str = ""
    # Request limits: every user-supplied text is bounded before any work proportional to it.
    max_text_chars: int = 5000
    max_scene_chars: int = 2000  # scene_prompt, instructions
    max_transcript_chars: int = 1000  # reference_text, ref_text, an upload's transcript
    max_description_chars: int = 500  # an upload's description, a voice_description, a described speaker
    max_speakers: int = 10  # [SPEAKER0] .. [SPEAKER9], and as many reference_voices
    max_new_tokens_cap: int = 2048
    max_request_bytes: int = 32 * 1024 * 1024
    max_upload_bytes: int = 16 * 1024 * 1024
    # A request's whole body must arrive within this many seconds (slow or stalled clients get 408).
    body_timeout_s: float = 60.0
    min_reference_seconds: float = 0.5
    max_reference_seconds: float = 30.0
    # Engine capacity.
    max_batch_size: int = 8
    max_queue_size: int = 64
    max_seq_len: int = 4096
    # KV cache budget in tokens, shared by all requests (0: max_batch_size x max_seq_len).
    kv_cache_tokens: int = 0
    # Capture each decode-step shape as a CUDA graph and replay it (CUDA only).
    cuda_graphs: bool = True
    # Prompts are prefilled in chunks of this many tokens (a multiple of 64), about one chunk's worth
    # between two decoding steps: arrivals never stall running streams longer.
    prefill_chunk_tokens: int = 128
    # Prefill waits while it would make a running stream's latest chunk (stream_chunk_frames) of frames
    # take longer than the audio it carries: listeners never stall, arrivals start a little later.
    prefill_pacing: bool = True
    # Idle cached prompt prefixes (voices) kept at most, in tokens (-1: half the KV budget; 0: no prefix cache).
    prefix_cache_tokens: int = -1
    ras_window: int = 7
    ras_max_repeat: int = 2
    request_timeout_s: float = 600.0  # a whole request, all its text chunks together
    # After SIGTERM, how long requests already taken may still run before they are cut off.
    drain_timeout_s: float = 300.0
    # Audio still going after this multiple of the time its text could plausibly take is cut (0: off).
    runaway_guard_multiple: float = 2.0
    # Long-form text: characters per generation chunk, and how many earlier chunks stay in context when
    # it is re-based (it grows until the next chunk's prompt would leave too little room for its audio).
    long_form_chunk_chars: int = 300
    long_form_context_chunks: int = 2
    # A conversation's kept context (its KV, between two chunks or segments) idle this long is released.
    context_idle_s: float = 300.0
    # Live sessions (the WebSocket route): at once per worker, a message's size (session.config carries
    # a base64 clip), text waiting to be spoken, a session's length, and how long one may sit idle (no
    # message while nothing is spoken; the first message too).
    live_sessions: int = 16
    live_message_bytes: int = 8 * 1024 * 1024
    live_buffered_chars: int = 5000
    live_session_s: float = 3600.0
    live_idle_s: float = 60.0
    # Every this many seconds the worker hands freed heap memory back to the system (0: never).
    malloc_trim_interval_s: float = 30.0
    # Optional API keys: a comma-separated list and/or a file with one key per line.
    api_keys: str = ""
    api_keys_file: str = ""
    # Streaming: frames of audio in the first chunk (0.4 s at the default) and in each later one.
    stream_first_chunk_frames: int = 10
    stream_chunk_frames: int = 25

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        environ = os.environ if environ is None else environ
        values = {}
        for field in fields(cls):
            raw = environ.get(f"HIGGS_{field.name.upper()}")
            if raw is None or raw == "":
                continue
            kind = type(field.default)
            try:
                values[field.name] = _parse(raw, kind)
            except ValueError as exc:
                raise ValueError(f"HIGGS_{field.name.upper()}={raw!r} is not a valid {kind.__name__}") from exc
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = ("max_text_chars", "max_scene_chars", "max_transcript_chars", "max_description_chars",
                    "max_speakers", "max_new_tokens_cap", "max_request_bytes", "max_upload_bytes",
                    "body_timeout_s", "max_batch_size", "max_queue_size", "max_seq_len", "stream_first_chunk_frames", "long_form_chunk_chars",
                    "stream_chunk_frames", "prefill_chunk_tokens", "drain_timeout_s", "context_idle_s",
                    "live_sessions", "live_message_bytes", "live_buffered_chars", "live_session_s", "live_idle_s")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"HIGGS_{name.upper()} must be positive")
        if not 0 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"HIGGS_WORKERS must be between 0 (one per GPU) and {MAX_WORKERS}")
        if self.prefill_chunk_tokens % 64:
            raise ValueError("HIGGS_PREFILL_CHUNK_TOKENS must be a multiple of 64 (the KV block size)")
        if self.kv_cache_tokens and self.kv_cache_tokens < self.max_seq_len:
            raise ValueError("HIGGS_KV_CACHE_TOKENS must hold at least one sequence of HIGGS_MAX_SEQ_LEN tokens")
        if self.malloc_trim_interval_s < 0:
            raise ValueError("HIGGS_MALLOC_TRIM_INTERVAL_S must be >= 0 (0 turns it off)")
        if self.ras_window < 0 or self.ras_max_repeat < 1:
            raise ValueError("HIGGS_RAS_WINDOW must be >= 0 (0 turns RAS off) and HIGGS_RAS_MAX_REPEAT >= 1")
        if not 0 < self.min_reference_seconds < self.max_reference_seconds:
            raise ValueError("HIGGS_MIN_REFERENCE_SECONDS must be positive and below HIGGS_MAX_REFERENCE_SECONDS")

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    def api_key_set(self) -> frozenset[str]:
        keys = [key.strip() for key in self.api_keys.split(",")]
        if self.api_keys_file:
            try:
                keys += [line.strip() for line in Path(self.api_keys_file).read_text().splitlines()]
            except OSError as exc:
                raise ValueError(f"HIGGS_API_KEYS_FILE cannot be read: {exc}") from exc
        return frozenset(key for key in keys if key and not key.startswith("#"))

    @property
    def streaming(self) -> StreamingConfig:
        return StreamingConfig(first_chunk_frames=self.stream_first_chunk_frames, chunk_frames=self.stream_chunk_frames)

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "voices"

    @property
    def presets_dir(self) -> Path:
        return self.data_dir / "presets"

    @property
    def engine_cache_sizes(self) -> dict[str, int | None]:
        """The KV budget and the idle prefix bound as the engine takes them (None: its default)."""
        return {"kv_cache_tokens": self.kv_cache_tokens or None,
                "prefix_cache_tokens": None if self.prefix_cache_tokens < 0 else self.prefix_cache_tokens}

    @property
    def is_random_preset(self) -> bool:
        return self.model_path in RANDOM_PRESETS
