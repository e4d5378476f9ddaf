"""The offline presets: real shapes and ids, reproducible bytes, loaded through from_pretrained."""

from __future__ import annotations

import hashlib

import pytest

from higgs_runtime import loading
from higgs_runtime.config import Settings
from higgs_runtime.tiny_random import ensure_built


def digest_tree(root) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_built_twice_gives_identical_bytes(tmp_path):
    first = ensure_built(tmp_path / "a")
    second = ensure_built(tmp_path / "b")
    first_files, second_files = digest_tree(first.model.parent), digest_tree(second.model.parent)
    assert first_files == second_files
    assert {"model/config.json", "model/model.safetensors", "model/tokenizer.json",
            "audio_tokenizer/model.safetensors"} <= set(first_files)


def test_preset_has_the_real_audio_facts(tiny_model):
    codec_config = tiny_model.codec.config
    assert codec_config.sample_rate == 24000
    assert codec_config.frame_rate == 25 and codec_config.hop_length == 960
    assert codec_config.num_quantizers == 8 and codec_config.codebook_size == 1024
    config = tiny_model.config
    assert config.model_type == "higgs_audio_v2"
    assert config.num_codebooks == 8 and config.codebook_size == 1026
    assert (config.audio_stream_bos_id, config.audio_stream_eos_id) == (1024, 1025)
    assert config.vocab_size == 128256 and len(tiny_model.tokenizer) == 128256


def test_codec_round_trip_keeps_length(tiny_model, reference_clips):
    clip = reference_clips[0]
    codes = tiny_model.codec_wrapper.encode(clip)
    assert codes.shape == (8, len(clip) // 960)
    assert codes.min() >= 0 and codes.max() < 1024 and len(set(codes[0].tolist())) > 1
    audio = tiny_model.codec_wrapper.decode(codes)
    assert len(audio) == codes.shape[1] * 960


def test_small_random_preset_loads_through_the_same_path(model_cache):
    settings = Settings(model_path="small-random", audio_tokenizer_path="small-random", device="cpu",
                        cache_dir=model_cache)
    loaded = loading.load(settings)
    config = loaded.config
    assert (config.num_hidden_layers, config.hidden_size, config.head_dim) == (4, 512, 128)
    assert config.num_codebooks == 8 and config.codebook_size == 1026 and len(loaded.tokenizer) == 128256
    assert settings.is_random_preset and loaded.codec_id.startswith("small-random")
    with pytest.raises(ValueError, match="both"):
        loading.load(Settings(model_path="small-random", device="cpu", cache_dir=model_cache))

