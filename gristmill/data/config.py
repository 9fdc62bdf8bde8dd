"""The collect stage's config: a list of named sources, each read by the reader its ``type`` names, and how
the work is run (local processes or Ray).

Each source type has its own config class with only the keys that type reads, so ``gristmill show``
prints a wiki source with ``skip_sections`` and a files source without it. The web sources (``warc``,
``crawl``) are in ``web_config.py``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from gristmill.core.config import Config, tagged_union
from gristmill.data.source_config import SourceBase, SourceConfig
from gristmill.data.web_config import CrawlSource, WarcSource

__all__ = ["SourceBase", "SourceConfig", "FilesSource", "MediaWikiSource", "HubSource", "CollectConfig",
           "ExecutorOptions", "SOURCE_CLASSES"]

DEFAULT_SKIP_SECTIONS = ("See also", "References", "External links", "Further reading", "Notes", "Footnotes",
                         "Bibliography", "Sources", "Citations", "Notes and references")
FILE_FORMATS = ("auto", "text", "jsonl", "csv", "parquet")


class TableFields(Config):
    """Which fields of a record hold its text and what else of it is kept (tables and datasets)."""

    text_field: str = Field("text", min_length=1)
    """The field (JSON key, CSV column, Parquet or dataset column) that holds each record's text."""
    title_field: str | None = "title"
    """The field that holds a record's title, kept in its provenance if present; None: none."""
    license_field: str | None = None
    """A field that holds each record's own licence (recorded instead of the source's ``license``)."""
    metadata_fields: list[str] = []
    """Other fields kept with each document, in its ``meta`` (e.g. ``[book, chapter]``). A record that lacks
    one is kept; the field is left out of its meta."""


class FilesSource(TableFields, SourceConfig):
    """Local files: text, JSONL, CSV and Parquet, plain or compressed (.gz, .bz2, .xz, .zst)."""

    type: Literal["files"] = "files"
    """``files``: text files (one document per file, or per record with ``delimiter``), JSONL (one per
    line), CSV/TSV (one per row) and Parquet (one per row)."""
    format: Literal["auto", "text", "jsonl", "csv", "parquet"] = "auto"
    """How files are read. ``auto``: by extension (.txt/.md/.rst: text; .jsonl/.ndjson: JSONL; .csv/.tsv:
    CSV; .parquet), and a file with no or another extension by its content: text is read, binary data is
    quarantined as ``binary``. ``text``, ``jsonl``, ``csv``, ``parquet``: every file in that format."""
    delimiter: str | None = Field(None, min_length=1, pattern=r"^[^\r\n]+$")
    """For text files: split each file into records at lines holding only this string (trailing
    whitespace ignored), e.g. ``"%"`` for fortune files; None: one document per file."""
    max_record_bytes: int = Field(64_000_000, ge=1024, le=2_000_000_000)
    """A record (a text file, a line, a row) larger than this many bytes is quarantined as ``too_large``
    without being held in memory."""


class MediaWikiSource(SourceConfig):
    """MediaWiki XML dumps (``pages-articles*.xml[.bz2|.gz]``), one document per article."""

    type: Literal["mediawiki"]
    """``mediawiki``: XML dumps, plain or .bz2/.gz compressed, one document per article."""
    skip_sections: list[str] = list(DEFAULT_SKIP_SECTIONS)
    """Article sections left out, by heading (case-insensitive), with their subsections. The defaults are
    the link and citation lists at the end of an article; [] keeps all."""


class HubSource(TableFields, SourceConfig):
    """A Hugging Face ``datasets`` dataset: saved to disk, local data files, or a name on the Hub."""

    type: Literal["huggingface"]
    """``huggingface``: a folder written by ``save_to_disk``, local data files (.parquet, .jsonl/.json,
    .csv, .txt; a glob) read with the datasets library, or a Hub name (``user/dataset``), which needs a
    network: offline, it fails at once saying so."""
    subset: str | None = None
    """The dataset's configuration (subset) name, if it has several."""
    split: str = Field("train", min_length=1)
    """Which split to read (a saved dataset with a single split ignores it)."""
    revision: str | None = None
    """For a Hub name: the branch, tag or commit to read (pin it for a reproducible run)."""


SOURCE_CLASSES: dict[str, type[SourceBase]] = {"files": FilesSource, "mediawiki": MediaWikiSource,
                                               "huggingface": HubSource, "warc": WarcSource,
                                               "crawl": CrawlSource}
"""Source type -> its config class (the ``type`` key picks one; a source without ``type`` is ``files``)."""


AnySource = tagged_union(*SOURCE_CLASSES.values(), default="files")


def _source_type(v: Any) -> str:
    return v.get("type", "files") if isinstance(v, dict) else getattr(v, "type", "files")


class ExecutorOptions(Config):
    """How a data stage's work is spread: local processes or a Ray cluster. These keys change how fast a
    stage runs, never what it writes, so changing them does not re-run a finished stage."""

    executor: Literal["local", "ray"] = "local"
    """``local``: a pool of processes on this machine; ``ray``: Ray tasks (the ``ray`` extra), on the
    cluster at ``ray_address`` or on a local Ray started for the run."""
    workers: int | None = Field(None, ge=1, le=4096)
    """Processes (or Ray tasks) at once; None: one per CPU core (input under 16 MB is then read in this
    process). With 1, or a single input shard, the work runs in this process. ``--workers N`` on the
    command line sets it."""
    ray_address: str | None = None
    """For ``executor: ray``: the address of a running cluster (``ray://host:10001`` or ``auto``); None
    starts a local Ray with ``workers`` CPUs. Every node must have Gristmill and the run's files."""


RUNTIME_KEYS = ("executor", "workers", "ray_address")
"""The ExecutorOptions keys: left out of the stage's cache key."""


class CollectConfig(ExecutorOptions):
    """Which sources to read into the document store (``collect/documents/*.parquet``)."""

    sources: list[AnySource] = []
    """The inputs, read in order; each becomes documents tagged with the source's name. Each has a
    ``type`` (default ``files``) that decides which other keys it takes."""
    input_shard_mb: float = Field(64.0, gt=0, le=1_000_000)
    """A source's files are grouped, in order, into input shards of about this many MB (a file is never
    split); each input shard is one unit of work and becomes one numbered output shard. Changing it
    changes the output's sharding, not its documents."""

    @field_validator("sources", mode="before")
    @classmethod
    def _known_types(cls, v: Any) -> Any:
        # Checked before the union so that the error names the source and its path.
        for i, s in enumerate(v if isinstance(v, list) else []):
            if isinstance(s, dict) and _source_type(s) not in SOURCE_CLASSES:
                name, path = s.get("name", f"#{i}"), s.get("path", "?")
                raise ValueError(f"source '{name}' ({path}) has unknown type {_source_type(s)!r}; use one "
                                 f"of: {', '.join(SOURCE_CLASSES)}")
        return v

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceBase]) -> list[SourceBase]:
        seen: set[str] = set()
        for s in sources:
            if s.name in seen:
                raise ValueError(f"two sources are named '{s.name}'; give each source its own name")
            seen.add(s.name)
        return sources
