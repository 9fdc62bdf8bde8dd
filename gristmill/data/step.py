"""The one step protocol every data stage shares.

Every reader, filter, deduplicator and writer is a :class:`Step`: a ``name`` and ``run(docs, stats)``,
a generator over documents, so steps compose and an executor can run any of them on any shard.

Steps that drop documents say why: they call ``stats.drop(doc, reason)``, which counts the reason and
hands the document to the quarantine sink, so every input record ends up in an output or a quarantine
file. Two small bases cover most steps: a :class:`TextMap` rewrites text and counts what it changed; a
:class:`Filter` says why it rejects a document. Steps that need state across documents (deduplication)
or that annotate (the split) implement ``run`` directly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from gristmill.formats.document import Document


@dataclass
class StepStats:
    """What one step saw, kept and dropped, and why; plus where dropped documents go."""

    name: str
    seen: int = 0
    kept: int = 0
    changed: int = 0
    """Kept documents whose text the step rewrote (normalisers, cleaners, redactors)."""
    dropped: Counter = field(default_factory=Counter)
    characters_in: int = 0
    """Characters of the documents it saw (counted by :func:`counted`; the run report's data funnel)."""
    characters_out: int = 0
    """Characters of the documents it kept, after any rewriting."""
    bytes_in: int = 0
    """UTF-8 bytes of the documents it saw (the data card's sizes)."""
    bytes_out: int = 0
    """UTF-8 bytes of the documents it kept, after any rewriting."""
    dropped_bytes: Counter = field(default_factory=Counter)
    """Reason -> UTF-8 bytes of the documents dropped for it (their text as the step saw it)."""
    quarantine: Callable[[Document, str, str], None] | None = None

    def drop(self, doc: Document, reason: str) -> None:
        self.dropped[reason] += 1
        self.dropped_bytes[reason] += utf8_len(doc.text)
        if self.quarantine is not None:
            self.quarantine(doc, self.name, reason)

    def add(self, counts: dict[str, Any]) -> None:
        """Add the counts of another run of the same step (an ``as_dict`` from another shard)."""
        for key in ("seen", "kept", "changed", "characters_in", "characters_out", "bytes_in", "bytes_out"):
            setattr(self, key, getattr(self, key) + int(counts.get(key, 0)))
        self.dropped.update(counts.get("dropped") or {})
        self.dropped_bytes.update(counts.get("dropped_bytes") or {})

    def as_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "kept": self.kept, "changed": self.changed,
                "dropped": dict(sorted(self.dropped.items())),
                "characters_in": self.characters_in, "characters_out": self.characters_out,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "dropped_bytes": dict(sorted(self.dropped_bytes.items()))}


def utf8_len(text: str) -> int:
    """Bytes of ``text`` in UTF-8, without encoding it when it is ASCII (``isascii`` is a flag lookup)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class Step(Protocol):
    """``run(docs, stats) -> docs``: a generator over documents."""

    name: str

    def run(self, docs: Iterable[Document], stats: StepStats) -> Iterator[Document]: ...


def counted(step: Step, docs: Iterable[Document], stats: StepStats) -> Iterator[Document]:
    """Run ``step`` over ``docs``, counting what goes in and what comes out (documents, characters and
    UTF-8 bytes; bytes cost an encoding only for text that is not ASCII)."""

    def _in() -> Iterator[Document]:
        for d in docs:
            stats.seen += 1
            stats.characters_in += len(d.text)
            stats.bytes_in += utf8_len(d.text)
            yield d

    for d in step.run(_in(), stats):
        stats.kept += 1
        stats.characters_out += len(d.text)
        stats.bytes_out += utf8_len(d.text)
        yield d


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
