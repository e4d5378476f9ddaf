"""The live route, `GET /v1/audio/speech/stream` (WebSocket), for voice agents: text in as it is
written (an LLM's reply, token by token), speech out sentence by sentence, in one voice and one
continuing context (`higgs_runtime.live_speech`).

Client to server, JSON text messages: `session.config` first, then `input.text`, `input.flush`,
`input.done` and `response.cancel`. Server to client: `session.created`; per segment `segment.start`,
binary frames of 16-bit PCM (24 kHz, mono) and `segment.done`; `response.cancelled`; `error` for a
bad message (the session goes on); `session.done`. README "Live sessions" has the whole protocol.

Two tasks serve a session: this module's reader takes the client's messages and queues the complete
sentences; the speaker speaks them one after another, the next segment generating as soon as the
one before has finished generating. A barge-in stops the speaker where it is, so nothing of the
stopped segment follows `response.cancelled`."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
import uuid

from fastapi import APIRouter
from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocket, WebSocketState

from higgs_runtime.audio import SAMPLE_RATE, AudioInputError
from higgs_runtime.encoding import encode
from higgs_runtime.live_speech import LiveSpeech, Segment
from higgs_runtime.speech import Conversation, Synthesizer
from higgs_runtime.text_stream import SentenceBuffer

from .errors import ApiError, field_of, main_problem, status_for
from .inputs import optional_text, present, voice_name
from .middleware import authorization, send_error
from .plans import decoded_clip, in_thread, sampling, voice_named
from .schemas import LIVE_MESSAGES, InputText, SessionConfig
from .state import ServerState, server_state

LIVE_PATH = "/v1/audio/speech/stream"
# Close codes (RFC 6455): a policy (keys, limits) refused; the server failed; the server is restarting
# (the drain timeout ended the session: its client reconnects, to another replica).
POLICY, SERVER_ERROR, SERVICE_RESTART = 1008, 1011, 1012

log = logging.getLogger("higgs_audio.live")
router = APIRouter()


@router.websocket(LIVE_PATH)
async def live(websocket: WebSocket) -> None:
    state = server_state()
    refusal = _refusal(state, websocket.scope)
    if refusal is not None:
        status, detail = refusal
        return await send_error(websocket.send, status, detail, LIVE_PATH, websocket=True)
    state.live_sessions += 1
    try:
        await websocket.accept()
        await LiveSession(websocket, state, needs_key=state.api_keys.required and not authorization(websocket.scope)).run()
    finally:
        state.live_sessions -= 1


def _refusal(state: ServerState, scope: dict) -> tuple[int, str] | None:
    """Why the handshake is refused, if it is: a page of another site, a wrong key (a missing one may
    come in session.config), the model not ready, or too many sessions."""
    if (origin := _foreign_origin(scope, state.settings.cors_origin_list)) is not None:
        return 403, (f"WebSocket connections from pages of {origin} are not allowed; list the origin in "
                     f"HIGGS_CORS_ORIGINS to allow them")
    header = authorization(scope)
    if header and state.api_keys.required and not state.api_keys.accepts_header(header):
        return 401, "invalid API key"
    try:
        state.ready_synthesizer()
    except ApiError as exc:
        return exc.status, exc.detail
    if state.live_sessions >= state.settings.live_sessions:
        return 429, (f"this server holds {state.live_sessions} live sessions, its limit "
                     f"(HIGGS_LIVE_SESSIONS); retry shortly")
    return None


def _foreign_origin(scope: dict, allowed: list[str]) -> str | None:
    """The handshake's `Origin` when it is a page of another site that HIGGS_CORS_ORIGINS does not list.
    Browsers open WebSockets across sites without any CORS check, so without this any page a visitor
    opens could drive a server without keys on their machine; clients other than browsers send no
    Origin."""
    headers = dict(scope["headers"])
    origin = headers.get(b"origin", b"").decode("latin-1")
    if not origin or "*" in allowed or origin in allowed:
        return None
    host = headers.get(b"host", b"").decode("latin-1").lower()
    return None if origin.lower().partition("://")[2] == host else origin


class Refused(Exception):
    """A message the session cannot take: answered with an `error` event, and the session goes on."""

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


class Closing(Exception):
    """The session ends: `error` event, then the socket closes with `close_code`."""

    def __init__(self, code: str, message: str, close_code: int = POLICY):
        super().__init__(message)
        self.code, self.message, self.close_code = code, message, close_code


class _ClientLeft(Exception):
    pass


class LiveSession:
    def __init__(self, websocket: WebSocket, state: ServerState, needs_key: bool):
        self.ws, self.state, self.settings = websocket, state, state.settings
        self.needs_key = needs_key
        self.started = time.monotonic()
        self.buffer = SentenceBuffer(self.settings.long_form_chunk_chars)
        self.queue: collections.deque[str] = collections.deque()  # complete pieces waiting to be spoken
        self.input_done = False
        self.text_queued = asyncio.Event()
        self.live: LiveSpeech | None = None
        self.speaker: asyncio.Task | None = None
        self.current: Segment | None = None  # being sent
        self.upcoming: Segment | None = None  # generating while `current`'s tail is sent
        self.numbers: dict[Segment, int] = {}
        self.totals = {"prompt_tokens": 0, "prefill_tokens": 0, "completion_tokens": 0}
        self.audio_seconds = 0.0
        self.send_lock = asyncio.Lock()

    async def run(self) -> None:
        try:
            await self._configure()
            self.speaker = asyncio.create_task(self._speak())
            await self._serve()
        except Closing as closing:
            await self._close(closing.close_code, closing.code, closing.message)
        except _ClientLeft:
            pass
        except asyncio.CancelledError:  # the drain timeout, or the server stopping
            await self._close(SERVICE_RESTART, "server_shutting_down",
                              "the server is shutting down; reconnect to go on (another replica will answer)")
            raise
        except Exception:
            log.exception("live session failed")
            await self._close(SERVER_ERROR, "server_error", "internal server error; the server log has the details")
        finally:
            await self._stop_speaker()
            for segment in (self.upcoming, self.current):
                if segment is not None and self.live is not None:
                    self.live.abandon(segment)
            if self.live is not None:
                self.live.close()

    # --- the reader -------------------------------------------------------------------------------
    async def _configure(self) -> None:
        """Until a valid session.config arrives (other messages are refused), within the idle limit."""
        while self.live is None:
            message = await self._receive(deadline=self.started + self.settings.live_idle_s)
            try:
                parsed = self._parse(message)
                if not isinstance(parsed, SessionConfig):
                    raise Refused("not_configured", "send session.config first")
                await self._start(parsed)
            except Refused as refused:
                await self._error(refused.code, refused.message, refused.param)
        await self._send_json({"type": "session.created", "session_id": uuid.uuid4().hex, "sample_rate": SAMPLE_RATE,
                               "encoding": "pcm_s16le", "channels": 1})

    async def _serve(self) -> None:
        """Takes messages until the client is done and everything is spoken (then `session.done`)."""
        while True:
            receiving = asyncio.ensure_future(self.ws.receive())
            done, _ = await asyncio.wait({receiving, self.speaker}, timeout=self._until_a_limit(),
                                         return_when=asyncio.FIRST_COMPLETED)
            if self.speaker in done:  # it ends once input is done and all is spoken, or by failing
                receiving.cancel()
                self.speaker.result()
                await self._send_json({"type": "session.done", "segments": len(self.numbers),
                                       "audio_seconds": round(self.audio_seconds, 3), "usage": self.totals})
                return await self.ws.close(1000)
            if receiving not in done:
                receiving.cancel()
                self._check_limits()
                continue
            try:
                await self._handle(self._parse(self._message(receiving.result())))
            except Refused as refused:
                await self._error(refused.code, refused.message, refused.param)

    async def _receive(self, deadline: float) -> dict:
        try:
            return self._message(await asyncio.wait_for(self.ws.receive(), max(0.0, deadline - time.monotonic())))
        except asyncio.TimeoutError:
            raise Closing("idle", f"no session.config within {self.settings.live_idle_s:g} s") from None

    @staticmethod
    def _message(message: dict) -> dict:
        if message["type"] == "websocket.disconnect":
            raise _ClientLeft()
        return message

    def _until_a_limit(self) -> float:
        return max(0.0, min(self.settings.live_idle_s, self.started + self.settings.live_session_s - time.monotonic()))

    def _check_limits(self) -> None:
        """Nothing arrived for a while: the session's length, then idleness (nothing being spoken either)."""
        if time.monotonic() - self.started >= self.settings.live_session_s:
            raise Closing("session_too_long", f"the session reached its limit of {self.settings.live_session_s:g} s")
        if self.current is None and self.upcoming is None and not self.queue:
            raise Closing("idle", f"no message for {self.settings.live_idle_s:g} s and nothing to say")

    def _parse(self, message: dict) -> BaseModel:
        text = message.get("text")
        if text is None:
            raise Refused("invalid_message", "send JSON text messages, not binary ones")
        if len(text.encode()) > self.settings.live_message_bytes:
            raise Refused("message_too_large", f"a message is at most {self.settings.live_message_bytes} bytes")
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise Refused("invalid_json", f"the message is not valid JSON: {exc}") from None
        model = LIVE_MESSAGES.get(data.get("type")) if isinstance(data, dict) else None
        if model is None:
            kind = data.get("type") if isinstance(data, dict) else None
            raise Refused("unknown_type", f"unknown message type {kind!r}; the types are {sorted(LIVE_MESSAGES)}", "type")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            error = main_problem(exc.errors())
            field = field_of(error.get("loc", ()))
            words = f"unknown field '{field}'" if error.get("type") == "extra_forbidden" else f"{field}: {error['msg']}"
            raise Refused("invalid_field", f"invalid {data['type']}: {words}", field) from None

    async def _handle(self, message: BaseModel) -> None:
        if isinstance(message, SessionConfig):
            raise Refused("already_configured", "the session is configured already")
        if message.type == "response.cancel":
            return await self._barge_in()
        if self.input_done:
            raise Refused("input_done", "input.done was sent: the session takes no more input")
        if isinstance(message, InputText):
            waiting = self.buffer.pending_chars + sum(len(piece) for piece in self.queue)
            if waiting + len(message.text) > self.settings.live_buffered_chars:
                raise Refused("buffer_full", f"{waiting} characters are waiting to be spoken; the limit is "
                                             f"{self.settings.live_buffered_chars}: send the rest later", "text")
            self._queue(self.buffer.push(message.text))
        elif message.type == "input.flush":
            self._queue(self.buffer.flush())
        else:  # input.done
            self._queue(self.buffer.flush())
            self.input_done = True
            self.text_queued.set()

    def _queue(self, pieces: list[str]) -> None:
        if pieces:
            self.queue.extend(pieces)
            self.text_queued.set()

    async def _barge_in(self) -> None:
        """Stops the segment being spoken and drops everything buffered or queued; the context keeps the
        audio sent. Nothing of the stopped segment follows `response.cancelled`."""
        self.buffer.clear()
        self.queue.clear()
        await self._stop_speaker()
        if self.upcoming is not None:
            await self.live.stop(self.upcoming)
        if self.current is not None:
            result = await self.live.stop(self.current)
            await self._segment_done(self.current, "cancelled", result)
        self.current = self.upcoming = None
        await self._send_json({"type": "response.cancelled"})
        self.speaker = asyncio.create_task(self._speak())

    async def _start(self, config: SessionConfig) -> None:
        """The session's voice and sampling, checked as /v1/audio/speech checks them."""
        settings = self.settings
        if self.needs_key and not (config.api_key and self.state.api_keys.accepts(config.api_key.encode())):
            raise Closing("invalid_api_key", "missing or invalid API key: send 'Authorization: Bearer <key>' on the "
                                             "handshake or api_key in session.config")
        try:
            synthesizer = self.state.ready_synthesizer()
            chosen = sampling(settings, config.temperature, config.top_p, config.top_k, config.max_new_tokens,
                              config.seed)
            voice = voice_name("voice", config.voice)
            reference_audio = present(config.ref_audio)
            if sum(choice is not None for choice in (voice, reference_audio, config.voice_description)) > 1:
                raise ApiError(400, "give at most one voice: voice, ref_audio or voice_description", "voice")
            scene = optional_text("scene_prompt", config.scene_prompt, settings.max_scene_chars)
            description = optional_text("voice_description", config.voice_description, settings.max_description_chars)
            reference_text = optional_text("ref_text", config.ref_text, settings.max_transcript_chars)
            if voice is not None:
                voice = voice_named(self.state.voices, "voice", voice)
            conversation = await in_thread(self._conversation, synthesizer, scene, description, voice,
                                           reference_audio, reference_text)
            plan = await in_thread(synthesizer.live_plan, conversation, voice is None and reference_audio is None)
        except Exception as exc:
            if status_for(exc) is None or status_for(exc) >= 500:
                raise
            param = getattr(exc, "param", None) or ("ref_audio" if isinstance(exc, AudioInputError) else None)
            raise Refused("invalid_config", getattr(exc, "detail", None) or str(exc), param) from None
        self.live = LiveSpeech(synthesizer, plan, chosen, config.normalize_text)

    def _conversation(self, synthesizer: Synthesizer, scene: str | None, description: str | None, voice: str | None,
                      reference_audio: str | None, reference_text: str | None) -> Conversation:
        if voice is None and reference_audio is None:
            return synthesizer.plain_conversation(scene, description)
        clip = None if reference_audio is None else decoded_clip(self.settings, reference_audio)
        return synthesizer.clone_conversation(scene, voice=voice, reference_audio=clip, reference_text=reference_text)

    # --- the speaker ------------------------------------------------------------------------------
    async def _speak(self) -> None:
        """Speaks the queued pieces one after another until input is done and nothing is left."""
        upcoming = None
        while True:
            segment = upcoming or await self._next_segment()
            if segment is None:
                return
            self.current, self.upcoming, upcoming = segment, None, None
            self.numbers[segment] = len(self.numbers)
            await self._send_json({"type": "segment.start", "segment": self.numbers[segment], "text": segment.text})
            async for piece in segment.audio.body():
                await self._send_audio(segment, piece)
            try:
                result = self.live.generated(segment)
            except Exception as exc:
                await self._failed(exc)
                self.current = None
                continue
            upcoming = self.upcoming = await self._start_queued()  # generates while this one's tail goes out
            tail = await segment.audio.tail()
            if tail is not None:
                await self._send_audio(segment, tail)
            await self._segment_done(segment, result.finish_reason, result)
            self.current = None

    async def _next_segment(self) -> Segment | None:
        while True:
            segment = await self._start_queued()
            if segment is not None:
                return segment
            if self.input_done and not self.queue:
                return None
            self.text_queued.clear()
            await self.text_queued.wait()

    async def _start_queued(self) -> Segment | None:
        """Starts the first queued piece that has something to say; refusals are reported and skipped."""
        while self.queue:
            try:
                segment = self.live.start(self.queue.popleft())
            except Exception as exc:
                await self._failed(exc)
                continue
            if segment is not None:
                return segment
        return None

    async def _failed(self, exc: Exception) -> None:
        status = status_for(exc)
        if status is None:
            log.error("live segment failed", exc_info=exc)
        code = {429: "server_busy", 400: "invalid_segment"}.get(status, "generation_failed")
        await self._error(code, str(exc) if status is not None else "internal server error; the server log has the details")

    async def _stop_speaker(self) -> None:
        if self.speaker is not None and not self.speaker.done():
            self.speaker.cancel()
            await asyncio.gather(self.speaker, return_exceptions=True)

    # --- sending ----------------------------------------------------------------------------------
    async def _send_audio(self, segment: Segment, samples) -> None:
        segment.sent(len(samples))  # counted as handed over: the context keeps what the client may hear
        async with self.send_lock:
            await self.ws.send_bytes(encode(samples, "pcm"))

    async def _segment_done(self, segment: Segment, finish_reason: str, result) -> None:
        seconds = segment.samples_sent / SAMPLE_RATE
        usage = {"prompt_tokens": result.prompt_tokens, "prefill_tokens": result.prefill_tokens,
                 "completion_tokens": result.steps}
        for name, value in usage.items():
            self.totals[name] += value
        self.audio_seconds += seconds
        await self._send_json({"type": "segment.done", "segment": self.numbers[segment], "audio_seconds": round(seconds, 3),
                               "finish_reason": finish_reason, "usage": usage})

    async def _error(self, code: str, message: str, param: str | None = None) -> None:
        log.info("live session: %s: %s", code, message[:300])
        await self._send_json({"type": "error", "code": code, "message": message, "param": param})

    async def _close(self, close_code: int, code: str, message: str) -> None:
        if self.ws.application_state == WebSocketState.CONNECTED:
            try:
                await self._error(code, message)
                await self.ws.close(close_code, reason=message[:120])
            except Exception:  # the client is gone already
                pass

    async def _send_json(self, payload: dict) -> None:
        async with self.send_lock:
            await self.ws.send_text(json.dumps(payload))
