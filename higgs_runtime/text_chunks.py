"""Splits long text into chunks for long-form generation, cutting at the most natural boundary available.

The model voices one chunk at a time with the earlier chunks' audio as context, so a cut in the middle of a
sentence is audible. Boundaries are tried from strongest to weakest: paragraph breaks, sentence ends, clause
punctuation, whitespace, between CJK characters, and finally a hard cut inside an unbreakable run.
Every chunk is a stripped substring of the input, so joining the chunks gives back the text up to the
whitespace at the cuts (dialogue chunks additionally repeat the speaker tag of a turn that had to be split).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

from .text_normalize import SOUND_EVENT, SPEAKER_TAG

# Han, kana and CJK punctuation: scripts written without spaces, so punctuation there needs no space after it.
# Hangul is left out on purpose: Korean separates words with spaces like Latin text.
_CJK = r"\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CLOSERS = "\"'”’»)\\]}」』）】》〉〕"
_LATIN_FOLLOW = rf"(?=\s|$|[{_CJK}])"

PARAGRAPH_BREAK = re.compile(r"\n\s*\n\s*")
SENTENCE_END = re.compile(
    rf"(?:(?P<latin>[.!?…．]+)[{_CLOSERS}]*{_LATIN_FOLLOW}|[。！？｡]+[{_CLOSERS}]*)\s*"
)
CLAUSE_END = re.compile(rf"(?:[,;:][{_CLOSERS}]*{_LATIN_FOLLOW}|[—，、､；：][{_CLOSERS}]*)\s*")
# No-break spaces (U+00A0, U+2007, U+202F) keep "10 km" together.
WORD_GAP = re.compile(r"[^\S\u00a0\u2007\u202f]+")
CJK_CHARACTER = re.compile(rf"[{_CJK}]")

ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "inc", "ltd", "co", "corp",
    "fig", "approx", "dept",
})
_WORD_BEFORE_PERIOD = re.compile(r"[\w.]+$")
# Longer than any abbreviation; bounds the look-back so long texts with many periods stay linear.
_ABBREVIATION_LOOKBACK = 16
# Dotted letter groups ("e.g", "i.e", "U.S", "a.m") and single capital initials ("J"), but not the pronoun "I".
_DOTTED_OR_INITIAL = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]|[A-HJ-Z]")


def split_for_generation(text: str, max_chars: int) -> list[str]:
    """Chunks for generation: by speaker turns when the text has speaker tags, else by text boundaries."""
    if SPEAKER_TAG.search(text) and len(text.strip()) > max_chars:
        return split_dialogue(text, max_chars)
    return split_text(text, max_chars)


def split_text(text: str, max_chars: int = 300) -> list[str]:
    """Chunks of at most `max_chars` characters, in order, cut at the strongest boundary that fits."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    text = text.strip()
    return _split(text, max_chars, level=0) if text else []


def split_dialogue(text: str, max_chars: int = 300) -> list[str]:
    """Chunks of whole `[SPEAKERi]` turns packed up to `max_chars`, each starting with a speaker tag.

    A turn longer than `max_chars` is split with `split_text` and every piece carries that turn's tag.
    Text before the first tag has no speaker, so it becomes its own untagged chunk(s) rather than being
    voiced as part of the first speaker's turn.
    """
    text = text.strip()
    turn_starts = [match.start() for match in SPEAKER_TAG.finditer(text)]
    if not turn_starts:
        return split_text(text, max_chars)
    preamble = split_text(text[:turn_starts[0]], max_chars)
    turns = _slice(text, turn_starts[1:], start=turn_starts[0])
    return preamble + _pack(turns, max_chars, lambda turn: _split_turn(turn, max_chars))


def _split_turn(turn: str, max_chars: int) -> list[str]:
    tag = SPEAKER_TAG.match(turn).group()
    budget = max_chars - len(tag) - 1
    if budget < 1:
        raise ValueError(f"max_chars={max_chars} leaves no room for text after {tag}")
    return [f"{tag} {piece}" for piece in split_text(turn[len(tag):], budget)]


