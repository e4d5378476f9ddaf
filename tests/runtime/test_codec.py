"""The codec wrapper: its caches, and its locks (decoding never waits for an encode)."""

from __future__ import annotations

import concurrent.futures
import threading

import numpy as np
import torch

from higgs_runtime.codec import ClipCodes, Codec


def test_one_off_reference_clips_are_encoded_once_by_content(tiny_model, reference_clips):
    codec = tiny_model.codec_wrapper
    calls = []

    class Counting:
        def encode(self, samples):
            calls.append(len(samples))
            return codec.encode(samples)

    clips = ClipCodes(Counting(), max_clips=1)
    first = clips.encode(reference_clips[0])
    again = clips.encode(reference_clips[0].copy())  # same content, another array
    assert again is first and len(calls) == 1 and not first.flags.writeable
    clips.encode(reference_clips[1])  # evicts the first (the bound is one clip)
    clips.encode(reference_clips[0])
    assert len(calls) == 3


def test_decoding_never_waits_for_an_encode(tiny_model, reference_clips):
    """A long reference clip being encoded must not hold up the streams' audio."""
    model = tiny_model.codec_wrapper.model
    encoding, release = threading.Event(), threading.Event()

    class SlowEncoder:
        config = model.config

        def encode(self, audio):
            encoding.set()
            release.wait(30)
            return model.encode(audio)

        def decode(self, codes):
            return model.decode(codes)

    codec = Codec(SlowEncoder(), torch.device("cpu"))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        encoded = pool.submit(codec.encode, reference_clips[0])
        assert encoding.wait(30)
        codes = np.random.default_rng(0).integers(0, 1024, (8, 30))
        assert len(codec.decode(codes)) == 30 * codec.samples_per_frame  # while the encode is held
        assert len(codec.decode_batch([codes, codes[:, :20]])[1]) == 20 * codec.samples_per_frame
        assert not encoded.done()
        release.set()
        assert encoded.result(30).shape[0] == 8
