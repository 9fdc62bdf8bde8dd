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
from collections.abc import Iterable, Iterator
from itertools import chain, product
from operator import methodcaller
from typing import TYPE_CHECKING, Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from gristmill.core.config import Config
from gristmill.curate.text import Limit, SignalFilter, TextView, TextViews, fraction, repeated
from gristmill.data.step import StepStats
from gristmill.formats.document import Document

if TYPE_CHECKING:
    import numpy as np

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
# Every upper/lower-case spelling of each stop word ("the", "The", "tHe" ...: 76 strings). Besides the ASCII
# letters, only the Kelvin sign (U+212A, a "k") lowercases to ASCII letters alone, and no stop word holds a
# "k", so a word lowercases to a stop word exactly when it is one of these.
_STOP_SPELLINGS = frozenset("".join(cs) for w in STOP_WORDS for cs in product(*((c, c.upper()) for c in w)))
# Characters that open a bulleted line: typographic bullets and the ASCII ones Markdown uses.
BULLETS = ("-", "*", "\u2022", "\u2023", "\u2043", "\u25e6", "\u25cf", "\u25cb", "\u25aa", "\u25ab",
           "\u25a0", "\u25a1", "\u25ba", "\u25b6", "\u27a2", "\u2013", "\u00b7")
_ELLIPSES = ("...", "\u2026")
# Line tests for sum(map(...)): C-level calls, no Python generator per line (True counts 1).
_OPENS_A_BULLET = methodcaller("startswith", BULLETS)
_ENDS_IN_ELLIPSIS = methodcaller("endswith", _ELLIPSES)
# A whitespace-separated token without a letter: digits, underscores and symbols only.
_NO_LETTER_WORD = re.compile(r"(?<!\S)(?:[\d_]|[^\w\s])+(?!\S)")

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
    store_signals: bool = True
    """Measure every signal of every document and store them in ``meta.quality`` (``gopher_word_count``
    ...), so thresholds can be applied again later without the text (and the data card can draw them);
    false: stop at the first broken limit and store nothing, a little faster."""

    REASON_KEYS: ClassVar[dict[str, str]] = {
        "word_count": "min_words / max_words", "mean_word_length": "min_mean_word_length / max_mean_word_length",
        "hash_ratio": "max_hash_ratio", "ellipsis_ratio": "max_ellipsis_ratio", "bullet_lines": "max_bullet_lines",
        "ellipsis_lines": "max_ellipsis_lines", "alpha_words": "min_alpha_words", "stop_words": "min_stop_words"}

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
    store_signals: bool = True
    """Measure every signal of every document and store them in ``meta.quality``
    (``gopher_dup_line_fraction`` ...), so thresholds can be applied again later without the text; false:
    stop at the first broken limit and store nothing, a little faster."""

    REASON_KEYS: ClassVar[dict[str, str]] = {
        "dup_line_fraction": "max_dup_line_fraction", "dup_para_fraction": "max_dup_para_fraction",
        "dup_line_chars": "max_dup_line_chars", "dup_para_chars": "max_dup_para_chars",
        "top_": "max_top_ngram_chars", "dup_": "max_dup_ngram_chars"}


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
        # The words without surrounding punctuation, counted without stripping every word: only the words
        # that are not all letters change when stripped, and those stripped to nothing are not words.
        odd, odd_bare = view.odd_words, view.odd_bare
        bare_chars = view.word_chars - sum(map(len, odd)) + sum(map(len, odd_bare))
        yield "gopher_mean_word_length", fraction(bare_chars, n - odd_bare.count(""))
        yield "gopher_hash_ratio", fraction(text.count("#"), n)
        yield "gopher_ellipsis_ratio", fraction(text.count(_ELLIPSES[0]) + text.count(_ELLIPSES[1]), n)
        lines = view.lines
        yield "gopher_bullet_lines", fraction(sum(map(_OPENS_A_BULLET, lines)), len(lines))
        yield "gopher_ellipsis_lines", fraction(sum(map(_ENDS_IN_ELLIPSIS, lines)), len(lines))
        # A word of letters only has a letter: search for letterless words among the others, rejoined.
        yield "gopher_alpha_words", fraction(n - len(_NO_LETTER_WORD.findall(" ".join(odd))), n)
        # Every spelling of a stop word is all letters, so the whole words are matched against them as they
        # stand (set lookups in C, nothing lowercased) and only the odd words stripped.
        found = _STOP_SPELLINGS.intersection(words) | _STOP_SPELLINGS.intersection(odd_bare)
        yield "gopher_stop_words", len({w.lower() for w in found})


