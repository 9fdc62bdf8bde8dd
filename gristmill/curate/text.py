"""How curation filters read a document: split once, measured by name, judged against limits.

Gopher, C4 and FineWeb all look at the same few pieces of a text: its words, its lines, its paragraphs.
A :class:`TextView` splits the text into them lazily, at most once each, and a :class:`TextViews` cache
hands the same view to every filter that asks about the same text, so a chain of filters splits a
document once instead of once per filter. The view is never stored in ``Document.meta`` (that is
serialised); the cache keeps the most recent texts and recognises them by identity, which holds because
a filter passes ``doc.text`` on unchanged and a step that rewrites the text makes a new string.

:class:`SignalFilter` is the base of the quality filters: a filter yields named numeric *signals*
(``gopher_word_count``, ``fineweb_line_punct_ratio`` ...) and each signal has a :class:`Limit`. In the
default mode the filter stops at the first signal out of its limit and drops the document with that
limit's reason. With ``store_signals`` it measures every signal and stores them in
``doc.meta["quality"]``, so new thresholds can be applied later with :meth:`SignalFilter.judge` without
reading the text again (RedPajama v2 publishes its corpus this way).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import filterfalse
from operator import methodcaller
from typing import Any, Generic, TypeVar

from gristmill.data.step import Filter
from gristmill.formats.document import Document

# Line endings that close a sentence: C4 keeps only lines ending in one of these, FineWeb counts them.
TERMINAL_PUNCT = (".", "!", "?", '"', "'", "\u201d", "\u2019", "\u2026")  # ” ’ …

# A paragraph ends at a blank line (which may hold spaces).
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")

# Punctuation stripped from both ends of a word before its length or its spelling is compared.
_WORD_EDGE_PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\u2018\u2019\u201c\u201d\u2026\u2013\u2014\u00ab\u00bb"
_STRIP_EDGES = methodcaller("strip", _WORD_EDGE_PUNCT)
T = TypeVar("T")


class _once(Generic[T]):
    """A property computed on first use and then kept in the instance (``functools.cached_property``
    without its lock, which on Python 3.11 costs more than splitting a short text)."""

    def __init__(self, fn: Callable[[Any], T]) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __get__(self, obj: Any, cls: type | None = None) -> T:
        if obj is None:  # looked up on the class (help(), introspection)
            return self  # type: ignore[return-value]
        value = obj.__dict__[self.name] = self.fn(obj)  # found in the instance from now on
        return value


class TextView:
    """One text split into words, lines and paragraphs, each computed on first use and then kept.

    ``words`` are whitespace-separated tokens as they stand; ``bare_words`` are the same stripped of
    surrounding punctuation (case kept), without the tokens that were punctuation only. ``odd_words`` are
    the tokens that are not all letters (``str.isalpha`` false) and ``odd_bare`` the same stripped (empty
    strings kept): only those can differ from their stripped form, so filters that need word lengths or
    spellings without punctuation look at them alone rather than strip every word. ``lines`` are the
    non-empty lines, stripped; ``paragraphs`` are the blocks between blank lines, stripped. A filter that
    has counted ``word_chars`` on its way may set it, so that the next filter does not count it again.
    """

    def __init__(self, text: str) -> None:
        self.text = text

    @_once
    def words(self) -> list[str]:
        return self.text.split()

    @_once
    def bare_words(self) -> list[str]:
        # Every token stripped in C (methodcaller, filter): no Python frame per word.
        return list(filter(None, map(_STRIP_EDGES, self.words)))

    @_once
    def odd_words(self) -> list[str]:
        # Most words of prose are all letters, and stripping punctuation leaves them as they are (none of
        # the stripped characters is a letter).
        return list(filterfalse(str.isalpha, self.words))

    @_once
    def odd_bare(self) -> list[str]:
        return list(map(_STRIP_EDGES, self.odd_words))

    @_once
    def word_chars(self) -> int:
        """Characters in all the words (the text without its whitespace)."""
        return sum(map(len, self.words))

    @_once
    def lines(self) -> list[str]:
        return list(filter(None, map(str.strip, self.text.split("\n"))))

    @_once
    def paragraphs(self) -> list[str]:
        return list(filter(None, map(str.strip, _PARAGRAPH_BREAK.split(self.text))))


class TextViews:
    """The views of recent texts, so filters in one chain share the splitting work.

    Documents flow through a chain of generator steps one at a time or, for a filter that measures a
    batch at once (Gopher repetition), a batch at a time; the filters after it ask for the views of the
    same texts. Texts are recognised by identity; the most recent are kept up to ``max_chars`` characters
    in all (a view holds its text's words and lines too: about 25 bytes per character).
    """

    def __init__(self, max_chars: int = 2_000_000) -> None:
        self.max_chars = max_chars
        self._views: dict[int, TextView] = {}  # id(text) -> view
        self._age: deque[TextView] = deque()  # oldest first
        self._chars = 0

    def of(self, text: str) -> TextView:
        view = self._views.get(id(text))
        if view is not None and view.text is text:  # identity, not equality: it costs nothing
            return view
        view = TextView(text)
        self._views[id(text)] = view  # a view keeps its text alive, so an id is never reused under it
        self._age.append(view)
        self._chars += len(text)
        while self._chars > self.max_chars and len(self._age) > 1:
            old = self._age.popleft()
            self._chars -= len(old.text)
            if self._views.get(id(old.text)) is old:
                del self._views[id(old.text)]
        return view


@dataclass(frozen=True)
class Limit:
    """The range a signal must stay in; outside it the document is dropped with ``reason``."""

    reason: str
    low: float | None = None
    """Smallest value kept (inclusive); None: no lower bound."""
    high: float | None = None
    """Largest value kept (inclusive); None: no upper bound."""

    def broken_by(self, value: float) -> bool:
        return (self.low is not None and value < self.low) or (self.high is not None and value > self.high)


def fraction(part: float, whole: float) -> float:
    """``part / whole``, and 0.0 for an empty whole (an empty text has no bad lines, rather than NaN)."""
    return part / whole if whole else 0.0


def repeated(items: Sequence[str]) -> tuple[int, int]:
    """How many items repeat an earlier item, and how many characters those repeats hold."""
    if len(set(items)) == len(items):
        return 0, 0  # the common case, decided in C
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


class SignalFilter(Filter):
    """A filter that measures named signals and drops a document whose signal leaves its :class:`Limit`.

    Subclasses set ``limits`` (signal name -> limit) and implement :meth:`measure`, a generator that
    yields ``(name, value)`` in checking order, cheapest first: in the default mode the generator is
    abandoned at the first broken limit, so costly signals are computed only for documents that pass the
    cheap ones. A signal without a limit is only stored.
    """

    name = "signal_filter"
    limits: dict[str, Limit]

    def __init__(self, store_signals: bool = False, views: TextViews | None = None) -> None:
        self.store_signals = store_signals
        self.views = views if views is not None else TextViews()

    def measure(self, view: TextView) -> Iterator[tuple[str, float]]:
        raise NotImplementedError

    def reject(self, doc: Document) -> str | None:
        return self.verdict(doc, self.views.of(doc.text))

    def verdict(self, doc: Document, view: TextView) -> str | None:
        """:meth:`reject` for a caller that holds the document's view already."""
        if self.store_signals:  # every signal is measured: judge them once they are all in
            signals = dict(self.measure(view))
            doc.meta.setdefault("quality", {}).update(signals)
            return self.judge(signals)
        for name, value in self.measure(view):
            limit = self.limits.get(name)
            if limit is not None and limit.broken_by(value):
                return limit.reason
        return None

    def judge(self, signals: Mapping[str, float]) -> str | None:
        """Apply this filter's limits to signals stored earlier (``doc.meta["quality"]``): the reason of the
        first limit broken, in checking order (``limits`` lists them in the order ``measure`` yields them),
        or None. Signals that are missing are not checked."""
        for name, limit in self.limits.items():
            value = signals.get(name)
            if value is None:
                continue
            # Limit.broken_by inlined: this runs for every signal of every document.
            low, high = limit.low, limit.high
            if (low is not None and value < low) or (high is not None and value > high):
                return limit.reason
        return None
