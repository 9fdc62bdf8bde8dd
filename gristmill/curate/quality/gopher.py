"""Gopher's quality and repetition rules (Rae et al. 2021, "Scaling Language Models", appendix A).

Two filters with the paper's thresholds as defaults. :class:`GopherQualityFilter` drops text that is not
prose: too short or too long, words too short or too long on average, many ``#`` or ellipses, mostly
bullet lines, mostly lines trailing off in an ellipsis, many words without a letter, or fewer than two
of the English stop words *the, be, to, of, and, that, have, with*. :class:`GopherRepetitionFilter` drops
text that repeats itself: duplicated lines and paragraphs (by count and by characters), a single 2-, 3-
or 4-gram that takes up too many characters, and many characters inside repeated 5- to 10-grams.

Words are whitespace-separated tokens. Word length and stop words use the token without surrounding
punctuation ("end." is the 3-letter word "end"); the stop-word rule counts distinct stop words. Every
signal is a named value (``gopher_word_count`` ...) that ``store_signals`` keeps in
``doc.meta["quality"]``; a dropped document's reason is the signal's name without ``gopher_``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, model_validator

from gristmill.core.config import Config
from gristmill.curate.text import Limit, SignalFilter, TextView, TextViews, fraction, repeated

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
# Characters that open a bulleted line: typographic bullets and the ASCII ones Markdown uses.
BULLETS = ("-", "*", "\u2022", "\u2023", "\u2043", "\u25e6", "\u25cf", "\u25cb", "\u25aa", "\u25ab",
           "\u25a0", "\u25a1", "\u25ba", "\u25b6", "\u27a2", "\u2013", "\u00b7")
_ELLIPSES = ("...", "\u2026")
_HAS_LETTER = re.compile(r"[^\W\d_]")

Share = Annotated[float, Field(ge=0.0, le=1.0)]
"""A share of lines, words or characters, from 0 to 1."""


class GopherQualityStep(Config):
    """Gopher's quality rules: drop text that is not running prose. Defaults are the paper's thresholds."""

    type: Literal["gopher_quality"] = "gopher_quality"
    """``gopher_quality``."""
    min_words: int = Field(default=50, ge=0, le=10_000_000)
    """Drop documents with fewer whitespace-separated words (reason ``word_count``)."""
    max_words: int = Field(default=100_000, ge=1, le=100_000_000)
    """Drop documents with more words (reason ``word_count``)."""
    min_mean_word_length: float = Field(default=3.0, ge=0.0, le=100.0)
    """Drop documents whose words, without surrounding punctuation, are shorter than this on average, in
    characters (reason ``mean_word_length``)."""
    max_mean_word_length: float = Field(default=10.0, ge=0.0, le=1000.0)
    """Drop documents whose words are longer than this on average (reason ``mean_word_length``)."""
    max_hash_ratio: float = Field(default=0.1, ge=0.0, le=100.0)
    """Drop documents with more ``#`` characters than this per word (reason ``hash_ratio``)."""
    max_ellipsis_ratio: float = Field(default=0.1, ge=0.0, le=100.0)
    """Drop documents with more ellipses (``...`` or ``…``) than this per word (reason ``ellipsis_ratio``)."""
    max_bullet_lines: Share = 0.9
    """Drop documents where more than this share of non-empty lines start with a bullet (reason
    ``bullet_lines``)."""
    max_ellipsis_lines: Share = 0.3
    """Drop documents where more than this share of non-empty lines end with an ellipsis (reason
    ``ellipsis_lines``)."""
    min_alpha_words: Share = 0.8
    """Drop documents where fewer than this share of words contain a letter (reason ``alpha_words``)."""
    min_stop_words: int = Field(default=2, ge=0, le=len(STOP_WORDS))
    """Drop documents containing fewer than this many distinct words of *the, be, to, of, and, that, have,
    with* (reason ``stop_words``); the rule removes text that is not English sentences."""
    store_signals: bool = False
    """Also store every signal in ``meta.quality`` (``gopher_word_count`` ...), so thresholds can be applied
    again later without the text; measuring every signal makes the filter slower."""

    @model_validator(mode="after")
    def _ordered(self) -> GopherQualityStep:
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) is larger than max_words ({self.max_words})")
        if self.min_mean_word_length > self.max_mean_word_length:
            raise ValueError(f"min_mean_word_length ({self.min_mean_word_length}) is larger than "
                             f"max_mean_word_length ({self.max_mean_word_length})")
        return self


