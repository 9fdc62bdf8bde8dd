"""C4's clean-up rules (Raffel et al. 2020, "Exploring the Limits of Transfer Learning", section 2.2).

C4 made web pages into prose line by line: it kept only lines that end in terminal punctuation and hold at
least 3 words, removed lines mentioning JavaScript (the "please enable JavaScript" notices) and the
cookie and privacy-policy notices, removed Wikipedia-style citation marks (``[1]``, ``[edit]``), and then
dropped whole pages that still had fewer than 5 sentences, that contained "lorem ipsum" (placeholder
text) or a curly bracket (code). :class:`C4Filter` does both halves in one step: it rewrites the text of
the documents it keeps (counted in ``stats.changed``; the lines it removed are counted by reason in
``lines_removed``) and drops the others with a reason, leaving their text as it came so the quarantine
shows what was judged.

Sentences are counted with a punctuation rule (a run of ``.``, ``!``, ``?`` or ``…``, optionally closed
by quotes or brackets, then a space or the end), not a trained sentence splitter, so "Mr. Smith" counts
two; the 5-sentence floor is loose enough for that.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import ClassVar, Literal

from pydantic import Field

from gristmill.core.config import Config
from gristmill.curate.text import TERMINAL_PUNCT, Limit, SignalFilter
from gristmill.data.step import StepStats
from gristmill.formats.document import Document

# Notices C4 removed line by line (lower-cased substrings).
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                  "use cookies")
_POLICY = re.compile("|".join(map(re.escape, POLICY_PHRASES)))
_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u2019\u201d)\]]*(?=\s|$)")


class C4Step(Config):
    """C4's line clean-up and page rules. Defaults are the published C4 settings."""

    type: Literal["c4"] = "c4"
    """``c4``."""
    min_words_per_line: int = Field(default=3, ge=0, le=1000)
    """Remove lines with fewer whitespace-separated words than this (line reason ``too_few_words``)."""
    max_word_length: int = Field(default=1000, ge=1, le=1_000_000)
    """Remove lines holding a word longer than this many characters (line reason ``long_word``)."""
    terminal_punct: bool = True
    """Remove lines that do not end in terminal punctuation: ``. ! ? " ' ” ’ …`` (line reason
    ``no_terminal_punct``)."""
    javascript_lines: bool = True
    """Remove lines containing the word "javascript", any case (line reason ``javascript``)."""
    policy_lines: bool = True
    """Remove cookie, privacy-policy and terms-of-use notices (line reason ``policy``)."""
    remove_citations: bool = True
    """Delete citation marks such as ``[1]``, ``[edit]`` and ``[citation needed]`` from lines."""
    lorem_ipsum: bool = True
    """Drop documents containing "lorem ipsum", any case (reason ``lorem_ipsum``)."""
    curly_bracket: bool = True
    """Drop documents containing ``{``, a sign of code (reason ``curly_bracket``)."""
    min_sentences: int = Field(default=5, ge=0, le=100_000)
    """Drop documents with fewer sentences than this after the line clean-up (reason ``too_few_sentences``)."""
    min_lines: int = Field(default=0, ge=0, le=100_000)
    """Drop documents with fewer lines than this after the line clean-up (reason ``too_few_lines``); C4 has
    no such rule (0), 3 is a common stricter choice."""
    store_signals: bool = True
    """Store the signals in ``meta.quality`` (``c4_sentences``, ``c4_lines``, ``c4_lines_removed``,
    ``c4_lorem_ipsum``, ``c4_curly_bracket``), so thresholds can be applied again later."""

    REASON_KEYS: ClassVar[dict[str, str]] = {
        "lorem_ipsum": "lorem_ipsum", "curly_bracket": "curly_bracket",
        "too_few_sentences": "min_sentences (or terminal_punct: false for verse and lists)",
        "too_few_lines": "min_lines"}


