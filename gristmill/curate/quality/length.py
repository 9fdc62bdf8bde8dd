"""Length filter: characters and words."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from gristmill.core.config import Config
from gristmill.data.step import Filter
from gristmill.formats.document import Document


class LengthStep(Config):
    """Drop documents that are too short or too long."""

    type: Literal["length"] = "length"
    """``length``."""
    min_chars: int = Field(default=200, ge=0)
    """Drop documents shorter than this many characters (after cleaning)."""
    max_chars: int | None = Field(default=None, ge=1)
    """Drop documents longer than this many characters; None: no upper limit."""
    min_words: int = Field(default=20, ge=0)
    """Drop documents with fewer whitespace-separated words than this."""

    REASON_KEYS: ClassVar[dict[str, str]] = {"too_short": "min_chars", "too_long": "max_chars",
                                             "too_few_words": "min_words"}

    @model_validator(mode="after")
    def _limits_ordered(self) -> LengthStep:
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(f"max_chars ({self.max_chars}) is below min_chars ({self.min_chars})")
        return self


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
