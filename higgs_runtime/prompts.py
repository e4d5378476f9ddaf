"""Builds the model's conversation for each mode and turns it into token ids and audio frames.

The layout follows the checkpoint's chat template (`shared/docs/higgs-audio-v2.md` section 3);
`render` reproduces every string of `shared/docs/prompt-vectors.json` exactly.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

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


class ControlToken(str):
    """A special token written by the template. Only these become control tokens: user text is
    tokenized with special-token strings split into plain text."""


BEGIN_OF_TEXT = ControlToken("<|begin_of_text|>")
START_HEADER = ControlToken("<|start_header_id|>")
END_HEADER = ControlToken("<|end_header_id|>")
END_OF_TURN = ControlToken("<|eot_id|>")
AUDIO_OUT_BOS = ControlToken("<|audio_out_bos|>")
AUDIO_OUT = ControlToken("<|AUDIO_OUT|>")
AUDIO_EOS = ControlToken("<|audio_eos|>")
SCENE_START = ControlToken("<|scene_desc_start|>")
SCENE_END = ControlToken("<|scene_desc_end|>")
AUDIO_SPAN = (AUDIO_OUT_BOS, AUDIO_OUT, AUDIO_EOS)
DELAY_TOKEN = "<|reserved_special_token_6|>"
SPEAKER_TAG = re.compile(r"\[SPEAKER(\d+)\]")
# A speaker index with more digits than this is not parsed: it counts as more speakers than any server allows.
MAX_SPEAKER_INDEX_DIGITS = 6


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


AUDIO_ITEM = {"type": "audio"}


def _message(role: str, *items: dict) -> dict:
    return {"role": role, "content": list(items)}


# --- conversations per mode -------------------------------------------------------------------

def plain_messages(text: str, scene_prompt: str | None, voice_description: str | None = None) -> list[dict]:
    """A described voice joins the scene as `SPEAKER0: <description>`, the reference's voice-profile line."""
    messages = [_message("system", _text(SYSTEM_TTS))]
    scene = [_text(scene_prompt)] if scene_prompt else []
    scene += [_text(_described(0, voice_description))] if voice_description else []
    if scene:
        messages.append(_message("scene", *scene))
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
    indices = [int(digits) if len(digits) <= MAX_SPEAKER_INDEX_DIGITS else 10 ** MAX_SPEAKER_INDEX_DIGITS
               for digits in SPEAKER_TAG.findall(text)]
    return max(indices) + 1 if indices else 0


def _described(index: int, description: str) -> str:
    return f"SPEAKER{index}: {description}"


def multi_speaker_messages(text: str, scene_prompt: str | None, voices: list[str | None]) -> list[dict]:
    """`voices[i]` voices SPEAKERi: a description in words, or None for a reference clip (the clips
    fill the audio items in order). With any clip the scene carries each clip after its speaker's
    label and each description as its own line; with descriptions only, or no voices at all (then
    alternating feminine and masculine), the scene describes every speaker."""
    if None in voices:
        scene = [_text(scene_prompt or DEFAULT_VOICED_SCENE)]
        for index, description in enumerate(voices):
            scene += [_text(_described(index, description))] if description else [_text(f"SPEAKER{index}:"), AUDIO_ITEM]
        return [_message("system", _text(SYSTEM_TTS)), _message("scene", *scene), _message("user", _text(text))]
    descriptions = voices or ["feminine" if i % 2 == 0 else "masculine" for i in range(speaker_count(text))]
    scene = [_text(scene_prompt)] if scene_prompt else []
    scene += [_text(_described(index, description)) for index, description in enumerate(descriptions)]
    messages = [_message("system", _text(SYSTEM_MULTI_SPEAKER))]
    if scene:
        messages.append(_message("scene", *scene))
    return messages + [_message("user", _text(text))]


# --- rendering ----------------------------------------------------------------------------------
# A rendering is a list of parts: ControlTokens from the template, and plain strings (template text
# and user text alike). Joined, the parts are the prompt text of the golden vectors.

def _item(item: dict) -> list[str]:
    return list(AUDIO_SPAN) if item["type"] == "audio" else [item["text"].strip()]


def _items(items: list[dict]) -> list[str]:
    return [part for item in items for part in _item(item)]


def _scene(items: list[dict]) -> list[str]:
    body = _item(items[0])
    lines: list[list[str]] = []
    for item in items[1:]:
        if item["type"] == "audio" and lines:
            lines[-1] += [" ", *AUDIO_SPAN]  # a clip follows its speaker label on the same line
        else:
            lines.append(_item(item))
    if lines:
        body += ["\n\n", *lines[0]]
        for line in lines[1:]:
            body += ["\n", *line]
    return ["\n\n", SCENE_START, "\n", *body, "\n", SCENE_END]