class GopherRepetitionStep(Config):
    """Gopher's repetition rules: drop text that repeats lines, paragraphs or n-grams. Defaults are the
    paper's thresholds (its table A1)."""

    type: Literal["gopher_repetition"] = "gopher_repetition"
    """``gopher_repetition``."""
    max_dup_line_fraction: Share = 0.3
    """Drop documents where more than this share of non-empty lines repeat an earlier line (reason
    ``dup_line_fraction``)."""
    max_dup_para_fraction: Share = 0.3
    """Drop documents where more than this share of paragraphs repeat an earlier one (``dup_para_fraction``)."""
    max_dup_line_chars: Share = 0.2
    """Drop documents where repeated lines hold more than this share of the line characters
    (``dup_line_chars``)."""
    max_dup_para_chars: Share = 0.2
    """Drop documents where repeated paragraphs hold more than this share of the paragraph characters
    (``dup_para_chars``)."""
    max_top_ngram_chars: dict[Annotated[int, Field(ge=1, le=20)], Share] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16}, max_length=20)
    """For each n: drop documents where the most frequent word n-gram, counted at every occurrence, takes
    up more than this share of the word characters (reason ``top_<n>gram_chars``)."""
    max_dup_ngram_chars: dict[Annotated[int, Field(ge=1, le=20)], Share] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}, max_length=20)
    """For each n: drop documents where the words inside repeats of an earlier n-gram (each word counted
    once however many repeats overlap it) hold more than this share of the word characters (reason
    ``dup_<n>gram_chars``)."""
    store_signals: bool = False
    """Also store every signal in ``meta.quality`` (``gopher_dup_line_fraction`` ...), so thresholds can be
    applied again later without the text; measuring every signal makes the filter slower."""


class GopherQualityFilter(SignalFilter):
    """Drop documents that are not running prose, by Gopher's rules (see the module docstring)."""

    name = "gopher_quality"

    def __init__(self, cfg: GopherQualityStep | None = None, views: TextViews | None = None) -> None:
        cfg = cfg if cfg is not None else GopherQualityStep()
        super().__init__(cfg.store_signals, views)
        self.limits = {
            "gopher_word_count": Limit("word_count", cfg.min_words, cfg.max_words),
            "gopher_mean_word_length": Limit("mean_word_length", cfg.min_mean_word_length,
                                             cfg.max_mean_word_length),
            "gopher_hash_ratio": Limit("hash_ratio", high=cfg.max_hash_ratio),
            "gopher_ellipsis_ratio": Limit("ellipsis_ratio", high=cfg.max_ellipsis_ratio),
            "gopher_bullet_lines": Limit("bullet_lines", high=cfg.max_bullet_lines),
            "gopher_ellipsis_lines": Limit("ellipsis_lines", high=cfg.max_ellipsis_lines),
            "gopher_alpha_words": Limit("alpha_words", low=cfg.min_alpha_words),
            "gopher_stop_words": Limit("stop_words", low=cfg.min_stop_words),
        }

    def measure(self, view: TextView) -> Iterator[tuple[str, float]]:
        text, words = view.text, view.words
        n = len(words)
        yield "gopher_word_count", n
        bare = view.bare_words
        yield "gopher_mean_word_length", fraction(sum(map(len, bare)), len(bare))
        yield "gopher_hash_ratio", fraction(text.count("#"), n)
        yield "gopher_ellipsis_ratio", fraction(sum(text.count(e) for e in _ELLIPSES), n)
        lines = view.lines
        yield "gopher_bullet_lines", fraction(sum(line.startswith(BULLETS) for line in lines), len(lines))
        yield "gopher_ellipsis_lines", fraction(sum(line.endswith(_ELLIPSES) for line in lines), len(lines))
        yield "gopher_alpha_words", fraction(sum(_HAS_LETTER.search(w) is not None for w in words), n)
        yield "gopher_stop_words", len(set(STOP_WORDS).intersection(bare))


