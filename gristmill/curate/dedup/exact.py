"""Exact deduplication: the same text (after cleaning) is kept once, as a whole document or, optionally,
line by line or paragraph by paragraph across documents (the boilerplate pages of one site repeat: menus,
cookie notices, signatures)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from typing import ClassVar, Literal

from pydantic import Field

from gristmill.core.config import Config
from gristmill.data.step import StepStats
from gristmill.formats.document import Document


class ExactDedupStep(Config):
    """Drop exact duplicates (same text after the steps before), keeping the first occurrence; or, with
    ``unit: line`` or ``paragraph``, cut lines or paragraphs that an earlier document already had."""

    type: Literal["dedup"] = "dedup"
    """``dedup``."""
    unit: Literal["document", "line", "paragraph"] = "document"
    """What must be unique. ``document``: a later copy of a whole text is dropped (``duplicate``). ``line``
    (split at newlines) or ``paragraph`` (split at blank lines): a line or paragraph that any earlier
    document had (compared without surrounding whitespace) is cut from the later one, whose other text
    stays (repeats within one document are the repetition filters' business); a document left with nothing but blank lines is dropped (``duplicate_lines`` /
    ``duplicate_paragraphs``). Memory: about 70 bytes per distinct line or paragraph."""
    min_chars: int = Field(0, ge=0, le=100_000)
    """With ``unit: line`` or ``paragraph``: shorter ones (without surrounding whitespace) are never cut,
    since short lines such as a speaker's name or ``Exit.`` repeat in real text."""

    REASON_KEYS: ClassVar[dict[str, str]] = {"duplicate_lines": "unit", "duplicate_paragraphs": "unit"}


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


_SPLIT = {"line": re.compile(r"(\n)"), "paragraph": re.compile(r"(\n[ \t\r\f\v]*\n\s*)")}
"""Each unit's splitter; the capturing group keeps the separators, so a text with nothing cut is rebuilt
as it was."""


class UnitDedup:
    """Cut every line (or paragraph) that an earlier document had (repeats within one document are left to
    the repetition filters); ``meta.duplicate_<unit>s_cut`` counts what a document lost. A document left
    empty is dropped."""

    name = "dedup"

    def __init__(self, unit: Literal["line", "paragraph"], min_chars: int = 0) -> None:
        self.unit, self.min_chars = unit, min_chars
        self._split = _SPLIT[unit]

    def run(self, docs: Iterable[Document], stats: StepStats) -> Iterator[Document]:
        seen: set[int] = set()  # hashes of the stripped units (64-bit: a collision is a 1-in-10^19 event)
        min_chars = self.min_chars
        for doc in docs:
            parts = self._split.split(doc.text)  # unit, separator, unit, ..., unit
            kept: list[str] = []
            cut = 0
            mine: set[int] = set()  # this document's units, seen by the documents after it
            for i in range(0, len(parts), 2):
                key = parts[i].strip()
                if key and len(key) >= min_chars:
                    h = hash(key)
                    if h in seen:
                        cut += 1
                        continue
                    mine.add(h)
                kept.append(parts[i])
                if i + 1 < len(parts):
                    kept.append(parts[i + 1])
            seen |= mine
            if not cut:
                yield doc
                continue
            doc.meta[f"duplicate_{self.unit}s_cut"] = cut
            text = "".join(kept)
            if not text.strip():
                stats.drop(doc, f"duplicate_{self.unit}s")
                continue
            stats.changed += 1
            doc.text = text.rstrip() + ("\n" if doc.text.endswith("\n") else "")
            yield doc
