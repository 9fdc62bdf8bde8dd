"""The prepare stage's config: one field (or a few) per step; the step list is built from it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gristmill.config import Config


class PrepareConfig(Config):
    """How documents are cleaned, filtered, deduplicated and split. Steps run in the order listed here."""

    strip_gutenberg: bool = True
    """Cut Project Gutenberg licence headers and footers (the ``*** START OF ...`` / ``*** END OF ...``
    markers and the older ``*END*THE SMALL PRINT!`` form); texts without the markers are left as they are."""
    unicode_form: Literal["NFC", "NFKC"] | None = "NFC"
    """Unicode normalisation: NFC composes accents only; NFKC also folds compatibility characters
    (ligatures, full-width forms, superscripts: "m²" becomes "m2"); None leaves the text alone."""
    clean_whitespace: bool = True
    """Normalise line breaks to \\n, remove control characters other than \\n and \\t, strip trailing
    spaces, collapse runs of blank lines into one, and strip the document."""
    min_chars: int = Field(default=200, ge=0)
    """Drop documents shorter than this many characters (after cleaning)."""
    max_chars: int | None = Field(default=None, ge=1)
    """Drop documents longer than this many characters; None: no upper limit."""
    min_words: int = Field(default=20, ge=0)
    """Drop documents with fewer whitespace-separated words than this."""
    dedup: bool = True
    """Drop exact duplicates (same text after cleaning), keeping the first occurrence."""
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Share of documents held out for validation. The split is decided by a hash of each document's id,
    so a document keeps its split whatever else is in the corpus, and across run seeds."""

    @model_validator(mode="after")
    def _limits_ordered(self) -> PrepareConfig:
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(f"max_chars ({self.max_chars}) is below min_chars ({self.min_chars})")
        return self
