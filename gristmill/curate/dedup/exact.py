"""Exact deduplication: the same text (after cleaning) is kept once."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import Literal

from gristmill.core.config import Config
from gristmill.data.step import StepStats
from gristmill.formats.document import Document


class ExactDedupStep(Config):
    """Drop exact duplicates (same text after the steps before), keeping the first occurrence."""

    type: Literal["dedup"] = "dedup"
    """``dedup``."""


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
