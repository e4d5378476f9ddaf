"""One request's path from text to audio: voices and reference clips -> prompt -> engine -> waveform.

Text longer than one generation chunk is split at natural boundaries and generated chunk by chunk,
each with the previous chunks' audio in its context; without a voice, the first chunk's audio
becomes the voice of the rest, so a long script keeps one voice. Each chunk continues the engine's
kept context of the one before (its KV), so only the new turn is computed. Earlier chunks stay in the
context while the next chunk's prompt leaves room for its audio within `HIGGS_MAX_SEQ_LEN`; then the
context is re-based once (the voice's clip and the pinned first chunk kept, plus the last
`HIGGS_LONG_FORM_CONTEXT_CHUNKS` chunks) and grows again from there.

The API layer validates field ranges; this layer checks what needs the model or the voices, and
raises `InvalidRequest` with a message a user can act on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import prompts, text_normalize
from .audio import SAMPLE_RATE
from .codec import ClipCodes, Codec
from .codec_batching import CodecDecodeBatcher
from .config import Settings
from .engine.contexts import Context
from .engine.delay_pattern import steps_for_frames, undo_delay_pattern
from .engine.prefill_pacing import PrefillPacer
from .engine.requests import GenerationRequest, GenerationResult, RequestHandle
from .engine.sampling import RepetitionAware, SamplingParams
from .engine.scheduler import Scheduler
from .loading import LoadedModel
from .streaming import DecodeWindow, StreamingDecoder
from .text_chunks import split_for_generation
from .voices import VoiceStore

FRAMES_PER_SECOND = 25
# The worst of the chunks' endings is the request's.
_FINISH_SEVERITY = ("stop", "length", "guard")


class InvalidRequest(ValueError):
    """The request cannot be served as asked; the message says why."""


class GenerationFailed(RuntimeError):
    """The engine could not finish the request (timeout or internal fault)."""


class GenerationTimeout(GenerationFailed):
    """The request ran past its deadline (`HIGGS_REQUEST_TIMEOUT_S`, counted for the whole request)."""


@dataclass(frozen=True)
class DescribedVoice:
    """A speaker described in words instead of voiced by a clip."""

    description: str


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int  # frames of audio (40 ms each) per chunk of text, at most
    seed: int | None


@dataclass
class Speech:
    samples: np.ndarray  # 24 kHz mono float32
    finish_reason: str
    prompt_tokens: int  # the sum over text chunks of each one's whole prompt
    prefill_tokens: int  # the prompt tokens the engine computed (the rest came from cached or continued KV)
    # Decoding steps the model ran, one frame of 8 codes each: the audio frames plus, per text chunk, the
    # delay pattern's 8 that complete none (the all-begin frame, the 7 of the ramp) and, when the audio
    # ended by itself, the closing all-end frame: a chunk cut at max_new_tokens ran max_new_tokens + 8.
    completion_tokens: int
    first_audio_at: float  # time.monotonic() when the first audio was ready
    audio_seconds: float


def runaway_guard_frames(text: str, multiple: float) -> float:
    """Frames after which audio that has not ended counts as runaway: `multiple` times a generous
    estimate of how long the text can take to say (slow speech: 4 characters a second, plus 2 s);
    sound-event tags are markup, not characters to say."""
    if multiple <= 0:
        return math.inf
    plausible_seconds = 2.0 + len(text_normalize.without_sound_events(text)) / 4.0
    return math.ceil(multiple * plausible_seconds * FRAMES_PER_SECOND)


@dataclass
class Conversation:
    """The fixed part of a request's prompt: `build(text)` gives the messages for one chunk of text,
    `codes` the clips of its audio items, in order."""

    build: Callable[[str], list[dict]]
    codes: list[np.ndarray]


@dataclass
class SpeechPlan:
    """A request cut into chunks of text, the audio codes of the chunks already generated, and the
    engine's kept context of the conversation so far."""

    conversation: Conversation
    chunks: list[str]
    voice_from_first_chunk: bool
    context_chunks: int  # earlier chunks kept at a re-base
    deadline: float  # time.monotonic() by which the whole request (a live session: the chunk) must be done
    spoken: list[tuple[str, np.ndarray]] = field(default_factory=list)
    first_prompt: prompts.Prompt | None = None  # built when the plan is made, to check it fits
    open: bool = False  # a live session's: more chunks may come, so every chunk keeps its context
    history_start: int = 0  # chunks before this one (the pinned one aside) left the context at the last re-base
    context: Context | None = None

    def keeps_context(self, index: int) -> bool:
        return self.open or index + 1 < len(self.chunks)

    def history(self, index: int, rebased: bool = False, dropped: int = 0) -> tuple[list, int]:
        """The earlier chunks in chunk `index`'s context, and where its recent ones start: those since the
        last re-base, or (`rebased`) the last `context_chunks`; the pinned first chunk (its audio sets the
        voice) leads them. `dropped` leaves out as many of the least useful (the oldest recent ones, the
        pinned one last)."""
        spoken = self.spoken[:index]
        pinned = spoken[:1] if self.voice_from_first_chunk else []
        start = max(len(pinned), index - self.context_chunks if rebased else self.history_start)
        recent = spoken[start:]
        return (pinned if dropped <= len(recent) else []) + recent[dropped:], start + min(dropped, len(recent))

    def messages_and_codes(self, index: int | None, turns: list) -> tuple[list[dict], list[np.ndarray]]:
        """Chunk `index`'s conversation: the fixed part, then the earlier chunks `turns` as user text +
        assistant audio."""
        text = "" if index is None else self.chunks[index]
        messages = prompts.with_history(self.conversation.build(text), [text for text, _ in turns])
        return messages, self.conversation.codes + [codes for _, codes in turns]


