"""The one record every data stage shares: a :class:`Document` with its provenance, and the one way to read
documents back.

collect and prepare write documents as numbered Parquet shards (``formats/shards.py``); synth, tokenize,
finetune and evaluate read them with :func:`read_documents`, which also reads a JSONL file of
``Document.to_json`` lines (the older layout, and what tests and users hand-write).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gristmill.core.jsonl import count_lines, read_jsonl
from gristmill.errors import InputError
from gristmill.formats import shards


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
    retrieved_at: str | None = None
    """When the text was retrieved (ISO 8601, UTC): a web page's capture or fetch time; for a local file its
    modification time, so that collecting the same files again gives the same bytes."""
    sha256: str | None = None
    """sha256 of the text as collected (UTF-8), hex: the content hash (set by collect)."""


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

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Document:
        """A document from a row of a Parquet shard (``meta`` is a JSON string there)."""
        return cls(id=row["id"], text=row["text"], source=row["source"],
                   provenance=Provenance(**(row["provenance"] or {"uri": "", "reader": ""})),
                   meta=shards.meta_from_column(row.get("meta")))


DEFAULT_SPLIT = "documents"
"""What collect writes; prepare writes ``train``, ``val`` (and ``dropped``)."""


def document_files(where: Path, split: str | None = None) -> list[Path]:
    """The files that hold a split's documents: its Parquet shards, else ``<split>.jsonl`` (the older
    layout), else a file named directly. An InputError, with the command to run, if there are none."""
    where = Path(where)
    if where.is_file():
        return [where]
    name = split or DEFAULT_SPLIT
    found = shards.list_shards(shards.split_folder(where, name))
    if found or (where / shards.DONE).is_dir() or (where / name).is_dir():
        return found  # a written split may have no shards at all: no documents
    legacy = where / f"{name}.jsonl"
    if legacy.is_file():
        return [legacy]
    raise InputError(f"{where} has no '{name}' documents (neither {name}/*.parquet nor {name}.jsonl): re-run "
                     f"the stage that writes them (`gristmill {where.name} RECIPE`)")


def read_documents(where: Path, split: str | None = None) -> Iterator[Document]:
    """Every document of a stage's split, in order: ``read_documents(run / "prepare", "train")``.

    ``where`` is a stage folder (``split`` names the shard folder: ``documents`` by default, ``train``,
    ``val``), one Parquet shard, or a JSONL file of ``Document.to_json`` lines. Streams a batch at a time.
    A bad JSONL line is an InputError naming ``file:line``; a damaged shard one naming the shard.
    """
    for path in document_files(where, split):
        if path.suffix == shards.SHARD_SUFFIX:
            for row in shards.iter_rows([path]):
                yield Document.from_row(row)
        else:
            yield from _read_jsonl_documents(path)


def count_documents(where: Path, split: str | None = None) -> int:
    """How many documents a split holds (from the shards' footers, or the JSONL files' non-blank lines:
    nothing is parsed)."""
    files = document_files(where, split)
    parquet = [p for p in files if p.suffix == shards.SHARD_SUFFIX]
    return shards.count_rows(parquet) + sum(count_lines(p) or 0 for p in files if p not in parquet)


def read_quarantine(where: Path, split: str = "quarantine") -> Iterator[dict[str, Any]]:
    """The ``{"step", "reason", "document"}`` records of a quarantine split (collect's ``quarantine``,
    prepare's ``dropped``); ``document`` is a dict with ``meta`` decoded."""
    for path in document_files(where, split):
        if path.suffix == shards.SHARD_SUFFIX:
            for row in shards.iter_rows([path]):
                doc = dict(row["document"] or {})
                doc["meta"] = shards.meta_from_column(doc.get("meta"))
                yield {"step": row["step"], "reason": row["reason"], "document": doc}
        else:
            for _, rec in read_jsonl(path):
                yield rec


def _read_jsonl_documents(path: Path) -> Iterator[Document]:
    for lineno, rec in read_jsonl(path, hint="re-run the stage that wrote it"):
        try:
            yield Document.from_dict(rec)
        except (KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{path}:{lineno} is not a valid document record (problem with {e})") from None
