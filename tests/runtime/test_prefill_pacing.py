"""Prefill pacing: a prefill round waits while it would stretch a running stream's latest chunk of
frames beyond the audio the chunk carries, never for ever, and never changes what is generated."""

from __future__ import annotations

import time

import numpy as np

from higgs_runtime.engine.prefill_pacing import PrefillPacer
from test_paged_engine import clone_prompt, plain_prompt, request, running_engine


def stream_with_frames(pacer: PrefillPacer, times: list[float]):
    frames = pacer.frame_times()
    frames.extend(times)
    return frames


def test_a_round_runs_only_while_every_streams_window_still_fits():
    pacer = PrefillPacer(window_frames=25, frames_per_second=25, share=0.9)  # 1 s of audio per window, 0.9 s budget
    pacer.decode_took(0.02)
    pacer.prefill_took(0.1)
    steady = stream_with_frames(pacer, [10.0 + 0.03 * frame for frame in range(40)])  # 1.2x realtime
    assert len(steady) == 25  # one window kept
    oldest = steady[0]
    assert pacer.may_prefill([steady], now=oldest + 0.75)  # 0.75 + 0.12 fits in 0.9
    assert not pacer.may_prefill([steady], now=oldest + 0.8)  # 0.92 would not
    young = stream_with_frames(pacer, [11.0])  # under a window: measured from its first frame
    assert pacer.may_prefill([young], now=11.7)
    assert not pacer.may_prefill([young, steady], now=oldest + 0.8)  # every stream must fit
    assert pacer.may_prefill([], now=0.0)  # nobody listening


def test_measured_costs_decide():
    pacer = PrefillPacer(window_frames=25, frames_per_second=25, share=0.9)
    stream = stream_with_frames(pacer, [0.0])
    assert pacer.may_prefill([stream], now=0.85)  # nothing measured yet
    pacer.prefill_took(0.2)
    assert not pacer.may_prefill([stream], now=0.85)
    for _ in range(20):
        pacer.prefill_took(0.01)  # the moving average follows cheaper rounds
    assert pacer.may_prefill([stream], now=0.85)


def test_deferral_is_bounded_so_arrivals_progress_when_decoding_is_behind_realtime():
    pacer = PrefillPacer(window_frames=25, frames_per_second=25, max_deferred_steps=3)
    behind = stream_with_frames(pacer, [0.0])
    answers = [pacer.may_prefill([behind], now=5.0) for _ in range(8)]
    assert answers == [False, False, False, True, False, False, False, True]
    assert pacer.deferred_total == 6


def test_pacing_off():
    pacer = PrefillPacer(window_frames=0, frames_per_second=25)
    assert pacer.may_prefill([stream_with_frames(pacer, [0.0])], now=100.0)


def test_a_paced_arrival_starts_later_with_the_same_audio(tiny_model, reference_clips):
    """A pacer whose budget no stream can meet: every prefill round waits the most steps allowed,
    while the running stream keeps decoding; the arrival's audio is what it is unpaced."""
    arrival_prompt = clone_prompt(tiny_model, reference_clips, seconds=10)
    chunks = -(-arrival_prompt.num_tokens // 64)
    results, deferred = {}, {}
    for deferral in (0, 3):
        pacer = PrefillPacer(window_frames=1, frames_per_second=1e9, max_deferred_steps=deferral)
        with running_engine(tiny_model.model, max_batch_size=2, max_queue_size=2, max_seq_len=2048,
                            prefill_chunk_tokens=64, prefill_pacer=pacer) as engine:
            stream = engine.submit(request(plain_prompt(tiny_model), 2000))
            while stream.steps < 5:
                time.sleep(0.002)
            steps_at_arrival = stream.steps
            arrival = engine.submit(request(arrival_prompt, 20, seed=5))
            while not arrival.steps:
                time.sleep(0.001)
            steps_during_prefill = stream.steps - steps_at_arrival
            stream.cancel()
            results[deferral] = (steps_during_prefill, arrival.result(60))
            deferred[deferral] = engine.load.prefill_deferred_steps
    assert chunks >= 4
    unpaced_steps, unpaced = results[0]
    paced_steps, paced = results[3]
    assert paced_steps >= 4 * (chunks - 1) > unpaced_steps  # three decode-only steps before each round
    assert deferred[0] == 0 and deferred[3] >= 3 * (chunks - 1)  # what /metrics shows
    assert paced.finish_reason == unpaced.finish_reason == "length"
    assert np.array_equal(paced.frames, unpaced.frames)


def test_a_follow_up_overtakes_waiting_arrivals_and_is_never_paced(tiny_model):
    """Its own listener is waiting for it. Here pacing holds every other prefill while a stream runs."""
    pacer = PrefillPacer(window_frames=1, frames_per_second=1e9, max_deferred_steps=10**9)
    prompt = plain_prompt(tiny_model)
    with running_engine(tiny_model.model, max_batch_size=3, max_queue_size=3, max_seq_len=2048,
                        prefill_pacer=pacer) as engine:
        stream = engine.submit(request(prompt, 2000))
        while stream.steps < 5:
            time.sleep(0.002)
        arrival = engine.submit(request(prompt, 10, seed=1))
        follow_up = engine.submit(request(prompt, 2000, seed=2), follow_up=True)
        while follow_up.steps < 5:
            time.sleep(0.002)
        assert arrival.steps == 0  # still held by the pacer
        stream.cancel()
        follow_up.cancel()
        assert arrival.result(60).finish_reason == "length"  # nothing left to protect: it runs
