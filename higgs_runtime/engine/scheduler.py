"""Continuous batching: one thread owns the model; at every decoding step it admits waiting
requests into free slots, prefills about `prefill_chunk_tokens` prompt tokens (so arrivals never
stall running streams for long), decodes one frame for every running request, and finishes requests
the moment they end, while the others go on.

Prefill rounds are paced (`prefill_pacing.PrefillPacer`): a round waits while it would make a running
stream's latest chunk of frames take longer than the audio it carries. A follow-up (the next text
chunk of a request already streaming) goes ahead of new arrivals in the queue and in prefill, and is
never paced: its own listener is waiting for it.

Admission is first come, first served and bounded twice: by free slots (rows of the batch) and by
KV blocks (a request is admitted only when the blocks it could ever need can be reserved, so it
never fails half-way; until then it waits in the queue). A prompt that starts like an earlier one
(the same voice) reuses that prompt's cached KV blocks and prefills only the rest.

Prompts are always prefilled in the same chunks, [0, C), [C, 2C), ... with C = prefill_chunk_tokens,
and reuse cached blocks only up to a chunk boundary: a request computes exactly what it would have
computed without the cache or its neighbours, so the same seed gives the same audio.

A request may keep its KV as a context when it ends (`contexts`), and the next turn of its
conversation continues it: it adopts the context's blocks as far as its prompt agrees with them and
prefills only the rest (from wherever that is, not a chunk boundary).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..device_threads import prepare_engine_thread
from .batched_model import BatchedModel
from .contexts import Context, Sequence
from .decode_graphs import GraphStatus
from .decode_step import DecodeStep
from .paged_attention import BLOCK_SIZE, blocks_for
from .prefill_pacing import FrameTimes, PrefillPacer
from .prefix_cache import block_hashes
from .requests import GenerationRequest, QueueFull, RequestHandle, RequestTooLarge
from .sampling import RepetitionAware, SlotSampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineLoad:
    queue_depth: int
    running: int
    kv_blocks_used: int
    kv_blocks_total: int
    prefix_cached_blocks: int
    prefix_hit_blocks: int  # since start
    prefill_deferred_steps: int  # since start: steps in which pacing held new arrivals' prefill back
    kept_contexts: int  # conversations' contexts waiting for their next turn
    decode_graphs: int  # CUDA graphs captured at start-up (0: eager steps)
    graph_capture_failures: int  # failed capture attempts at start-up


@dataclass(eq=False)  # identity: two running requests are never "equal"
class _Running:
    handle: RequestHandle
    slot: int
    cached_tokens: int  # positions in the KV cache
    frame_times: FrameTimes  # when its latest frames reached the host
    prefix_looked_up: bool = False
    audio_ending: bool = False  # a codebook has emitted stream-end
    continued: bool = False  # started from a kept context
    next_frame: np.ndarray | None = None  # the frame the next decoding step feeds
    fed: list = field(default_factory=list)  # frames fed so far, one per position after the prompt


class Scheduler:
    def __init__(self, model, max_batch_size: int, max_queue_size: int, max_seq_len: int,
                 kv_cache_tokens: int | None = None, ras: RepetitionAware = RepetitionAware(),
                 cuda_graphs: bool = True, prefill_chunk_tokens: int = 128, prefix_cache_tokens: int | None = None,
                 prefill_pacer: PrefillPacer | None = None, on_load_change=None, context_idle_s: float = 300.0,
                 kernels=None, graphs=None):
        """`kv_cache_tokens` is the KV budget shared by all requests (default: max_batch_size x max_seq_len);
        `prefix_cache_tokens` bounds idle cached prompt prefixes (default: half the budget); without a
        `prefill_pacer` prefill is not paced; a kept context idle for `context_idle_s` is released.
        `kernels` and `graphs`: the decode step's kernels (`step_kernels`) and graph capture
        (`decode_graphs`), by default those of the model's device."""
        self.batched = BatchedModel(model, max_batch_size, max_seq_len, kv_cache_tokens or max_batch_size * max_seq_len,
                                    prefix_cache_tokens, kernels)
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.pacer = prefill_pacer or PrefillPacer(window_frames=0, frames_per_second=1)
        self.config = model.config
        self.device = self.batched.device
        self.sampler = SlotSampler(max_batch_size, self.config.num_codebooks, self.config.codebook_size,
                                   self.config.audio_stream_bos_id, self.config.audio_stream_eos_id, ras, self.device,
                                   uniforms=self.batched.kernels.uniforms)
        self.step = DecodeStep(self.batched, self.sampler, cuda_graphs, graphs)
        self.max_batch_size, self.max_queue_size, self.max_seq_len = max_batch_size, max_queue_size, max_seq_len
        self._waiting: collections.deque[RequestHandle] = collections.deque()
        self._prefilling: collections.deque[_Running] = collections.deque()  # admitted, prompt not yet all in cache
        self._running: list[_Running] = []  # decoding
        self._free_slots = list(range(max_batch_size))
        self.context_idle_s = context_idle_s
        self._idle_contexts: collections.OrderedDict[Context, None] = collections.OrderedDict()  # oldest first
        self._releasing: list[Context] = []  # released by their owners, for the engine thread to free
        # The running rows' slots (padded), their top-k width and the attention's host-built batch:
        # rebuilt when they change.
        self._batch_slots: torch.Tensor | None = None
        self._top_k = 1
        self._attention_batch = None
        self._attention_stale = True
        self._wakeup = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="engine-scheduler", daemon=True)
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        # Called with an EngineLoad whenever it changes.
        self._on_load_change = on_load_change
        self._last_load: EngineLoad | None = None

    # --- public, any thread ---
    def start(self) -> None:
        """Starts the engine thread and returns once it can serve: on CUDA, once every decode graph is
        captured. Raises what kept it from starting (e.g. `GraphCaptureFailed`)."""
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    def stop(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify_all()
        self._thread.join(timeout=30)

    def submit(self, request: GenerationRequest, follow_up: bool = False) -> RequestHandle:
        """Queues a request. Up to the free slots plus `max_queue_size` wait at once; beyond that a new
        request gets `QueueFull`. A `follow_up` (the next text chunk of a request already admitted) is
        never refused and goes ahead of new arrivals, so an accepted request never fails half-way.
        A request that could never fit the cache gets `RequestTooLarge` at once."""
        if request.prompt.num_tokens >= self.max_seq_len:
            raise RequestTooLarge(f"the prompt is {request.prompt.num_tokens} tokens long; the engine's limit per "
                                  f"request is {self.max_seq_len} tokens (prompt and audio together)")
        prompt, audio_ids = request.prompt, self.batched.audio_token_ids
        handle = RequestHandle(request, block_hashes(prompt.input_ids, prompt.audio_frames, audio_ids),
                               follow_up=follow_up)
        if request.context is not None or request.keep_context:
            handle.sequence = Sequence.of_prompt(prompt, audio_ids)
        with self._wakeup:
            if follow_up:
                self._waiting.appendleft(handle)
            else:
                if len(self._waiting) >= self.max_queue_size + len(self._free_slots):
                    raise QueueFull(f"the server is busy: {len(self._running)} requests are generating and "
                                    f"{len(self._waiting)} are queued (the limit); retry shortly")
                self._waiting.append(handle)
            self._wakeup.notify_all()
        return handle

    def release(self, context: Context) -> None:
        """The conversation is over: its kept context's blocks go back to the pool (at the next step)."""
        with self._wakeup:
            self._releasing.append(context)
            self._wakeup.notify_all()

    @property
    def running_count(self) -> int:
        return len(self._prefilling) + len(self._running)

    @property
    def graph_status(self) -> GraphStatus:
        return self.step.status

    @property
    def load(self) -> EngineLoad:
        cache, graphs = self.batched.cache, self.step.status
        return EngineLoad(len(self._waiting), len(self._prefilling) + len(self._running), cache.blocks_used,
                          cache.num_blocks, cache.prefixes.cached_blocks, cache.prefixes.hits, self.pacer.deferred_total,
                          len(self._idle_contexts), graphs.graphs, graphs.failed_attempts)

    # --- the scheduler thread ---
    def _report_load(self) -> None:
        load = self.load
        if self._on_load_change and load != self._last_load:
            self._last_load = load
            self._on_load_change(load)

    def _loop(self) -> None:
        prepare_engine_thread(self.device)
        with self.step.on_engine_stream():
            try:
                self.step.capture()
            except BaseException as exc:
                self._start_error = exc
                return
            finally:
                self._report_load()
                self._started.set()
            self._serve()

    def _serve(self) -> None:
        while True:
            with self._wakeup:
                self._report_load()
                self._wakeup.wait_for(lambda: self._stopping or self._waiting or self._prefilling or self._running
                                      or self._releasing, timeout=self._until_a_context_expires())
                if self._stopping:
                    break
                releasing, self._releasing = self._releasing, []
            try:
                self._free_contexts(releasing)
                self._admit()
                self._prefill_round()
                self._report_load()
                if self._running:
                    self._decode_step()
            except Exception as exc:  # a fault in one step fails the requests in it, not the engine
                log.exception("engine step failed")
                for running in [*self._prefilling, *self._running]:
                    self._finish(running, "error", f"internal engine error: {type(exc).__name__}")
        for running in [*self._prefilling, *self._running]:
            self._finish(running, "cancelled")
        for handle in self._waiting:
            handle.finish("cancelled")
        self._free_contexts(list(self._idle_contexts))

    # --- kept contexts (the scheduler thread) ---
    def _until_a_context_expires(self) -> float | None:
        if not self._idle_contexts:
            return None
        oldest = next(iter(self._idle_contexts))
        return max(0.0, oldest.last_used + self.context_idle_s - time.monotonic())

    def _free_contexts(self, released: list[Context]) -> None:
        """Frees the contexts their owners released and those idle past the limit."""
        now = time.monotonic()
        expired = [c for c in self._idle_contexts if now - c.last_used >= self.context_idle_s]
        for context in [*released, *expired]:
            if not context.released:
                self._idle_contexts.pop(context, None)
                self.batched.cache.drop(context.blocks)
                context.released = True

    def _evict_idle_context(self, spare: Context | None) -> bool:
        """Frees the least recently used idle context (but `spare`), to admit a waiting request."""
        victim = next((c for c in self._idle_contexts if c is not spare), None)
        if victim is not None:
            self._free_contexts([victim])
        return victim is not None

    def _reusable_context(self, handle: RequestHandle) -> tuple[Context | None, int]:
        """The kept context a request continues, and how many of its positions the request reuses: as
        far as its prompt agrees with the context, short of the prompt's last position (whose logits
        give the first frame)."""
        context = handle.request.context
        if context is None or context.released:
            return None, 0
        agreed = min(context.sequence.common_prefix(handle.sequence), handle.request.prompt.num_tokens - 1)
        return context, self.batched.cache.reusable(context.blocks, agreed)

    def _keep_context(self, running: _Running) -> Context:
        """The slot's KV becomes a kept context: the prompt's positions in the cache, then the frames fed."""
        cache, handle = self.batched.cache, running.handle
        prompt_part = min(running.cached_tokens, handle.request.prompt.num_tokens)
        sequence = handle.sequence.truncated(prompt_part).extended(running.fed)
        blocks = cache.detach(running.slot)
        kept = blocks_for(running.cached_tokens)
        cache.drop(blocks[kept:])  # taken ahead for a position never written
        context = Context(blocks[:kept], sequence)
        self._idle_contexts[context] = None
        return context
    def _admit(self) -> None:
        """First come, first served: the head of the queue waits for KV blocks rather than being overtaken.
        Queued requests whose client left or whose time ran out leave the queue at once."""
        cache = self.batched.cache
        with self._wakeup:
            for handle in [h for h in self._waiting if h.cancelled or h.expired]:
                self._waiting.remove(handle)
                handle.finish("cancelled" if handle.cancelled else "timeout")
        while self._free_slots:
            with self._wakeup:
                if not self._waiting:
                    return
                handle = self._waiting[0]
                request = handle.request
                slot = self._free_slots[-1]
                context, reused = self._reusable_context(handle)
                if not cache.reserve(slot, request.prompt.num_tokens + request.max_new_frames, blocks_for(reused)):
                    if self._evict_idle_context(spare=context):
                        continue
                    return
                self._waiting.popleft()
                self._free_slots.pop()
            running = _Running(handle, slot, cached_tokens=reused, frame_times=self.pacer.frame_times())
            if context is not None:
                self._idle_contexts.pop(context, None)
                context.released = True  # its blocks are the slot's now
                cache.adopt(slot, context.blocks, reused)
                running.continued = running.prefix_looked_up = True
            # Follow-ups lead the prefill queue, in their own order.
            leading = sum(1 for r in self._prefilling if r.handle.follow_up) if handle.follow_up else len(self._prefilling)
            self._prefilling.insert(leading, running)

    def _start_from_cached_prefix(self, running: _Running) -> None:
        """Looked up when the request's prefill begins, so it finds what requests ahead of it (the same
        voice arriving together) have just computed. Reused: whole chunks, short of the prompt's last
        position (whose logits give the first frame)."""
        names, chunk_blocks = running.handle.prefix_names, self.prefill_chunk_tokens // BLOCK_SIZE
        reusable = (running.handle.request.prompt.num_tokens - 1) // self.prefill_chunk_tokens * chunk_blocks
        cached = self.batched.cache.prefixes.match(names[:reusable])
        cached = cached[:len(cached) - len(cached) % chunk_blocks]
        self.batched.cache.share(running.slot, cached)
        running.cached_tokens = len(cached) * BLOCK_SIZE

    def _prefill_round(self) -> None:
        """Follow-ups at once; new arrivals when the pacer lets them."""
        if not self._prefilling:
            return
        if self._prefilling[0].handle.follow_up:
            self._prefill_chunks(follow_ups_only=True)
        elif self.pacer.may_prefill((r.frame_times for r in self._running), time.perf_counter()):
            self._prefill_chunks()

    def _prefill_chunks(self, follow_ups_only: bool = False) -> None:
        """Prefills whole chunks, follow-ups first, then oldest admission first, until about
        `prefill_chunk_tokens` tokens were computed (at least one chunk); a request whose prompt is all
        in the cache draws its first frame and joins the decoding batch."""
        budget, started = self.prefill_chunk_tokens, time.perf_counter()
        while self._prefilling:
            running = self._prefilling[0]
            handle, prompt = running.handle, running.handle.request.prompt
            if follow_ups_only and not handle.follow_up:
                break
            if handle.cancelled or handle.expired:
                self._finish(running, "cancelled" if handle.cancelled else "timeout")
                continue
            if not running.prefix_looked_up:
                self._start_from_cached_prefix(running)
                running.prefix_looked_up = True
            start = running.cached_tokens
            end = min(prompt.num_tokens, start + self.prefill_chunk_tokens)
            if end - start > budget:
                break
            self.batched.cache.ensure(running.slot, end)
            logits = self.batched.prefill(running.slot, prompt.input_ids, prompt.audio_frames, start, end)
            running.cached_tokens, budget = end, budget - (end - start)
            handle.prefill_tokens += end - start
            if end == prompt.num_tokens:
                self._prefilling.popleft()
                if not running.continued:  # a context's blocks hold decoded KV, not a prefill's: never shared
                    self.batched.cache.remember_prefix(running.slot, handle.prefix_names)
                self._start_decoding(running, logits, torch.from_numpy(prompt.audio_frames))
        if self.pacer.enabled and budget < self.prefill_chunk_tokens:
            if self.device.type == "cuda":  # the time of the work, not of its launch
                torch.cuda.synchronize(self.device)
            self.pacer.prefill_took(time.perf_counter() - started)

    def _start_decoding(self, running: _Running, logits: torch.Tensor, prompt_audio: torch.Tensor) -> None:
        request, slot = running.handle.request, running.slot
        self._running.append(running)
        self._batch_slots = None
        with torch.inference_mode():
            self.sampler.start(slot, request.sampling, prompt_audio)
            slots = torch.tensor([slot], device=self.device)
            frames = self.sampler.next_frames(slots, logits[None], self.step.top_k_width([request.sampling.top_k]))
            self.step.last_frames[slot] = frames[0]
        self._continue_or_finish(running, frames[0].cpu().numpy(), time.perf_counter())

    def _decode_step(self) -> None:
        started = time.perf_counter()
        batch = list(self._running)
        cache = self.batched.cache
        slots = [r.slot for r in batch] + [cache.scratch_slot] * (self.step.rows(len(batch)) - len(batch))
        if self._batch_slots is None:
            self._batch_slots = torch.tensor(slots, device=self.device)
            self._top_k = self.step.top_k_width([r.handle.request.sampling.top_k for r in batch])
            self._attention_stale = True
        grown = [cache.ensure(running.slot, running.cached_tokens + 1) for running in batch]
        if self._attention_stale or any(grown):
            lengths = [r.cached_tokens + 1 for r in batch] + [1] * (len(slots) - len(batch))
            self._attention_batch = self.batched.kernels.attention_batch(cache, slots, lengths)
            self._attention_stale = False
        frames = self.step(self._batch_slots, self._attention_batch, self._top_k)
        # The step's one device-to-host copy (a copy on CPU too: a replayed graph reuses its output).
        on_host = frames[:len(batch)].to("cpu", copy=True).numpy()
        arrived = time.perf_counter()
        self.pacer.decode_took(arrived - started)
        for running, host_frame in zip(batch, on_host):
            running.cached_tokens += 1
            running.fed.append(running.next_frame)
            self._continue_or_finish(running, host_frame, arrived)

    def _continue_or_finish(self, running: _Running, host_frame: np.ndarray, arrived: float) -> None:
        """`arrived`: when the frame reached the host."""
        handle, request = running.handle, running.handle.request
        handle.steps += 1
        running.next_frame = host_frame
        running.frame_times.append(arrived)
        ended = host_frame == self.config.audio_stream_eos_id
        running.audio_ending |= bool(ended.any())
        if ended.all():
            self._finish(running, "stop")
            return
        if handle.steps > 1:  # the first frame is the all-begin marker, not audio
            handle.push(host_frame)
        if handle.cancelled:
            self._finish(running, "cancelled")
        elif handle.expired:
            self._finish(running, "timeout")
        elif handle.steps >= request.max_new_frames or running.cached_tokens + 1 >= self.max_seq_len:
            self._finish(running, "length")
        elif handle.steps >= request.guard_frames and not running.audio_ending:
            self._finish(running, "guard")

    def _finish(self, running: _Running, reason: str, error: str | None = None) -> None:
        if running in self._running:
            self._running.remove(running)
            self._batch_slots = None
        else:
            self._prefilling.remove(running)
        handle = running.handle
        if handle.request.keep_context and reason != "error":
            handle.keep_context(lambda: self._keep_context(running))
        if handle.context is None:
            self.batched.cache.release(running.slot)
        self._free_slots.append(running.slot)
        handle.finish(reason, error)
