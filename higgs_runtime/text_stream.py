"""Text that arrives piece by piece (an LLM's reply, token by token) cut into the pieces to speak: each
sentence as soon as it is complete, at a blank line, and a run longer than a generation chunk without
an end cut the long-form way (`text_chunks`).

A sentence is complete once something follows its end punctuation (CJK included) and closing quotes:
a space, or the next sentence. Until then it may still go on ("3." may become "3.5", "stop." may get
its closing quote). `flush` takes everything buffered, complete or not.
"""

from __future__ import annotations

from .text_chunks import PARAGRAPH_BREAK, sentence_ends, split_text

class SentenceBuffer:
    def __init__(self, max_chars: int):
        """`max_chars`: the longest piece (a generation chunk's characters)."""
        self.max_chars = max_chars
        self._text = ""

    @property
    def pending_chars(self) -> int:
        return len(self._text)

    def push(self, text: str) -> list[str]:
        """Adds text; returns the pieces now complete, in order."""
        self._text += text
        pieces, start = [], 0
        for end in self._ends():
            pieces += split_text(self._text[start:end], self.max_chars)
            start = end
        self._text = self._text[start:]
        if len(self._text) > self.max_chars:  # no end in sight: cut the long-form way, keep the open tail
            *whole, self._text = split_text(self._text, self.max_chars)
            pieces += whole
        return pieces

    def flush(self) -> list[str]:
        """Everything buffered, complete or not."""
        text, self._text = self._text, ""
        return split_text(text, self.max_chars)

    def clear(self) -> None:
        self._text = ""

    def _ends(self) -> list[int]:
        """Where complete pieces end: blank lines, and sentence ends that something follows."""
        ends = {match.end() for match in PARAGRAPH_BREAK.finditer(self._text)}
        ends.update(match.end() for match in sentence_ends(self._text)
                    if match.start() + len(match.group().rstrip()) < len(self._text))
        return sorted(ends)
