"""Rewrites text to speak into the form the checkpoint was trained on (`shared/docs/higgs-audio-v2.md`
section 3): sound-event tags, ASCII punctuation, no parentheses, spelled-out degrees, tidy whitespace
and a closing full stop.

A sound-event tag written here must reach the model as its single special token (`<SE>` ...), while
the same characters typed by a user must stay plain text. So the tags live in the text as marks:
one private-use character per tag, which `prompts.tokenize` turns into the token (`SOUND_EVENT_TOKENS`)
and which no user field can carry (`inputs` removes them from every text field with `without_marks`).
Everything else is ordinary text, so chunking and prompt building work on plain strings.
"""

from __future__ import annotations

import re

# The tags prompts.SPEAKER_TAG reads; repeated here so that this module and text_chunks need only the
# standard library.
SPEAKER_TAG = re.compile(r"\[SPEAKER\d+\]")
_TAGS = ("<SE>", "</SE>", "<SE_s>", "</SE_s>", "<SE_e>", "</SE_e>")
# Supplementary Private Use Area-B: no script, font or keyboard produces these code points.
_MARK = {tag: chr(0x10FF00 + index) for index, tag in enumerate(_TAGS)}
SOUND_EVENT_TOKENS: dict[str, str] = {mark: tag for tag, mark in _MARK.items()}
_MARKS = "".join(SOUND_EVENT_TOKENS)
_OPENING_MARKS = _MARK["<SE>"] + _MARK["<SE_s>"] + _MARK["<SE_e>"]
_CLOSING_MARKS = _MARK["</SE>"] + _MARK["</SE_s>"] + _MARK["</SE_e>"]
SOUND_EVENT = re.compile(f"[{_OPENING_MARKS}][^{_MARKS}]*[{_CLOSING_MARKS}]")
_NO_MARKS = dict.fromkeys(map(ord, _MARKS))


def _event(kind: str, label: str) -> str:
    return f"{_MARK[f'<{kind}>']}[{label}]{_MARK[f'</{kind}>']}"


# What users write (in brackets, any case) -> the event as the checkpoint saw it.
SOUND_EVENTS = {
    "laugh": _event("SE", "Laughter"),
    "applause": _event("SE", "Applause"),
    "cheering": _event("SE", "Cheering"),
    "cough": _event("SE", "Cough"),
    "music": _event("SE", "Music"),
    "music start": _event("SE_s", "Music"),
    "music end": _event("SE_e", "Music"),
    "humming start": _event("SE_s", "Humming"),
    "humming end": _event("SE_e", "Humming"),
    "sing start": _event("SE_s", "Singing"),
    "sing end": _event("SE_e", "Singing"),
}
# A bracketed word right after an opening mark is the label of a tag already written: left alone, so
# normalising twice changes nothing.
_EVENT_NAMES = "|".join(name.replace(" ", r"\s+") for name in SOUND_EVENTS)
_BRACKETED_EVENT = re.compile(rf"(?<![{_OPENING_MARKS}])\[\s*({_EVENT_NAMES})\s*\]", re.IGNORECASE)

_TO_ASCII = str.maketrans({
    "，": ", ", "。": ".", "：": ":", "；": ";", "？": "?", "！": "!", "（": "(", "）": ")", "【": "[", "】": "]",
    "《": "<", "》": ">", "“": '"', "”": '"', "‘": "'", "’": "'", "「": '"', "」": '"', "『": '"', "』": '"',
    "、": ",", "—": "-", "…": "...", "·": ".",
})
_PARENTHESES = str.maketrans("()", "  ")
_DEGREES = {"°F": " degrees Fahrenheit", "°C": " degrees Celsius"}
# No-break spaces are kept: they hold "10 km" together when long text is cut into chunks.
_SPACES = re.compile(r"[^\S\u00a0\u2007\u202f]+")
# Endings that need no full stop; the two closing marks are those of a whole event and of a span's end.
_FINAL = ('.', '!', '?', ',', ';', '"', "'", _MARK["</SE>"], _MARK["</SE_e>"])


def normalize(text: str) -> str:
    """The text as the checkpoint expects it. Speaker tags (`[SPEAKER0]` ...) are kept; each turn
    starts a line and gets its own clean-up. Unknown bracketed words pass through; the result is ""
    when nothing is left to say."""
    text = text.translate(_TO_ASCII).translate(_PARENTHESES)
    for symbol, words in _DEGREES.items():
        text = text.replace(symbol, words)
    text = _BRACKETED_EVENT.sub(lambda match: SOUND_EVENTS[" ".join(match.group(1).lower().split())], text)
    turn_starts = [match.start() for match in SPEAKER_TAG.finditer(text)]
    bounds = [0, *turn_starts, len(text)]
    turns = [_turn(text[start:end]) for start, end in zip(bounds, bounds[1:])]
    return "\n".join(turn for turn in turns if turn)


def _turn(text: str) -> str:
    tag = SPEAKER_TAG.match(text)
    prefix, body = (tag.group(), text[tag.end():]) if tag else ("", text)
    lines = (_SPACES.sub(" ", line).strip() for line in body.splitlines())
    body = "\n".join(line for line in lines if line)
    if body and not body.endswith(_FINAL):
        body += "."
    return f"{prefix} {body}".strip()


def without_marks(text: str) -> str:
    """The text with no sound-event marks: what any user field is reduced to, so that only `normalize`
    writes them."""
    return text.translate(_NO_MARKS)


def without_sound_events(text: str) -> str:
    """The words to be said: the text without its sound-event tags."""
    return SOUND_EVENT.sub("", text)
