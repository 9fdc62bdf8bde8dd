"""Language identification: keep the documents written in the recipe's languages.

The model is py3langid's (the ``curate`` extra: a fork of langid.py, Lui and Baldwin 2012, a naive Bayes
classifier over byte n-grams trained on 97 languages, shipped inside the package, so it works offline).
Each document gets ``meta.language`` (an ISO 639-1 code) and ``meta.language_score`` (the probability
the model gives that language, 0 to 1). A document in none of the wanted languages is dropped with reason
``language``; one in a wanted language but with a score under ``min_score`` with reason
``language_score`` (mixed-language text, lists of names, numbers). FineWeb keeps English at a score of
0.65 with fastText's model; langid's probabilities are sharper, so the same cut keeps a little more.

Only the first ``max_chars`` characters are read: the classifier walks the text byte by byte in Python,
and a few thousand characters decide the language of a page or a book as well as all of it.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from gristmill.core.config import Config
from gristmill.data.step import Filter
from gristmill.formats.document import Document

MODULE = "py3langid"
"""The package that provides the model (the ``curate`` extra)."""


class LanguageStep(Config):
    """Language identification: keep documents in ``languages``, with the detected language stored."""

    type: Literal["language"] = "language"
    """``language``."""
    languages: list[str] = Field(default_factory=lambda: ["en"], min_length=1, max_length=100)
    """ISO 639-1 codes to keep (``en``, ``de``, ``fr`` ...); a document detected as any other language is
    dropped (reason ``language``)."""
    min_score: float = Field(default=0.65, ge=0.0, le=1.0)
    """Drop documents whose detected (wanted) language has a lower probability than this (reason
    ``language_score``); FineWeb's English threshold."""
    max_chars: int = Field(default=4000, ge=100, le=10_000_000)
    """Characters read from the start of each document to decide its language."""
    restrict: bool = False
    """Choose only among ``languages`` (faster, but text in another language is then scored as the closest
    wanted one, and only ``min_score`` can drop it)."""

    REASON_KEYS: ClassVar[dict[str, str]] = {"language": "languages", "language_score": "min_score"}

    @field_validator("languages")
    @classmethod
    def _codes(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if not (2 <= len(c) <= 3 and c.isascii() and c.isalpha() and c.islower())]
        if bad:
            raise ValueError(f"{bad} are not ISO 639 codes; use lower-case codes such as 'en', 'de', 'fr'")
        return v


class LanguageFilter(Filter):
    """Drop documents outside the wanted languages (see the module docstring)."""

    name = "language"

    def __init__(self, cfg: LanguageStep | None = None, model: Any = None) -> None:
        self.cfg = cfg if cfg is not None else LanguageStep()
        self.wanted = frozenset(self.cfg.languages)
        self.model = model if model is not None else load_model(self.cfg)
        self.counts: dict[str, int] = {}

    def detect(self, text: str) -> tuple[str, float]:
        """The most likely language of ``text`` and its probability."""
        lang, score = self.model.classify(text[: self.cfg.max_chars])
        return str(lang), float(score)

    def reject(self, doc: Document) -> str | None:
        lang, score = self.detect(doc.text)
        doc.meta["language"] = lang
        doc.meta["language_score"] = round(score, 4)
        self.counts[lang] = self.counts.get(lang, 0) + 1
        if lang not in self.wanted:
            return "language"
        if score < self.cfg.min_score:
            return "language_score"
        return None

    def summary(self) -> dict[str, int]:
        """Documents seen per detected language, most frequent first (the data card's language mix)."""
        return dict(sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])))


def load_model(cfg: LanguageStep) -> Any:
    """py3langid's identifier with probabilities; an error naming the extra if it is not installed.
    Loaded once per process and set of languages (unpacking the model takes most of a second)."""
    from gristmill.core.extras import require

    require(MODULE, extra="curate", feature="prepare step 'language'")
    return _model(tuple(cfg.languages) if cfg.restrict else None, tuple(cfg.languages))


@functools.cache
def _model(restrict: tuple[str, ...] | None, wanted: tuple[str, ...]) -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    model = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    unknown = sorted(set(wanted) - set(model.nb_classes))
    if unknown:
        from gristmill.errors import ConfigError

        raise ConfigError(f"prepare step 'language': the model knows no language {unknown}; it knows "
                          f"{', '.join(sorted(set(model.nb_classes)))}")
    if restrict is not None:
        model.set_languages(list(restrict))
    return model