def _turn(role: str, body: list[str]) -> list[str]:
    return [START_HEADER, role, END_HEADER, "\n\n", *body, END_OF_TURN]


def render_parts(messages: list[dict]) -> list[str]:
    """The prompt as parts, with one `<|AUDIO_OUT|>` placeholder per audio item."""
    system, rest = messages[0], messages[1:]
    if system["role"] != "system":
        raise ValueError("a conversation starts with its system message")
    system_body = _items(system["content"])
    if rest and rest[0]["role"] == "scene":
        system_body += _scene(rest[0]["content"])
        rest = rest[1:]
    parts = [BEGIN_OF_TEXT, *_turn("system", system_body)]
    for message in rest:
        parts += _turn(message["role"], _items(message["content"]))
    return parts + [START_HEADER, "assistant", END_HEADER, "\n\n", AUDIO_OUT_BOS]


def render(messages: list[dict]) -> str:
    """The prompt text, with one `<|AUDIO_OUT|>` placeholder per audio item."""
    return "".join(render_parts(messages))


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


class PromptTooLong(ValueError):
    def __init__(self, num_tokens: int, max_tokens: int):
        super().__init__(f"the prompt is {num_tokens} tokens long; at most {max_tokens} fit")
        self.num_tokens, self.max_tokens = num_tokens, max_tokens


def token_ids(parts: list[str], tokenizer, text_tokens: Mapping[str, str] = MappingProxyType({})) -> list[int]:
    """Ids of a rendering. Plain text between control tokens is tokenized as one run (as the
    tokenizer itself splits at special tokens, so normal text gets the usual ids) with every
    special-token string in it split into plain text. `text_tokens` maps strings that stand for a
    special token in text to that token: the marks `text_normalize` writes for sound-event tags,
    which no user field can carry."""
    ids: list[int] = []
    for is_control, group in itertools.groupby(parts, key=lambda part: isinstance(part, ControlToken)):
        if is_control:
            ids += tokenizer.convert_tokens_to_ids(list(group))
        else:
            ids += _plain_text_ids("".join(group), tokenizer, text_tokens)
    return ids


def _plain_text_ids(text: str, tokenizer, text_tokens: Mapping[str, str]) -> list[int]:
    pieces = re.split(f"({'|'.join(map(re.escape, sorted(text_tokens)))})", text) if text_tokens else [text]
    ids: list[int] = []
    for piece in pieces:
        if piece in text_tokens:
            ids.append(tokenizer.convert_tokens_to_ids(text_tokens[piece]))
        elif piece:
            # transformers applies this by setting a flag on the shared backend tokenizer; every
            # encode in the server passes it, so concurrent prompt builds agree on it.
            ids += tokenizer.encode(piece, add_special_tokens=False, split_special_tokens=True)
    return ids


def tokenize(messages: list[dict], reference_codes: list[np.ndarray], tokenizer, config,
             max_tokens: int | None = None, text_tokens: Mapping[str, str] = MappingProxyType({})) -> Prompt:
    """`reference_codes[i]` (codebooks x frames) fills the i-th audio item, in order of appearance.
    Raises `PromptTooLong` before the prompt is expanded when it would exceed `max_tokens`."""
    if len(reference_codes) != count_audio_items(messages):
        raise ValueError(f"{count_audio_items(messages)} audio items but {len(reference_codes)} clips")
    ids = token_ids(render_parts(messages), tokenizer, text_tokens)
    frames = [add_delay_pattern(codes, config.audio_stream_bos_id, config.audio_stream_eos_id) for codes in reference_codes]
    num_tokens = len(ids) - len(frames) + sum(len(clip) for clip in frames)
    if max_tokens is not None and num_tokens > max_tokens:
        raise PromptTooLong(num_tokens, max_tokens)
    audio_token_id = tokenizer.convert_tokens_to_ids(AUDIO_OUT)
    delay_token_id = tokenizer.convert_tokens_to_ids(DELAY_TOKEN)
    num_delayed = config.num_codebooks - 1
    expanded: list[int] = []
    clip_lengths = iter([len(clip) for clip in frames])
    for token in ids:
        if token == audio_token_id:  # only the template writes it, once per clip
            length = next(clip_lengths)
            expanded += [audio_token_id] * (length - num_delayed) + [delay_token_id] * num_delayed
        else:
            expanded.append(token)
    audio = np.concatenate(frames) if frames else np.zeros((0, config.num_codebooks), dtype=np.int64)
    return Prompt(expanded, audio)
