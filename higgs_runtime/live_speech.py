"""A live conversation, as a voice agent holds one: segments of text (sentences, as an LLM writes
them) spoken one after another in one voice and one continuing context, the engine's kept KV, so each
segment computes only its own turn. A segment's audio streams as it is generated; it can be stopped
half-way (barge-in), and the context then keeps exactly the audio that was sent.

The caller (the WebSocket route) decides what to speak when, sends the audio, and tells each segment
how much of it went out (`Segment.sent`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .engine.delay_pattern import undo_delay_pattern
from .engine.requests import GenerationResult, RequestHandle
from .speech import ChunkAudio, InvalidRequest, Sampling, SpeechPlan, Synthesizer, spoken_text


@dataclass(eq=False)
class Segment:
    index: int  # its chunk in the plan
    text: str  # as spoken (normalised)
    handle: RequestHandle
    audio: ChunkAudio
    samples_sent: int = 0

    def sent(self, samples: int) -> None:
        self.samples_sent += samples


class LiveSpeech:
    def __init__(self, synthesizer: Synthesizer, plan: SpeechPlan, sampling: Sampling, normalize: bool):
        """`plan`: an open plan (`Synthesizer.live_plan`)."""
        self.synthesizer, self.plan, self.sampling, self.normalize = synthesizer, plan, sampling, normalize

    def start(self, text: str) -> Segment | None:
        """Queues a segment (it generates as soon as the engine takes it); None when the text has nothing
        to say once normalised. Raises what the engine refuses (`QueueFull` for a first segment when the
        server is full, `InvalidRequest` for a prompt over the limit), leaving the plan as it was."""
        try:
            spoken = spoken_text(text, self.normalize)
        except InvalidRequest:
            return None
        plan = self.plan
        plan.chunks.append(spoken)
        plan.deadline = time.monotonic() + self.synthesizer.settings.request_timeout_s
        try:
            handle = self.synthesizer.submit_chunk(plan, len(plan.chunks) - 1, self.sampling)
        except Exception:
            plan.chunks.pop()
            raise
        return Segment(len(plan.chunks) - 1, spoken, handle, ChunkAudio(self.synthesizer, handle))

    def generated(self, segment: Segment) -> GenerationResult:
        """Its generation has ended (its frames are all in): its audio joins the context. Raises if it failed
        (its text then leaves the plan)."""
        result = segment.handle.result(timeout=0)
        try:
            self.synthesizer.finish_chunk(self.plan, result)
        except Exception:
            del self.plan.chunks[segment.index:]
            raise
        return result

    async def stop(self, segment: Segment) -> GenerationResult:
        """Barge-in: stops the segment and keeps in the context exactly its audio that was sent (none: the
        segment leaves the conversation). Stop a later segment (queued ahead) before an earlier one."""
        segment.handle.cancel()
        result = await segment.handle.wait()
        if result.context is not None and not result.context.released:  # the newest context of the conversation
            self.plan.context = result.context
        frames = segment.samples_sent // self.synthesizer.codec.samples_per_frame
        plan, index = self.plan, segment.index
        del plan.spoken[index:]
        if frames:
            codes = undo_delay_pattern(result.frames)[:, :frames]
            plan.spoken.append((segment.text, codes))
            del plan.chunks[index + 1:]
        else:
            del plan.chunks[index:]
        return result

    def abandon(self, segment: Segment) -> None:
        """The client left: the segment stops, nothing is kept."""
        self.synthesizer.abandon(segment.handle)

    def close(self) -> None:
        """The conversation is over: its context goes back to the engine."""
        self.synthesizer.end(self.plan)
