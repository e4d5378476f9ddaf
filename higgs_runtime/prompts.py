"""Builds the model's conversation for each mode and turns it into token ids and audio frames.

The layout follows the checkpoint's chat template (`shared/docs/higgs-audio-v2.md` section 3);
`render` reproduces every string of `shared/docs/prompt-vectors.json` exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from .engine.delay_pattern import add_delay_pattern

SYSTEM_TTS = "Generate audio following instruction."
SYSTEM_MULTI_SPEAKER = "\n".join([
    "You are an AI assistant designed to convert text into speech.",
    "If the user's message includes a [SPEAKER*] tag, do not read out the tag and generate speech for the "
    "following text, using the specified voice.",
    "If no speaker tag is present, select a suitable voice on your own.",
])
DEFAULT_VOICED_SCENE = "Audio is recorded from a quiet room."
# The user turn before a reference clip whose transcript is unknown (a weaker but working clone).
UNKNOWN_TRANSCRIPT = "Please listen to this voice."

AUDIO_OUT = "<|AUDIO_OUT|>"
AUDIO_SPAN = "<|audio_out_bos|>" + AUDIO_OUT + "<|audio_eos|>"
DELAY_TOKEN = "<|reserved_special_token_6|>"
SPEAKER_TAG = re.compile(r"\[SPEAKER(\d+)\]")


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


AUDIO_ITEM = {"type": "audio"}


def _message(role: str, *items: dict) -> dict:
    return {"role": role, "content": list(items)}


# --- conversations per mode -------------------------------------------------------------------

def plain_messages(text: str, scene_prompt: str | None) -> list[dict]:
    messages = [_message("system", _text(SYSTEM_TTS))]
    if scene_prompt:
        messages.append(_message("scene", _text(scene_prompt)))
    messages.append(_message("user", _text(text)))
    return messages


def clone_messages(text: str, reference_transcript: str | None, scene_prompt: str | None) -> list[dict]:
    messages = plain_messages(text, scene_prompt)
    reference_turns = [
        _message("user", _text(reference_transcript or UNKNOWN_TRANSCRIPT)),
        _message("assistant", AUDIO_ITEM),
    ]
    return messages[:-1] + reference_turns + messages[-1:]


def with_history(messages: list[dict], spoken_texts: list[str]) -> list[dict]:
    """Inserts earlier chunks of a long text, each as a user turn and its generated audio as the
    assistant's answer, before the final user turn (their clips follow the conversation's own)."""
    history = [turn for text in spoken_texts for turn in (_message("user", _text(text)), _message("assistant", AUDIO_ITEM))]
    return messages[:-1] + history + messages[-1:]


def speaker_count(text: str) -> int:
    """Number of speakers a tagged dialogue needs: one past the highest `[SPEAKERi]` index."""
    indices = [int(match) for match in SPEAKER_TAG.findall(text)]
    return max(indices) + 1 if indices else 0


def multi_speaker_messages(text: str, scene_prompt: str | None, voice_count: int) -> list[dict]:
    """Without voices the scene describes each speaker; with voices it carries one clip per speaker."""
    if voice_count:
        scene = [_text(scene_prompt or DEFAULT_VOICED_SCENE)]
        for index in range(voice_count):
            scene += [_text(f"SPEAKER{index}:"), AUDIO_ITEM]
        return [_message("system", _text(SYSTEM_TTS)), _message("scene", *scene), _message("user", _text(text))]
    scene = [_text(scene_prompt)] if scene_prompt else []
    scene += [_text(f"SPEAKER{i}: {'feminine' if i % 2 == 0 else 'masculine'}") for i in range(speaker_count(text))]
    messages = [_message("system", _text(SYSTEM_MULTI_SPEAKER))]
    if scene:
        messages.append(_message("scene", *scene))
    return messages + [_message("user", _text(text))]


# --- rendering ----------------------------------------------------------------------------------

def _render_item(item: dict) -> str:
    return AUDIO_SPAN if item["type"] == "audio" else item["text"].strip()


def _render_scene(items: list[dict]) -> str:
    first, rest = items[0], items[1:]
    body = _render_item(first)
    if rest:
        lines: list[str] = []
        for item in rest:
            if item["type"] == "audio" and lines:
                lines[-1] += " " + AUDIO_SPAN  # a clip follows its speaker label on the same line
            else:
                lines.append(_render_item(item))
        body += "\n\n" + "\n".join(lines)
    return "\n\n<|scene_desc_start|>\n" + body + "\n<|scene_desc_end|>"


def _turn(role: str, body: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n{body}<|eot_id|>"


def render(messages: list[dict]) -> str:
    """The prompt text, with one `<|AUDIO_OUT|>` placeholder per audio item."""
    system, rest = messages[0], messages[1:]
    if system["role"] != "system":
        raise ValueError("a conversation starts with its system message")
    system_body = "".join(_render_item(item) for item in system["content"])
    if rest and rest[0]["role"] == "scene":
        system_body += _render_scene(rest[0]["content"])
        rest = rest[1:]
    parts = ["<|begin_of_text|>", _turn("system", system_body)]
    parts += [_turn(m["role"], "".join(_render_item(item) for item in m["content"])) for m in rest]
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n<|audio_out_bos|>")
    return "".join(parts)


def count_audio_items(messages: list[dict]) -> int:
    return sum(item["type"] == "audio" for message in messages for item in message["content"])


# --- tokenisation -------------------------------------------------------------------------------

@dataclass
class Prompt:
    """What the engine prefills: token ids, and the delay-patterned frames of every audio placeholder."""

    input_ids: list[int]
    audio_frames: np.ndarray = field(default_factory=lambda: np.zeros((0, 8), dtype=np.int64))

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)


def tokenize(messages: list[dict], reference_codes: list[np.ndarray], tokenizer, config) -> Prompt:
    """`reference_codes[i]` (codebooks x frames) fills the i-th audio item, in order of appearance."""
    if len(reference_codes) != count_audio_items(messages):
        raise ValueError(f"{count_audio_items(messages)} audio items but {len(reference_codes)} clips")
    ids = tokenizer.encode(render(messages), add_special_tokens=False)
    audio_token_id = tokenizer.convert_tokens_to_ids(AUDIO_OUT)
    delay_token_id = tokenizer.convert_tokens_to_ids(DELAY_TOKEN)
    num_delayed = config.num_codebooks - 1
    frames = [add_delay_pattern(codes, config.audio_stream_bos_id, config.audio_stream_eos_id) for codes in reference_codes]
    expanded: list[int] = []
    clips = iter(frames)
    for token in ids:
        if token == audio_token_id:
            length = len(next(clips))
            expanded += [audio_token_id] * (length - num_delayed) + [delay_token_id] * num_delayed
        else:
            expanded.append(token)
    audio = np.concatenate(frames) if frames else np.zeros((0, config.num_codebooks), dtype=np.int64)
    return Prompt(expanded, audio)