class Synthesizer:
    def __init__(self, loaded: LoadedModel, voices: VoiceStore, settings: Settings, on_load_change=None):
        self.loaded = loaded
        self.voices = voices
        self.settings = settings
        # The engine first: it captures its CUDA graphs before anything else uses the device.
        self.scheduler = Scheduler(loaded.model, settings.max_batch_size, settings.max_queue_size,
                                   settings.max_seq_len, ras=RepetitionAware(settings.ras_window, settings.ras_max_repeat),
                                   cuda_graphs=settings.cuda_graphs, prefill_chunk_tokens=settings.prefill_chunk_tokens,
                                   prefill_pacer=PrefillPacer(settings.stream_chunk_frames if settings.prefill_pacing else 0,
                                                              FRAMES_PER_SECOND),
                                   on_load_change=on_load_change, context_idle_s=settings.context_idle_s,
                                   **settings.engine_cache_sizes)
        self.scheduler.start()
        self.codec = Codec(loaded.codec, loaded.device)
        self.reference_clips = ClipCodes(self.codec)
        self.audio_decoder = CodecDecodeBatcher(self.codec)

    def close(self) -> None:
        self.scheduler.stop()
        self.audio_decoder.close()

    # --- plans per mode (`normalize`: rewrite the text as the checkpoint expects, see text_normalize) ---
    def plan_plain(self, text: str, scene_prompt: str | None, voice_description: str | None = None,
                   normalize: bool = True) -> SpeechPlan:
        return self._plan(self.plain_conversation(scene_prompt, voice_description), spoken_text(text, normalize),
                          voice_from_first_chunk=True)

    def plan_clone(self, text: str, scene_prompt: str | None, *, voice: str | None = None,
                   reference_audio: np.ndarray | None = None, reference_text: str | None = None,
                   normalize: bool = True) -> SpeechPlan:
        conversation = self.clone_conversation(scene_prompt, voice=voice, reference_audio=reference_audio,
                                               reference_text=reference_text)
        return self._plan(conversation, spoken_text(text, normalize))

    def live_plan(self, conversation: Conversation, voice_from_first_chunk: bool) -> SpeechPlan:
        """An open plan for a live session: its chunks (segments) come one by one, each continuing the
        context of the one before."""
        plan = SpeechPlan(conversation, [], voice_from_first_chunk, self.settings.long_form_context_chunks,
                          deadline=math.inf, open=True)
        self._tokenize(plan, None, [], self.settings.max_seq_len - 1)  # the fixed part must fit
        return plan

    @staticmethod
    def plain_conversation(scene_prompt: str | None, voice_description: str | None = None) -> Conversation:
        return Conversation(lambda chunk: prompts.plain_messages(chunk, scene_prompt, voice_description), [])

    def clone_conversation(self, scene_prompt: str | None, *, voice: str | None = None,
                           reference_audio: np.ndarray | None = None,
                           reference_text: str | None = None) -> Conversation:
        """In a named voice or a one-off clip (encoded here: blocking)."""
        if voice is not None:
            codes = self.voice_codes(voice)
            reference_text = reference_text or self.voices.get(voice).transcript
        else:
            codes = self.reference_clips.encode(reference_audio)
        return Conversation(lambda chunk: prompts.clone_messages(chunk, reference_text, scene_prompt), [codes])

    def plan_multi_speaker(self, text: str, scene_prompt: str | None, voices: list[str | DescribedVoice],
                           normalize: bool = True) -> SpeechPlan:
        """`voices[i]` voices SPEAKERi: a voice name (its clip) or a description in words."""
        text = spoken_text(text, normalize)
        needed, allowed = prompts.speaker_count(text), self.settings.max_speakers
        if needed == 0:
            raise InvalidRequest("text has no [SPEAKER0], [SPEAKER1], ... tags; use /generate for a single voice")
        if needed > allowed:
            raise InvalidRequest(f"text uses a speaker tag beyond [SPEAKER{allowed - 1}]; this server allows at most "
                                 f"{allowed} speakers")
        if voices and len(voices) < needed:
            raise InvalidRequest(
                f"text uses {needed} speakers (up to [SPEAKER{needed - 1}]) but reference_voices has only "
                f"{len(voices)}; give one voice per speaker or none")
        codes = [self.voice_codes(voice) for voice in voices if isinstance(voice, str)]
        descriptions = [None if isinstance(voice, str) else voice.description for voice in voices]
        conversation = Conversation(lambda chunk: prompts.multi_speaker_messages(chunk, scene_prompt, descriptions),
                                    codes)
        return self._plan(conversation, text)

    def voice_codes(self, name: str) -> np.ndarray:
        return self.voices.cached_codes(name, self.loaded.codec_id, self.codec.encode)

    def _plan(self, conversation: Conversation, text: str, voice_from_first_chunk: bool = False) -> SpeechPlan:
        chunks = split_for_generation(text, self.settings.long_form_chunk_chars)
        plan = SpeechPlan(conversation, chunks, voice_from_first_chunk, self.settings.long_form_context_chunks,
                          deadline=time.monotonic() + self.settings.request_timeout_s)
        # Every chunk must fit before anything is queued, or a long text would fail half-way through
        # an admitted request (a stream already answered 200). The first chunk's prompt is its minimal one.
        plan.first_prompt = self._minimal_prompt(plan, 0)
        for index in range(1, len(chunks)):
            self._minimal_prompt(plan, index)
        return plan

    def _minimal_prompt(self, plan: SpeechPlan, index: int) -> prompts.Prompt:
        """Chunk `index`'s smallest prompt, the one `_prompt` falls back to: the fixed conversation and
        its text, with no earlier chunk. `InvalidRequest` naming the chunk when even that does not fit."""
        try:
            return self._tokenize(plan, index, [], self.settings.max_seq_len - 1)
        except prompts.PromptTooLong as exc:
            raise self._too_long(plan, index, exc.num_tokens) from None

    def _too_long(self, plan: SpeechPlan, index: int, num_tokens: int) -> InvalidRequest:
        limit = f"the server's limit is {self.settings.max_seq_len}"
        if not plan.open and len(plan.chunks) == 1:
            return InvalidRequest(f"the prompt is {num_tokens} tokens long (text and reference audio); {limit}")
        chunk = plan.chunks[index]
        quoted = f"\"{chunk[:40]}…\"" if len(chunk) > 40 else f"\"{chunk}\""
        which = (f"the segment {quoted}" if plan.open else
                 f"chunk {index + 1} of {len(plan.chunks)} of the text ({quoted}, {len(chunk)} characters)")
        return InvalidRequest(f"{which} with the scene prompt and reference audio is {num_tokens} tokens long; "
                              f"{limit}: shorten the scene prompt, the reference audio or that part of the text")

    def _prompt(self, plan: SpeechPlan, index: int, steps: int = 0) -> prompts.Prompt:
        """Chunk `index`'s prompt: the conversation since the last re-base, while that leaves room for
        `steps` decoding steps; else re-based (and the plan's later chunks continue from there). A chunk whose
        re-based context would not fit at all hears fewer earlier chunks instead of failing half-way
        through an admitted request."""
        limit = self.settings.max_seq_len - 1
        turns, _ = plan.history(index)
        if len(turns) > (1 if plan.voice_from_first_chunk and index else 0):
            try:
                return self._tokenize(plan, index, turns, limit - steps)
            except prompts.PromptTooLong:
                pass
        dropped = 0
        while True:
            turns, start = plan.history(index, rebased=True, dropped=dropped)
            try:
                prompt = self._tokenize(plan, index, turns, limit)
            except prompts.PromptTooLong as exc:
                if not turns:  # no earlier chunk left to leave out (a plan checks this for all its chunks)
                    raise self._too_long(plan, index, exc.num_tokens) from None
                dropped += 1
                continue
            plan.history_start = start  # only once it fits: a refused live segment leaves the plan as it was
            return prompt

    def _tokenize(self, plan: SpeechPlan, index: int | None, turns: list, max_tokens: int) -> prompts.Prompt:
        """Chunk `index`'s prompt with `turns` before it (index None: the fixed part, with no text to say)."""
        messages, codes = plan.messages_and_codes(index, turns)
        return prompts.tokenize(messages, codes, self.loaded.tokenizer, self.loaded.config, max_tokens=max_tokens,
                                text_tokens=text_normalize.SOUND_EVENT_TOKENS)

    # --- generation ---
    def engine_steps(self, sampling: Sampling) -> int:
        """The decoding steps a chunk may run for `max_new_tokens` frames of audio."""
        return steps_for_frames(sampling.max_new_tokens, self.loaded.config.num_codebooks)

    def submit_chunk(self, plan: SpeechPlan, index: int, sampling: Sampling) -> RequestHandle:
        """Queues text chunk `index` (with the chunks before it as context); chunk i uses seed + i.

        Only the first chunk faces admission (`QueueFull`): the later ones continue a request already
        admitted, so they go ahead of new arrivals. Each chunk gets the time left until the request's deadline.
        `max_new_tokens` counts frames of audio: the engine runs the delay pattern's steps on top
        (`engine_steps`), so even 1 gives audio.
        """
        remaining = plan.deadline - time.monotonic()
        if remaining <= 0:
            raise self._timed_out()
        chunk_seed = None if sampling.seed is None else sampling.seed + index
        steps = self.engine_steps(sampling)
        return self.scheduler.submit(GenerationRequest(
            prompt=plan.first_prompt if index == 0 and plan.first_prompt else self._prompt(plan, index, steps),
            sampling=SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                                    seed=chunk_seed),
            max_new_frames=steps,
            guard_frames=runaway_guard_frames(plan.chunks[index], self.settings.runaway_guard_multiple),
            timeout_s=remaining,
            context=plan.context,
            keep_context=plan.keeps_context(index),
        ), follow_up=index > 0)

    async def generate(self, plan: SpeechPlan, sampling: Sampling) -> Speech:
        audio, results = [], []
        try:
            for index in range(len(plan.chunks)):
                handle = self.submit_chunk(plan, index, sampling)
                try:
                    result = await handle.wait()
                except BaseException:  # the client went away: the slot is freed at the next step
                    self.abandon(handle)
                    raise
                self.finish_chunk(plan, result)
                audio.append(await self.audio_decoder.decode(plan.spoken[-1][1], exact=True))
                results.append(result)
        finally:
            self.end(plan)
        samples = np.concatenate(audio)
        return _speech(samples, results, time.monotonic(), len(samples) / SAMPLE_RATE)

    def stream(self, plan: SpeechPlan, sampling: Sampling) -> "SpeechStream":
        """Queues the first chunk now (so a full queue fails before any byte is sent); audio comes by
        iterating the stream."""
        return SpeechStream(self, plan, sampling, self.submit_chunk(plan, 0, sampling))

    def abandon(self, handle: RequestHandle) -> None:
        """Stops a chunk nobody waits for any more, and releases a context it kept."""
        if (context := handle.abandon()) is not None:
            self.scheduler.release(context)

    def end(self, plan: SpeechPlan) -> None:
        """The plan is done (or abandoned): its kept context goes back to the engine."""
        if plan.context is not None:
            self.scheduler.release(plan.context)
            plan.context = None

    def finish_chunk(self, plan: SpeechPlan, result: GenerationResult) -> None:
        """Raises if the chunk failed; otherwise keeps its audio codes as context for the next chunks."""
        plan.context = result.context
        if result.finish_reason == "timeout":
            raise self._timed_out()
        if result.finish_reason in ("error", "cancelled"):
            raise GenerationFailed(result.error or f"generation {result.finish_reason}")
        plan.spoken.append((plan.chunks[len(plan.spoken)], undo_delay_pattern(result.frames)))

    def _timed_out(self) -> GenerationTimeout:
        return GenerationTimeout(f"the request did not finish within the server's limit of "
                                 f"{self.settings.request_timeout_s:g} s")


