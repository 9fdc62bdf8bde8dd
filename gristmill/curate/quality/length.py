"""Length filter: characters and words."""

from __future__ import annotations

from gristmill.data.step import Filter
from gristmill.formats.document import Document


class LengthFilter(Filter):
    """Drop documents that are too short (``too_short``, ``too_few_words``) or too long (``too_long``)."""

    name = "length"

    def __init__(self, min_chars: int = 0, max_chars: int | None = None, min_words: int = 0):
        self.min_chars, self.max_chars, self.min_words = min_chars, max_chars, min_words

    def reject(self, doc: Document) -> str | None:
        n = len(doc.text)
        if n < self.min_chars:
            return "too_short"
        if self.max_chars is not None and n > self.max_chars:
            return "too_long"
        if self.min_words and len(doc.text.split()) < self.min_words:
            return "too_few_words"
        return None