def sentence_ends(text: str) -> list[re.Match]:
    """The ends of the sentences in `text` (end punctuation, CJK included, with closing quotes and the
    whitespace after), abbreviations ("Mr.", "e.g.") left out."""
    return [match for match in SENTENCE_END.finditer(text) if not _ends_abbreviation(text, match)]


def _sentence_cuts(text: str) -> list[int]:
    return [match.end() for match in sentence_ends(text)]


def _ends_abbreviation(text: str, match: re.Match) -> bool:
    """Whether a single '.' closes an abbreviation ("Mr.", "e.g.") rather than a sentence."""
    if match.group("latin") != ".":
        return False
    word = _WORD_BEFORE_PERIOD.search(text, max(0, match.start() - _ABBREVIATION_LOOKBACK), match.start())
    if word is None:
        return False
    return word.group().lower() in ABBREVIATIONS or _DOTTED_OR_INITIAL.fullmatch(word.group()) is not None


def _cuts_after(pattern: re.Pattern) -> Callable[[str], list[int]]:
    return lambda text: [match.end() for match in pattern.finditer(text)]


# Strongest boundary first; `_split` falls through to the next level only for pieces that still do not fit.
LEVELS: tuple[Callable[[str], list[int]], ...] = (
    _cuts_after(PARAGRAPH_BREAK),
    _sentence_cuts,
    _cuts_after(CLAUSE_END),
    _cuts_after(WORD_GAP),
    _cuts_after(CJK_CHARACTER),
)


def _split(text: str, max_chars: int, level: int) -> list[str]:
    if len(text) <= max_chars:
        return [text]
    if level == len(LEVELS):
        return _hard_split(text, max_chars)
    pieces = _slice(text, LEVELS[level](text))
    if len(pieces) == 1:
        return _split(text, max_chars, level + 1)
    return _pack(pieces, max_chars, lambda piece: _split(piece, max_chars, level + 1))


def _slice(text: str, cuts: list[int], start: int = 0) -> list[str]:
    """The text from `start` cut at `cuts`; each piece keeps the separator and whitespace that end it."""
    bounds = [start, *cuts, len(text)]
    return [text[left:right] for left, right in zip(bounds, bounds[1:]) if left < right]


def _pack(pieces: list[str], max_chars: int, split_oversized: Callable[[str], list[str]]) -> list[str]:
    """Greedily joins consecutive pieces into chunks of at most `max_chars` characters once stripped.

    A piece too long on its own goes to `split_oversized`; its last part stays open so that the pieces after
    it can still join it, which avoids leaving a short tail such as a sentence's final clause on its own.
    """
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if len((current + piece).strip()) <= max_chars:
            current += piece
            continue
        chunks.append(current.strip())
        if len(piece.strip()) <= max_chars:
            current = piece
        else:
            *parts, tail = split_oversized(piece.strip())
            chunks.extend(parts)
            current = tail + piece[len(piece.rstrip()):]
    chunks.append(current.strip())
    return [chunk for chunk in chunks if chunk]


def _hard_split(text: str, max_chars: int) -> list[str]:
    """Fixed-size cuts through a run with no boundary, keeping combining marks with their base character.

    A base followed by more marks than fit in a chunk (text built to make thousands of tiny chunks) is
    cut in its marks instead: chunks stay `max_chars` long. A sound-event tag is never cut: the cut
    moves before it, or after it when it starts the chunk.
    """
    chunks = []
    start = 0
    while len(text) - start > max_chars:
        cut = start + max_chars
        base = cut
        while base > start and unicodedata.combining(text[base]):
            base -= 1
        if base > start:
            cut = base
        cut = _outside_sound_events(text, cut, start)
        chunks.append(text[start:cut])
        start = cut
    chunks.append(text[start:])
    # A run can still hold no-break spaces, which must not end up at a chunk's edge.
    return [chunk.strip() for chunk in chunks if chunk.strip()]


def _outside_sound_events(text: str, cut: int, start: int) -> int:
    for event in SOUND_EVENT.finditer(text, start):
        if event.start() >= cut:
            break
        if event.end() > cut:
            return event.start() if event.start() > start else event.end()
    return cut