class WordNGrams:
    """The word n-grams of one text as 64-bit hashes, for counting repeats with array operations.

    Each distinct word gets an integer id; an n-gram's hash is the polynomial of its ids modulo 2^64,
    extended from the (n-1)-gram hashes, so asking for n = 2, 3, ..., 10 costs one array pass per n.
    A repeat is a position whose hash occurred at an earlier position.
    """

    _BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so every word position changes the hash

    def __init__(self, words: list[str]) -> None:
        vocab: dict[str, int] = {}
        ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in words), dtype=np.uint64, count=len(words))
        self.lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
        self.total_chars = int(self.lengths.sum())
        self._chars_before = np.concatenate(([0], np.cumsum(self.lengths)))
        self._hashes: dict[int, np.ndarray] = {1: ids}

    def hashes(self, n: int) -> np.ndarray:
        """Hash of the n-gram starting at each position (``len(words) - n + 1`` of them)."""
        have = max(k for k in self._hashes if k <= n)
        h = self._hashes[have]
        ids = self._hashes[1]
        for k in range(have + 1, n + 1):
            h = h[:-1] * self._BASE + ids[k - 1 :]
            self._hashes[k] = h
        return h

    def _groups(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the n-grams sorted by hash (stable: equal n-grams stay in text order), and where
        each run of equal n-grams starts in that order."""
        h = self.hashes(n)
        order = np.argsort(h, kind="stable")
        sorted_h = h[order]
        opens = np.ones(len(h), dtype=bool)
        opens[1:] = sorted_h[1:] != sorted_h[:-1]
        return order, opens

    def top_chars(self, n: int) -> float:
        """Share of the word characters taken by the most frequent n-gram at all its occurrences (the
        longest, among equally frequent ones); 0 if no n-gram occurs twice."""
        order, opens = self._groups(n)
        if len(order) < 2 or opens.all():
            return 0.0
        run_starts = np.flatnonzero(opens)
        counts = np.diff(run_starts, append=len(order))
        top = int(counts.max())
        firsts = order[run_starts[counts == top]]
        gram_chars = self._chars_before[firsts + n] - self._chars_before[firsts]
        return fraction(top * int(gram_chars.max()), self.total_chars)

    def dup_chars(self, n: int) -> float:
        """Share of the word characters inside repeats of an earlier n-gram; a word covered by several
        overlapping repeats counts once."""
        order, opens = self._groups(n)
        repeats = order[~opens]  # every occurrence but the first of each n-gram
        if not len(repeats):
            return 0.0
        # +1 where a repeat starts, -1 where it ends: a word is covered where the running sum is positive.
        size = len(self.lengths) + 1
        depth = np.cumsum(np.bincount(repeats, minlength=size) - np.bincount(repeats + n, minlength=size))
        return fraction(int(self.lengths[depth[:-1] > 0].sum()), self.total_chars)


class GopherRepetitionFilter(SignalFilter):
    """Drop documents that repeat lines, paragraphs or n-grams, by Gopher's rules (see the module docstring)."""

    name = "gopher_repetition"

    def __init__(self, cfg: GopherRepetitionStep | None = None, views: TextViews | None = None) -> None:
        cfg = cfg if cfg is not None else GopherRepetitionStep()
        super().__init__(cfg.store_signals, views)
        self.top_ns = sorted(cfg.max_top_ngram_chars)
        self.dup_ns = sorted(cfg.max_dup_ngram_chars)
        self.limits = {
            "gopher_dup_line_fraction": Limit("dup_line_fraction", high=cfg.max_dup_line_fraction),
            "gopher_dup_para_fraction": Limit("dup_para_fraction", high=cfg.max_dup_para_fraction),
            "gopher_dup_line_chars": Limit("dup_line_chars", high=cfg.max_dup_line_chars),
            "gopher_dup_para_chars": Limit("dup_para_chars", high=cfg.max_dup_para_chars),
        }
        for n in self.top_ns:
            self.limits[f"gopher_top_{n}gram_chars"] = Limit(f"top_{n}gram_chars",
                                                             high=cfg.max_top_ngram_chars[n])
        for n in self.dup_ns:
            self.limits[f"gopher_dup_{n}gram_chars"] = Limit(f"dup_{n}gram_chars",
                                                             high=cfg.max_dup_ngram_chars[n])

    def measure(self, view: TextView) -> Iterator[tuple[str, float]]:
        lines, paragraphs = view.lines, view.paragraphs
        dup_lines, dup_line_chars = repeated(lines)
        dup_paras, dup_para_chars = repeated(paragraphs)
        yield "gopher_dup_line_fraction", fraction(dup_lines, len(lines))
        yield "gopher_dup_para_fraction", fraction(dup_paras, len(paragraphs))
        yield "gopher_dup_line_chars", fraction(dup_line_chars, sum(map(len, lines)))
        yield "gopher_dup_para_chars", fraction(dup_para_chars, sum(map(len, paragraphs)))
        grams = WordNGrams(view.words)
        for n in self.top_ns:
            yield f"gopher_top_{n}gram_chars", grams.top_chars(n)
        for n in self.dup_ns:
            yield f"gopher_dup_{n}gram_chars", grams.dup_chars(n)