def spoken_text(text: str, normalize_text: bool) -> str:
    """The text as the model is to read it (normalised unless asked not to); refused when nothing is left."""
    if not normalize_text:
        return text
    spoken = text_normalize.normalize(text)
    if not spoken:
        raise InvalidRequest("text has nothing left to say once normalised (parentheses and blank lines are "
                             "dropped); send normalize_text: false to have it read as written")
    return spoken


def _speech(samples: np.ndarray, results: list[GenerationResult], first_audio_at: float,
            audio_seconds: float) -> Speech:
    finish = max((r.finish_reason for r in results), key=_FINISH_SEVERITY.index)
    return Speech(samples, finish, sum(r.prompt_tokens for r in results), sum(r.prefill_tokens for r in results),
                  sum(r.steps for r in results), first_audio_at, audio_seconds)


class ChunkAudio:
    """One text chunk's audio as its frames arrive: the windows that can no longer change, decoded as
    they come, then the tail once generation has ended."""

    def __init__(self, synthesizer: Synthesizer, handle: RequestHandle):
        self.handle = handle
        self._synthesizer = synthesizer
        self._decoder = StreamingDecoder(synthesizer.codec, synthesizer.loaded.config.num_codebooks,
                                         synthesizer.settings.streaming)

    async def body(self):
        async for frame in self.handle.frames(wanted=self._decoder.frames_until_chunk):
            if self._decoder.push(frame):
                yield await self._decoded(self._decoder.next_window())

    async def tail(self) -> np.ndarray | None:
        window = self._decoder.next_window(final=True)
        return None if window is None else await self._decoded(window)

    async def _decoded(self, window: DecodeWindow) -> np.ndarray:
        return window.keep(await self._synthesizer.audio_decoder.decode(window.codes, exact=window.final))