class WordNGrams:
    """The word n-grams of one text as 64-bit hashes, for counting repeats with array operations.

    Each word's id is its Python string hash (equal words, equal ids; within one process, which is all a
    document's measurement needs); an n-gram's hash is the polynomial of its ids modulo 2^64, extended from
    the (n-1)-gram hashes, so asking for n = 2, 3, ..., 10 costs one array pass per n. A repeat is a
    position whose hash occurred at an earlier position. A text with no repeated n-gram has no repeated
    longer one either (each contains an n-gram), so once some n has none the longer ones cost nothing.
    numpy is imported here, when a document is first measured, so that loading a recipe does not import it.
    """

    _BASE = 0x9E3779B97F4A7C15  # odd, so every word position changes the hash

    def __init__(self, words: list[str]) -> None:
        import numpy as np

        n = len(words)
        ids = np.fromiter(map(hash, words), dtype=np.int64, count=n).view(np.uint64)
        self.lengths = np.fromiter(map(len, words), dtype=np.int64, count=n)
        self.total_chars = int(self.lengths.sum())
        self._chars_before = np.concatenate(([0], np.cumsum(self.lengths)))
        self._hashes: dict[int, np.ndarray] = {1: ids}
        self._none_from = n + 1
        """The smallest n known to have no repeated n-gram."""

    def hashes(self, n: int) -> np.ndarray:
        """Hash of the n-gram starting at each position (``len(words) - n + 1`` of them)."""
        import numpy as np

        have = max(k for k in self._hashes if k <= n)
        h = self._hashes[have]
        ids = self._hashes[1]
        base = np.uint64(self._BASE)
        for k in range(have + 1, n + 1):
            h = h[:-1] * base + ids[k - 1 :]
            self._hashes[k] = h
        return h

    def _groups(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the n-grams sorted by hash (stable: equal n-grams stay in text order), and where
        each run of equal n-grams starts in that order."""
        import numpy as np

        h = self.hashes(n)
        order = np.argsort(h, kind="stable")
        sorted_h = h[order]
        opens = np.ones(len(h), dtype=bool)
        opens[1:] = sorted_h[1:] != sorted_h[:-1]
        return order, opens

    def top_chars(self, n: int) -> float:
        """Share of the word characters taken by the most frequent n-gram at all its occurrences (the
        longest, among equally frequent ones); 0 if no n-gram occurs twice."""
        import numpy as np

        if n >= self._none_from:
            return 0.0
        order, opens = self._groups(n)
        if len(order) < 2 or opens.all():
            self._none_from = min(self._none_from, n)
            return 0.0
        run_starts = np.flatnonzero(opens)
        counts = np.empty(len(run_starts), dtype=np.int64)  # run lengths (np.diff costs more per call)
        np.subtract(run_starts[1:], run_starts[:-1], out=counts[:-1])
        counts[-1] = len(order) - run_starts[-1]
        top = int(counts.max())
        firsts = order[run_starts[counts == top]]
        gram_chars = self._chars_before[firsts + n] - self._chars_before[firsts]
        return fraction(top * int(gram_chars.max()), self.total_chars)

    def dup_chars(self, n: int) -> float:
        """Share of the word characters inside repeats of an earlier n-gram; a word covered by several
        overlapping repeats counts once."""
        import numpy as np

        if n >= self._none_from:
            return 0.0
        order, opens = self._groups(n)
        repeats = order[~opens]  # every occurrence but the first of each n-gram
        if not len(repeats):
            self._none_from = min(self._none_from, n)
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
        # (signal name, key in batch_ngram_signals' values), in checking order: named once, not per document.
        self._gram_names = [(f"gopher_top_{n}gram_chars", f"top_{n}") for n in self.top_ns] + [
            (f"gopher_dup_{n}gram_chars", f"dup_{n}") for n in self.dup_ns]

    batch_size = 256
    """Documents whose word n-grams are measured together (:func:`batch_ngram_signals`): array work per
    batch instead of per document, which is what short documents cost ..."""
    batch_chars = 500_000
    """... or fewer, once they hold this many characters (the working memory; the shared views keep 2M)."""

    def run(self, docs: Iterable[Document], stats: StepStats) -> Iterator[Document]:
        batch: list[Document] = []
        chars = 0
        for doc in docs:
            batch.append(doc)
            chars += len(doc.text)
            if len(batch) == self.batch_size or chars >= self.batch_chars:
                yield from self._judge(batch, stats)
                batch, chars = [], 0
        yield from self._judge(batch, stats)

    def _judge(self, batch: list[Document], stats: StepStats) -> Iterator[Document]:
        if not batch:
            return
        views = [self.views.of(doc.text) for doc in batch]
        word_chars: list[int] = []
        grams = batch_ngram_signals([v.words for v in views], self.top_ns, self.dup_ns, word_chars)
        if word_chars:  # counted with the n-grams: Gopher's quality rules need them next
            for view, chars in zip(views, word_chars, strict=True):
                view.word_chars = chars
        for doc, view, values in zip(batch, views, grams, strict=True):
            self._grams = values
            try:
                reason = self.verdict(doc, view)
            finally:
                self._grams = None
            if reason is None:
                yield doc
            else:
                stats.drop(doc, reason)

    _grams: dict[str, float] | None = None

    def measure(self, view: TextView) -> Iterator[tuple[str, float]]:
        lines, paragraphs = view.lines, view.paragraphs
        dup_lines, dup_line_chars = repeated(lines)
        dup_paras, dup_para_chars = repeated(paragraphs)
        yield "gopher_dup_line_fraction", fraction(dup_lines, len(lines))
        yield "gopher_dup_para_fraction", fraction(dup_paras, len(paragraphs))
        yield "gopher_dup_line_chars", fraction(dup_line_chars, sum(map(len, lines)))
        yield "gopher_dup_para_chars", fraction(dup_para_chars, sum(map(len, paragraphs)))
        if self._grams is not None:  # measured with the rest of its batch
            grams = self._grams
            for name, key in self._gram_names:
                yield name, grams[key]
            return
        grams = WordNGrams(view.words)
        for n in self.top_ns:
            yield f"gopher_top_{n}gram_chars", grams.top_chars(n)
        for n in self.dup_ns:
            yield f"gopher_dup_{n}gram_chars", grams.dup_chars(n)


_DOC_MIX = 0xD6E8FEB86659FD93  # odd: spreads the document number over a key's 64 bits


def batch_ngram_signals(word_lists: list[list[str]], top_ns: Iterable[int], dup_ns: Iterable[int],
                        word_chars: list[int] | None = None) -> list[dict[str, float]]:
    """:meth:`WordNGrams.top_chars` and :meth:`WordNGrams.dup_chars` for many texts at once, the same
    values (``{"top_2": ..., "dup_5": ...}`` per text). ``word_chars``, if given, is filled with each
    text's characters in words (:attr:`TextView.word_chars`), counted here anyway, when any n is asked for.

    The texts' words are laid end to end; an n-gram is kept where it ends inside its own text, and its
    key mixes its hash with its text's number, so one sort finds the repeats of every text. A repeated
    (n+1)-gram starts where a repeated n-gram does, so after each n only the members of repeated groups
    go on to n+1: the arrays shrink fast, and once no text repeats an n-gram the longer ones are all 0.
    """
    import numpy as np

    tops, dups = set(top_ns), set(dup_ns)
    out = [dict.fromkeys([f"top_{n}" for n in tops] + [f"dup_{n}" for n in dups], 0.0) for _ in word_lists]
    if not out or not (tops or dups):
        return out
    b = len(word_lists)
    counts = np.fromiter(map(len, word_lists), dtype=np.int64, count=b)
    ends = np.cumsum(counts)
    n_words = int(ends[-1])
    ids = np.fromiter(map(hash, chain.from_iterable(word_lists)), dtype=np.int64, count=n_words).view(np.uint64)
    lengths = np.fromiter(map(len, chain.from_iterable(word_lists)), dtype=np.int64, count=n_words)
    doc_of = np.repeat(np.arange(b, dtype=np.int64), counts)
    chars_before = np.zeros(n_words + 1, dtype=np.int64)
    np.cumsum(lengths, out=chars_before[1:])
    total = np.diff(chars_before[np.concatenate(([0], ends))])  # each text's word characters
    if word_chars is not None:
        word_chars.extend(total.tolist())
    has_chars = total > 0
    doc_mix = doc_of.astype(np.uint64) * np.uint64(_DOC_MIX)
    pos = np.arange(n_words, dtype=np.int64)
    room = np.repeat(ends, counts) - pos  # words from each position to the end of its text
    h = ids
    base = np.uint64(WordNGrams._BASE)
    last = max(tops | dups)
    for n in range(1, last + 1):
        if n > 1:
            inside = room >= n  # the n-gram ends inside its own text
            pos, h, room = pos[inside], h[inside], room[inside]
            h = h * base + ids[pos + (n - 1)]
        if n not in tops and n not in dups:
            continue
        if len(pos) < 2:
            break
        key = h ^ doc_mix[pos]
        order = np.argsort(key)
        sorted_key, sorted_pos = key[order], pos[order]
        opens = np.empty(len(sorted_key), dtype=bool)
        opens[0] = True
        np.not_equal(sorted_key[1:], sorted_key[:-1], out=opens[1:])
        starts = np.flatnonzero(opens)
        sizes = np.empty(len(starts), dtype=np.int64)
        np.subtract(starts[1:], starts[:-1], out=sizes[:-1])
        sizes[-1] = len(sorted_key) - starts[-1]
        repeated_runs = sizes >= 2
        if not repeated_runs.any():
            break  # no text repeats an n-gram, so none repeats a longer one: every later value stays 0
        if n in tops:
            first = sorted_pos[starts[repeated_runs]]  # any member: equal n-grams have equal characters
            size = sizes[repeated_runs]
            doc = doc_of[first]
            top = np.zeros(b, dtype=np.int64)
            np.maximum.at(top, doc, size)
            best = size == top[doc]
            gram = chars_before[first + n] - chars_before[first]
            longest = np.zeros(b, dtype=np.int64)
            np.maximum.at(longest, doc[best], gram[best])
            value = np.where(has_chars, (top * longest) / np.where(has_chars, total, 1.0), 0.0)
            for i in np.flatnonzero(top >= 2).tolist():
                out[i][f"top_{n}"] = float(value[i])
        if n in dups:
            run_of = np.cumsum(opens) - 1
            first_pos = np.minimum.reduceat(sorted_pos, starts)  # each run's first occurrence
            repeats = np.sort(sorted_pos[sorted_pos != first_pos[run_of]])
            # The words covered by repeats: each repeat covers [start, start + n), less what the repeat
            # before it in the text already covers (all have n words, so that one reaches furthest). A
            # repeat never reaches into the next text, so texts do not overlap. Work on the repeats alone,
            # not on an array over all the words per n.
            stops = repeats + n
            fresh = repeats.copy()
            np.maximum(fresh[1:], stops[:-1], out=fresh[1:])
            covered = chars_before[stops] - chars_before[np.minimum(fresh, stops)]
            dup = np.bincount(doc_of[repeats], weights=covered, minlength=b)
            for i in np.flatnonzero(dup).tolist():
                out[i][f"dup_{n}"] = float(dup[i] / total[i])
        # Only members of repeated groups can repeat a longer n-gram: those that do not open a run, and
        # those whose run goes on after them.
        member = ~opens
        member[:-1] |= member[1:]
        keep = order[member]
        pos, h, room = pos[keep], h[keep], room[keep]
    return out
