"""The prepare steps. Each is a :class:`gristmill.data.Step`: ``name`` and ``run(docs, stats)``, a
generator that yields the documents it keeps and hands each one it drops to ``stats.drop(doc, reason)``.

Two small bases cover most steps: a :class:`TextMap` rewrites text (normalisers, cleaners, and later PII
redaction) and counts what it changed; a :class:`Filter` says why it rejects a document (length, and later
language, quality or decontamination). Steps that need state across documents (deduplication) or that
annotate (the split) implement ``run`` directly.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Iterator

from gristmill.data import Document, StepStats


class TextMap:
    """A step that rewrites each document's text; ``stats.changed`` counts the documents it altered."""

    name = "text_map"

    def apply(self, text: str) -> str:
        raise NotImplementedError

    def run(self, docs: Iterable[Document], stats: StepStats) -> Iterator[Document]:
        for doc in docs:
            text = self.apply(doc.text)
            if text != doc.text:
                doc.text = text
                stats.changed += 1
            yield doc


class Filter:
    """A step that keeps or drops each document on its own; ``reject`` returns the reason, or None to keep."""

    name = "filter"

    def reject(self, doc: Document) -> str | None:
        raise NotImplementedError

    def run(self, docs: Iterable[Document], stats: StepStats) -> Iterator[Document]:
        for doc in docs:
            reason = self.reject(doc)
            if reason is None:
                yield doc
            else:
                stats.drop(doc, reason)


# Project Gutenberg boilerplate. Modern texts frame the work with "*** START OF THE PROJECT GUTENBERG
# EBOOK X ***" ... "*** END OF THE PROJECT GUTENBERG EBOOK X ***" (often preceded by "End of the Project
# Gutenberg EBook of X"); 1990s etexts end their licence header with "*END*THE SMALL PRINT! ... *END*" and
# close with "End of [this] Project Gutenberg Etext of X".
_GUTENBERG_START = re.compile(
    r"^[ \t]*(?:\*{3}[ \t]*START OF (?:THE |THIS )?PROJECT GUTENBERG|\*END\*THE SMALL PRINT!).*$",
    re.IGNORECASE | re.MULTILINE,
)
_GUTENBERG_END = re.compile(
    r"^[ \t]*(?:\*{3}[ \t]*END OF (?:THE |THIS )?PROJECT GUTENBERG"
    r"|End of (?:the |this )?Project Gutenberg|End of (?:the |this )?Etext of).*$",
    re.IGNORECASE | re.MULTILINE,
)


class StripGutenberg(TextMap):
    """Keep only the text between Project Gutenberg's start and end markers (either may be missing)."""

    name = "strip_gutenberg"

    def apply(self, text: str) -> str:
        start = _GUTENBERG_START.search(text)
        if start is not None:
            text = text[start.end():]
        end = _GUTENBERG_END.search(text)
        if end is not None:
            text = text[: end.start()]
        return text


class NormalizeUnicode(TextMap):
    """Unicode normalisation (NFC or NFKC), so equal-looking text has equal code points."""

    name = "normalize_unicode"

    def __init__(self, form: str):
        self.form = form

    def apply(self, text: str) -> str:
        if unicodedata.is_normalized(self.form, text):  # fast path: most text already is
            return text
        return unicodedata.normalize(self.form, text)


# C0 and C1 control characters except \t and \n. The line-break controls (\v, \f, \r, \x1c-\x1e, \x85)
# have been turned into \n before this runs.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")
_TRAILING_SPACE = re.compile(r"[^\S\n]+$", re.MULTILINE)
_BLANK_RUN = re.compile(r"\n{3,}")


class CleanWhitespace(TextMap):
    """Line breaks to \\n, no control characters but \\n and \\t, no trailing spaces, at most one blank
    line in a row, nothing at either end. Leading indentation inside the text is kept (verse, code)."""

    name = "clean_whitespace"

    def apply(self, text: str) -> str:
        # splitlines knows every line boundary: \r\n, \r, \v, \f, \x1c-\x1e, \x85, \u2028, \u2029.
        text = "\n".join(text.splitlines())
        text = _CONTROL.sub("", text)
        text = _TRAILING_SPACE.sub("", text)
        text = _BLANK_RUN.sub("\n\n", text)
        return text.strip()


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


def text_hash(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class ExactDedup:
    """Drop a document whose text equals an earlier one's (``duplicate``; ``meta.duplicate_of`` names the
    kept document). Memory: one 32-byte hash and an id per distinct document."""

    name = "dedup"

    def run(self, docs: Iterable[Document], stats: StepStats) -> Iterator[Document]:
        first: dict[bytes, str] = {}
        for doc in docs:
            h = text_hash(doc.text)
            kept_id = first.get(h)
            if kept_id is None:
                first[h] = doc.id
                yield doc
            else:
                doc.meta["duplicate_of"] = kept_id
                stats.drop(doc, "duplicate")


def split_of(doc_id: str, val_fraction: float) -> str:
    """``train`` or ``val`` from the document id alone: a uniform number in [0, 1) from its hash.

    Raising ``val_fraction`` only ever moves documents from train to val, never the other way.
    """
    u = int.from_bytes(hashlib.sha256(f"split\x00{doc_id}".encode()).digest()[:8], "big") / 2**64
    return "val" if u < val_fraction else "train"


class AssignSplit:
    """Record each document's split in ``meta["split"]`` (``train`` or ``val``); drops nothing."""

    name = "split"

    def __init__(self, val_fraction: float):
        self.val_fraction = val_fraction

    def run(self, docs: Iterable[Document], stats: StepStats) -> Iterator[Document]:
        for doc in docs:
            doc.meta["split"] = split_of(doc.id, self.val_fraction)
            yield doc
