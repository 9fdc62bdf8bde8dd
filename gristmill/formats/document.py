"""The one record every data stage shares: a :class:`Document` with its provenance.

Collect writes documents, prepare reads and writes them, synth and tokenize read them: one JSON object
per line (``Document.to_json``), read back with :func:`read_documents`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gristmill.core.jsonl import read_jsonl
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


def read_documents(path: Path) -> Iterator[Document]:
    """The documents of a JSONL file written with ``Document.to_json``; a bad line is an InputError
    naming ``file:line``."""
    for lineno, rec in read_jsonl(path, hint="re-run the stage that wrote it"):
        try:
            yield Document.from_dict(rec)
        except (KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{path}:{lineno} is not a valid document record (problem with {e})") from None
