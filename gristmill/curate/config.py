"""The prepare stage's config: the curation steps as a typed list, each step with its own keys.

A recipe that leaves ``steps`` out gets the default pipeline (Gutenberg boilerplate, Unicode NFC,
whitespace, a length filter, exact deduplication); the split into train and validation always comes
last. To change a step, list the steps you want:

```yaml
prepare:
  steps:
    - {type: clean_whitespace}
    - {type: length, min_chars: 50, min_words: 5}
    - {type: dedup}
```
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from gristmill.core.config import Config, tagged_union


class StripGutenbergStep(Config):
    """Cut Project Gutenberg licence headers and footers (the ``*** START OF ...`` / ``*** END OF ...``
    markers and the older ``*END*THE SMALL PRINT!`` form); texts without the markers are left alone."""

    type: Literal["strip_gutenberg"]
    """``strip_gutenberg``."""


class NormalizeUnicodeStep(Config):
    """Unicode normalisation, so equal-looking text has equal code points."""

    type: Literal["normalize_unicode"]
    """``normalize_unicode``."""
    form: Literal["NFC", "NFKC"] = "NFC"
    """NFC composes accents only; NFKC also folds compatibility characters (ligatures, full-width forms,
    superscripts: "m²" becomes "m2")."""


class CleanWhitespaceStep(Config):
    """Normalise line breaks to \\n, remove control characters other than \\n and \\t, strip trailing
    spaces, collapse runs of blank lines into one, and strip the document."""

    type: Literal["clean_whitespace"]
    """``clean_whitespace``."""


class LengthStep(Config):
    """Drop documents that are too short or too long."""

    type: Literal["length"]
    """``length``."""
    min_chars: int = Field(default=200, ge=0)
    """Drop documents shorter than this many characters (after cleaning)."""
    max_chars: int | None = Field(default=None, ge=1)
    """Drop documents longer than this many characters; None: no upper limit."""
    min_words: int = Field(default=20, ge=0)
    """Drop documents with fewer whitespace-separated words than this."""

    @model_validator(mode="after")
    def _limits_ordered(self) -> LengthStep:
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(f"max_chars ({self.max_chars}) is below min_chars ({self.min_chars})")
        return self


class ExactDedupStep(Config):
    """Drop exact duplicates (same text after the steps before), keeping the first occurrence."""

    type: Literal["dedup"]
    """``dedup``."""


STEP_CONFIGS = (StripGutenbergStep, NormalizeUnicodeStep, CleanWhitespaceStep, LengthStep, ExactDedupStep)
AnyStep = tagged_union(*STEP_CONFIGS)


def default_steps() -> list[Config]:
    return [StripGutenbergStep(type="strip_gutenberg"), NormalizeUnicodeStep(type="normalize_unicode"),
            CleanWhitespaceStep(type="clean_whitespace"), LengthStep(type="length"), ExactDedupStep(type="dedup")]


class PrepareConfig(Config):
    """How documents are cleaned, filtered, deduplicated and split: ``steps`` run in order, then the split."""

    steps: list[AnyStep] = Field(default_factory=default_steps)
    """The curation steps, in order; each is ``{type: <step>, ...its keys}``. Types: ``strip_gutenberg``,
    ``normalize_unicode``, ``clean_whitespace``, ``length``, ``dedup``."""
    val_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Share of documents held out for validation. The split is decided by a hash of each document's id,
    so a document keeps its split whatever else is in the corpus, and across run seeds."""

    @field_validator("steps")
    @classmethod
    def _unique(cls, steps: list[Config]) -> list[Config]:
        types = [s.type for s in steps]
        for t in types:
            if types.count(t) > 1:
                raise ValueError(f"step type '{t}' is listed twice; list each step once")
        return steps
