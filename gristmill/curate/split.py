"""The train/validation split, decided by a hash of each document's id."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from gristmill.data.step import StepStats
from gristmill.formats.document import Document


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