class SpeechStream:
    """Audio chunks (24 kHz float32) as the engine produces frames, text chunk after text chunk;
    `speech` (without samples) is set once iteration ends."""

    def __init__(self, synthesizer: Synthesizer, plan: SpeechPlan, sampling: Sampling, first: RequestHandle):
        self._synthesizer, self._plan, self._sampling, self._first = synthesizer, plan, sampling, first
        self.first_audio_at: float | None = None
        self.samples_sent = 0
        self.speech: Speech | None = None

    async def __aiter__(self):
        synthesizer, results, chunks = self._synthesizer, [], self._plan.chunks
        handle = self._first  # the chunk being generated: stopped if the stream ends early
        try:
            for index in range(len(chunks)):
                audio = ChunkAudio(synthesizer, handle)
                async for piece in audio.body():
                    yield self._sent(piece)
                results.append(handle.result(timeout=0))
                synthesizer.finish_chunk(self._plan, results[-1])
                if index + 1 < len(chunks):  # queued before this chunk's tail is decoded: they overlap
                    handle = synthesizer.submit_chunk(self._plan, index + 1, self._sampling)
                tail = await audio.tail()
                if tail is not None:
                    yield self._sent(tail)
        finally:
            synthesizer.abandon(handle)  # no-op once finished and handed on
            synthesizer.end(self._plan)
        self.speech = _speech(np.zeros(0, dtype=np.float32), results, self.first_audio_at or time.monotonic(),
                              self.samples_sent / SAMPLE_RATE)

    def _sent(self, chunk: np.ndarray) -> np.ndarray:
        if self.first_audio_at is None:
            self.first_audio_at = time.monotonic()
        self.samples_sent += len(chunk)
        return chunk
