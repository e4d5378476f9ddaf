"""The codec wrapper's caches."""

from __future__ import annotations

from higgs_runtime.codec import ClipCodes


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