class C4Filter(SignalFilter):
    """Remove the lines C4 removes, then drop the pages C4 drops (see the module docstring).

    ``apply(text)`` is the line clean-up alone; ``run`` cleans each document, decides on the cleaned text
    and rewrites only the documents it keeps. ``lines_removed`` counts, by reason, the lines removed from
    kept documents over the step's life; :meth:`summary` reports it.
    """

    name = "c4"

    def __init__(self, cfg: C4Step | None = None) -> None:
        cfg = cfg if cfg is not None else C4Step()
        super().__init__(cfg.store_signals)
        self.cfg = cfg
        self.lines_removed: Counter[str] = Counter()
        self.limits = {}
        if cfg.lorem_ipsum:
            self.limits["c4_lorem_ipsum"] = Limit("lorem_ipsum", high=0)
        if cfg.curly_bracket:
            self.limits["c4_curly_bracket"] = Limit("curly_bracket", high=0)
        self.limits["c4_sentences"] = Limit("too_few_sentences", low=cfg.min_sentences)
        self.limits["c4_lines"] = Limit("too_few_lines", low=cfg.min_lines)

    def line_reason(self, line: str, javascript: bool = True, policy: bool = True) -> str | None:
        """Why C4 removes this (stripped, citation-free) line, or None to keep it. ``javascript`` and
        ``policy`` false: the text holds no such notice, those checks are skipped."""
        cfg = self.cfg
        m = cfg.min_words_per_line
        # Split off at most m words: a line with at least m words gives m pieces (the last one the rest of
        # the line), so a long line is not split whole just to be counted.
        if m and len(line.split(None, m - 1)) < m:
            return "too_few_words"
        if cfg.terminal_punct and not line.endswith(TERMINAL_PUNCT):
            return "no_terminal_punct"
        if len(line) > cfg.max_word_length and max(map(len, line.split())) > cfg.max_word_length:
            return "long_word"  # (a line no longer than the limit cannot hold a longer word)
        if javascript or policy:
            lower = line.lower()
            if javascript and cfg.javascript_lines and "javascript" in lower:
                return "javascript"
            if policy and cfg.policy_lines and _POLICY.search(lower):
                return "policy"
        return None

    def clean(self, text: str, lower: str | None = None) -> tuple[str, Counter[str]]:
        """The kept lines joined by newlines (blank lines go too), and the removed lines counted by reason.
        ``lower``: ``text.lower()`` if the caller has it already."""
        kept: list[str] = []
        removed: Counter[str] = Counter()
        cfg = self.cfg
        # Notices are rare: look for them in the whole text once, and line by line only if it has one.
        if lower is None:
            lower = text.lower() if cfg.javascript_lines or cfg.policy_lines else ""
        javascript = cfg.javascript_lines and "javascript" in lower
        # A plain substring search per phrase: the same answer as _POLICY.search, several times faster on a
        # whole text (the regex tries its alternatives at every position).
        policy = cfg.policy_lines and any(phrase in lower for phrase in POLICY_PHRASES)
        citations = cfg.remove_citations and "[" in text
        m, punct, longest = cfg.min_words_per_line, cfg.terminal_punct, cfg.max_word_length
        notices = javascript or policy
        # Stripped and blank lines skipped in C (map, filter): no Python step for them.
        for line in filter(None, map(str.strip, text.split("\n"))):
            if citations and "[" in line:
                line = _CITATION.sub("", line).strip()
            # The common verdicts inline (no call per line), in line_reason's order; the rare checks
            # (long words, notices) through it.
            if m and len(line.split(None, m - 1)) < m:
                removed["too_few_words"] += 1
            elif punct and not line.endswith(TERMINAL_PUNCT):
                removed["no_terminal_punct"] += 1
            elif len(line) > longest or notices:
                reason = self.line_reason(line, javascript, policy)
                if reason is None:
                    kept.append(line)
                else:
                    removed[reason] += 1
            else:
                kept.append(line)
        return "\n".join(kept), removed

    def apply(self, text: str) -> str:
        return self.clean(text)[0]

    def signals(self, text: str, cleaned: str, removed: Counter[str], lower: str | None = None) -> dict[str, float]:
        """The document's signals, from its text, its cleaned text and the lines removed; ``lower``:
        ``text.lower()`` if the caller has it already."""
        if lower is None:
            lower = text.lower()
        return {
            "c4_lorem_ipsum": float("lorem ipsum" in lower),
            "c4_curly_bracket": float("{" in text),
            "c4_sentences": len(_SENTENCE_END.findall(cleaned)),
            "c4_lines": cleaned.count("\n") + 1 if cleaned else 0,
            "c4_lines_removed": sum(removed.values()),
        }

    def reject(self, doc: Document) -> str | None:
        """The reason C4 drops this document (judged on its cleaned text), or None; the text is left as it is."""
        lower = doc.text.lower()
        cleaned, removed = self.clean(doc.text, lower)
        return self._decide(doc, cleaned, removed, lower)

    def _decide(self, doc: Document, cleaned: str, removed: Counter[str], lower: str) -> str | None:
        signals = self.signals(doc.text, cleaned, removed, lower)
        if self.store_signals:
            doc.meta.setdefault("quality", {}).update(signals)
        return self.judge(signals)

    def run(self, docs: Iterable[Document], stats: StepStats) -> Iterator[Document]:
        for doc in docs:
            lower = doc.text.lower()  # for the notices and for lorem ipsum: lower-cased once
            cleaned, removed = self.clean(doc.text, lower)
            reason = self._decide(doc, cleaned, removed, lower)
            if reason is not None:
                stats.drop(doc, reason)
                continue
            self.lines_removed.update(removed)
            if cleaned != doc.text:
                doc.text = cleaned
                stats.changed += 1
            yield doc

    def summary(self) -> dict[str, int]:
        """Lines removed from kept documents so far, by reason (``too_few_words``, ``no_terminal_punct``,
        ``long_word``, ``javascript``, ``policy``)."""
        return dict(sorted(self.lines_removed.items()))
