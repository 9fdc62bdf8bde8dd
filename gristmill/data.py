"""The one record and the one step protocol that every data stage shares.

A :class:`Document` flows through collection and preparation. Every reader, filter, deduplicator and
writer is a :class:`Step`: a callable that takes an iterable of documents and yields documents, so steps
compose as generators and an executor can run any of them on any shard.

Steps that drop documents say why: they call ``stats.drop(doc, reason)``, which counts the reason and
hands the document to the quarantine sink, so every input record ends up in an output or a quarantine
file.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gristmill.errors import InputError


@dataclass(slots=True)
class Provenance:
    """Where a document came from."""

    uri: str
    """Path or URL of the file, page or record the text was read from."""
    reader: str
    """Which reader produced the document (``files``, ``mediawiki`` ...)."""
    title: str | None = None
    """Page or work title, where the source has one."""
    license: str | None = None
    """Licence of the text, where known (e.g. ``CC BY-SA 3.0`` for Wikipedia)."""
    record: str | None = None
    """Position of the record inside ``uri``: a line number, page id or archive offset."""


@dataclass(slots=True)
class Document:
    """One unit of text with its identity and provenance."""

    id: str
    """Stable id: the same input gives the same id on every run."""
    text: str
    source: str
    """Name of the recipe source this document came from."""
    provenance: Provenance
    meta: dict[str, Any] = field(default_factory=dict)
    """Annotations added by steps (split, quality scores, language ...), JSON-serialisable."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Document:
        return cls(
            id=d["id"],
            text=d["text"],
            source=d["source"],
            provenance=Provenance(**d["provenance"]),
            meta=dict(d.get("meta") or {}),
        )


@dataclass
class StepStats:
    """What one step saw, kept and dropped, and why; plus where dropped documents go."""

    name: str
    seen: int = 0
    kept: int = 0
    changed: int = 0
    """Kept documents whose text the step rewrote (normalisers, cleaners, redactors)."""
    dropped: Counter = field(default_factory=Counter)
    quarantine: Callable[[Document, str, str], None] | None = None

    def drop(self, doc: Document, reason: str) -> None:
        self.dropped[reason] += 1
        if self.quarantine is not None:
            self.quarantine(doc, self.name, reason)

    def as_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "kept": self.kept, "changed": self.changed,
                "dropped": dict(sorted(self.dropped.items()))}


class Step(Protocol):
    """``run(docs, stats) -> docs``: a generator over documents."""

    name: str

    def run(self, docs: Iterable[Document], stats: StepStats) -> Iterator[Document]: ...


def counted(step: Step, docs: Iterable[Document], stats: StepStats) -> Iterator[Document]:
    """Run ``step`` over ``docs``, counting what goes in and what comes out."""

    def _in() -> Iterator[Document]:
        for d in docs:
            stats.seen += 1
            yield d

    for d in step.run(_in(), stats):
        stats.kept += 1
        yield d


def read_documents(path: Path) -> Iterator[Document]:
    """Read a JSONL file of documents written by :func:`gristmill.workspace.JsonlWriter`."""
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read documents from {path}: {e.strerror}") from e
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Document.from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError) as e:
                raise InputError(f"{path}:{lineno} is not a valid document record ({e})") from e
