"""The random presets: small, randomly initialised Higgs Audio v2 models with the real architecture.

`tiny-random` (2 layers x 64) is for tests; `small-random` (4 layers x 512, 128-wide heads) is big
enough for the model to dominate a step, so server-level benchmarks use it. Both keep everything the
service depends on real (special tokens and their ids, 24 kHz audio at 25 frames/s, 8 codebooks of
1024 codes plus stream begin/end), and shrink only the widths and depths. They are built from fixed
seeds, saved like a real checkpoint and loaded back through the same `from_pretrained` code. They
produce noise, not speech.

`full-random` is the generation model at its real size (5.4 B parameters, the checkpoint's shape),
for measuring a GPU without downloading weights: built directly on the device in its dtype (on a CPU
its initialisation takes minutes) by every process that loads it, never saved. Its text tokenizer
and audio tokenizer are tiny-random's (the same vocabulary and special tokens).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

# Bump when anything below changes, so old caches are rebuilt instead of reused.
PRESET_VERSION = "4"
SEED = 1234

# Llama 3's 256 special tokens with the names Higgs Audio v2 gives some of them.
_HIGGS_SPECIAL_TOKENS = {
    128000: "<|begin_of_text|>",
    128001: "<|end_of_text|>",
    128006: "<|start_header_id|>",
    128007: "<|end_header_id|>",
    128008: "<|eom_id|>",
    128009: "<|eot_id|>",
    128010: "<|python_tag|>",
    128011: "<|audio_bos|>",
    128012: "<|audio_eos|>",
    128013: "<|audio_out_bos|>",
    128015: "<|AUDIO|>",
    128016: "<|AUDIO_OUT|>",
    128018: "<|scene_desc_start|>",
    128019: "<|scene_desc_end|>",
    128022: "<SE>",
    128023: "</SE>",
    128024: "<SE_s>",
    128025: "</SE_s>",
    128026: "<SE_e>",
    128027: "</SE_e>",
}
FIRST_SPECIAL_ID = 128000
VOCAB_SIZE = 128256

# A small fixed corpus so the byte-level BPE learns a few real merges (English, Korean, Chinese).
_CORPUS = [
    "Generate audio following instruction.",
    "Audio is recorded from a quiet room.",
    "You are an AI assistant designed to convert text into speech.",
    "Twas the night before my birthday. Hooray! It's almost here!",
    "The device would work during the day as well, if you took steps to block direct sunlight.",
    "Maintaining your ability to learn translates into increased marketability.",
    "Hello, world! How are you today? I'm well, thanks for asking!",
    "안녕하세요, 이것은 음성으로 변환할 샘플 텍스트입니다. 조용한 방에서 녹음된 오디오입니다.",
    "对，这就是我，万人敬仰的太乙真人，虽然有点婴儿肥，但也掩不住我逼人的帅气。",
    "[SPEAKER0] Hi there. [SPEAKER1] Hello again.",
]


def _reserved_name(token_id: int) -> str:
    # Llama 3 numbers its reserved tokens skipping the named ones; 128014 stays
    # `<|reserved_special_token_6|>`, which Higgs uses as the audio delay token.
    if token_id < 128004:
        return f"<|reserved_special_token_{token_id - 128002}|>"
    if token_id == 128004:
        return "<|finetune_right_pad_id|>"
    if token_id == 128005:
        return "<|reserved_special_token_2|>"
    return f"<|reserved_special_token_{token_id - 128008}|>"


def special_tokens() -> list[str]:
    return [
        _HIGGS_SPECIAL_TOKENS.get(token_id) or _reserved_name(token_id)
        for token_id in range(FIRST_SPECIAL_ID, VOCAB_SIZE)
    ]


def build_text_tokenizer(directory: Path) -> None:
    """Byte-level BPE with Llama 3's vocabulary size and the real special tokens at their real ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers import AddedToken

    trainer = trainers.BpeTrainer(
        vocab_size=600,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    learner.train_from_iterator(_CORPUS, trainer=trainer)
    learned = json.loads(learner.to_str())["model"]

    vocab = dict(learned["vocab"])
    # Unreachable filler entries pad the ordinary vocabulary to Llama 3's 128000 tokens.
    for index in range(len(vocab), FIRST_SPECIAL_ID):
        vocab[f"<|tiny_unused_{index}|>"] = index
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]

    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens()])
    assert tokenizer.get_vocab_size() == VOCAB_SIZE
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "pad_token": "<|end_of_text|>",
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
    }, indent=1))


def model_config(hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2):
    from transformers import HiggsAudioV2Config

    return HiggsAudioV2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=8192,
        num_codebooks=8,
        codebook_size=1026,  # 1024 codes + stream begin + stream end, as in the real checkpoint
    )


def audio_tokenizer_config():
    from transformers import HiggsAudioV2TokenizerConfig

    return HiggsAudioV2TokenizerConfig(
        target_bandwidths=[0.5, 1, 1.5, 2],
        sample_rate=24000,
        codebook_size=1024,
        codebook_dim=8,
        acoustic_model_config={
            "encoder_hidden_size": 4,
            "downsampling_ratios": [8, 5, 4, 2, 3],
            "decoder_hidden_size": 32,
            "upsampling_ratios": [8, 5, 4, 2, 3],
            "hidden_size": 16,
        },
        semantic_model_config={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "conv_dim": [16] * 7,
            "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 4,
        },
    )


PRESET_SIZES = {"tiny-random": {}, "small-random": {"hidden_size": 512, "num_layers": 4}}
FULL_SIZE_PRESET = "full-random"


@dataclass(frozen=True)
class TinyRandomPaths:
    model: Path
    audio_tokenizer: Path


def _build_into(directory: Path, hidden_size: int, num_layers: int) -> None:
    from transformers import GenerationConfig, HiggsAudioV2ForConditionalGeneration, HiggsAudioV2TokenizerModel

    model_dir, codec_dir = directory / "model", directory / "audio_tokenizer"
    model_dir.mkdir(parents=True)
    codec_dir.mkdir(parents=True)
    torch.manual_seed(SEED)
    model = HiggsAudioV2ForConditionalGeneration(model_config(hidden_size, num_layers)).eval()
    model.generation_config = GenerationConfig(eos_token_id=128009, pad_token_id=128001)
    model.save_pretrained(model_dir)
    build_text_tokenizer(model_dir)
    torch.manual_seed(SEED + 1)
    codec = HiggsAudioV2TokenizerModel(audio_tokenizer_config()).eval()
    # The library starts codebooks at zero (they are learned); random ones give varied codes and audible noise.
    with torch.no_grad():
        for quantizer in codec.quantizer.quantizers:
            quantizer.codebook.embed.normal_()
            quantizer.codebook.embed_avg.copy_(quantizer.codebook.embed)
    codec.save_pretrained(codec_dir)


def ensure_built(cache_dir: Path, name: str = "tiny-random", hidden_size: int = 64, num_layers: int = 2) -> TinyRandomPaths:
    """Build the preset once into `cache_dir` (atomically) and return where it lives."""
    target = Path(cache_dir) / f"{name}-v{PRESET_VERSION}"
    if not (target / "model" / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            _build_into(staging, hidden_size, num_layers)
            try:
                os.rename(staging, target)
            except OSError:
                if not (target / "model" / "config.json").exists():  # not a concurrent builder winning
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return TinyRandomPaths(model=target / "model", audio_tokenizer=target / "audio_tokenizer")


def ensure_preset(cache_dir: Path, name: str) -> TinyRandomPaths:
    """The preset's saved files; for `full-random`, tiny-random's (its tokenizers)."""
    if name == FULL_SIZE_PRESET:
        name = "tiny-random"
    return ensure_built(cache_dir, name=name, **PRESET_SIZES[name])


def full_size_model(device: torch.device, dtype: torch.dtype):
    """The generation model at its real size with random weights, built on `device` in `dtype`."""
    from transformers import GenerationConfig, HiggsAudioV2Config, HiggsAudioV2ForConditionalGeneration

    # The library's defaults are the checkpoint's shape: 28 layers x 3072, 24 query and 8 KV heads of
    # 128, FFNs of 8192; the codebooks hold 1024 codes plus stream begin and end, as in the checkpoint.
    config = HiggsAudioV2Config(vocab_size=VOCAB_SIZE, codebook_size=1026, max_position_embeddings=8192)
    torch.manual_seed(SEED)
    with torch.device(device):
        model = HiggsAudioV2ForConditionalGeneration._from_config(config, dtype=dtype).eval()
    model.generation_config = GenerationConfig(eos_token_id=128009, pad_token_id=128001)
    return model
