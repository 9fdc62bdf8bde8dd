"""The sharded document store: how collect and prepare lay out their documents on disk, and the schema.

A stage folder holds one folder per split, each a set of numbered Parquet shards (zstd), and a ``done/``
folder of completion markers, one per unit of work::

    collect/documents/00000.parquet  00001.parquet ...     Documents
    collect/quarantine/00000.parquet ...                   what could not be read, with the reason
    collect/done/00000.json ...                            one marker per input shard (its key and stats)
    prepare/train/00000.parquet  prepare/val/...  prepare/dropped/...

A documents shard has one row per :class:`~gristmill.formats.document.Document`, with typed columns:
``id``, ``text``, ``source`` (strings), ``provenance`` (a struct of strings: ``uri``, ``reader``,
``title``, ``license``, ``record``, ``retrieved_at``, ``sha256``) and ``meta`` (the annotations as a
JSON object in a string, since steps add keys of any type). A quarantine shard has ``step``, ``reason``
and ``document`` (a struct with the same fields), the shape of one line of the older JSONL quarantine
files. Both are plain Parquet: pandas, pyarrow, DuckDB, Polars and ``datasets.load_dataset("parquet",
data_files=".../documents/*.parquet")`` read them as they are.

A shard is written under a temporary name and renamed when complete; a marker is written after the
shards it names. A shard without a marker is from a run that stopped: the executor makes it again.
pyarrow is imported by the functions that need it, so importing this module stays light.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from gristmill.core.jsonl import loads
from gristmill.core.workspace import read_json, write_json
from gristmill.errors import InputError

SHARD_SUFFIX = ".parquet"
DONE = "done"
"""The folder of completion markers inside a stage folder."""
PROVENANCE_FIELDS = ("uri", "reader", "title", "license", "record", "retrieved_at", "sha256")
"""The provenance struct's fields, in column order (the same as :class:`Provenance`'s)."""
DOCUMENT_FIELDS = ("id", "text", "source", "provenance", "meta")
READ_BATCH_ROWS = 2048
"""Rows decoded at a time when reading a shard: memory stays flat whatever the shard's size."""


def shard_name(index: int) -> str:
    """``7`` -> ``00007.parquet``."""
    return f"{index:05d}{SHARD_SUFFIX}"


def shard_index(path: Path) -> int | None:
    """``.../00007.parquet`` -> 7; None for a name that is not a shard's."""
    stem = path.name[: -len(SHARD_SUFFIX)] if path.name.endswith(SHARD_SUFFIX) else ""
    return int(stem) if stem.isdigit() else None


def list_shards(folder: Path) -> list[Path]:
    """The shards in a split folder, in order (temporaries and other files left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(i, p) for p in folder.iterdir() if (i := shard_index(p)) is not None and p.is_file()]
    return [p for _, p in sorted(found)]


# -- schema ------------------------------------------------------------------------------------------------


def provenance_type() -> Any:
    import pyarrow as pa

    return pa.struct([pa.field(f, pa.string()) for f in PROVENANCE_FIELDS])


def document_schema() -> Any:
    import pyarrow as pa

    return pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("text", pa.string(), nullable=False),
                      pa.field("source", pa.string(), nullable=False), pa.field("provenance", provenance_type()),
                      pa.field("meta", pa.string())])


def quarantine_schema() -> Any:
    import pyarrow as pa

    doc = pa.struct([pa.field(f.name, f.type) for f in document_schema()])
    return pa.schema([pa.field("step", pa.string()), pa.field("reason", pa.string()), pa.field("document", doc)])


# -- completion markers ------------------------------------------------------------------------------------


def marker_path(stage_dir: Path, index: int) -> Path:
    return Path(stage_dir) / DONE / f"{index:05d}.json"


def read_marker(stage_dir: Path, index: int) -> dict[str, Any] | None:
    """The marker of unit ``index``, or None if there is none (or it is unreadable: the unit runs again)."""
    path = marker_path(stage_dir, index)
    if not path.is_file():
        return None
    try:
        marker = read_json(path)
    except InputError:
        return None
    return marker if isinstance(marker, dict) else None


def write_marker(stage_dir: Path, index: int, marker: dict[str, Any]) -> None:
    write_json(marker_path(stage_dir, index), marker)


# -- reading -----------------------------------------------------------------------------------------------


def split_folder(where: Path, split: str) -> Path:
    return Path(where) / split


def _open_parquet(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(f"{path} is not a readable Parquet shard ({e}); re-run the stage that wrote it") from None


def iter_rows(paths: list[Path], columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """The rows of Parquet files, in order, as dicts, a batch at a time."""
    for path in paths:
        pf = _open_parquet(path)
        try:
            for batch in pf.iter_batches(batch_size=READ_BATCH_ROWS, columns=columns):
                yield from batch.to_pylist()
        except (OSError, ValueError) as e:
            raise InputError(f"{path} cannot be read past a damaged part ({e}); re-run the stage that wrote "
                             f"it") from None


def count_rows(paths: list[Path]) -> int:
    """Rows in Parquet files, from their footers (nothing else is read)."""
    return sum(_open_parquet(p).metadata.num_rows for p in paths)


def meta_from_column(value: str | None) -> dict[str, Any]:
    if not value:
        return {}
    meta = loads(value)
    return meta if isinstance(meta, dict) else {}


_META_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def meta_to_column(meta: dict[str, Any]) -> str | None:
    """A document's annotations as compact JSON with sorted keys (values JSON cannot hold written with
    ``str``; NaN as null)."""
    if not meta:
        return None
    try:
        return orjson.dumps(meta, option=_META_OPTIONS, default=str).decode()
    except TypeError:  # an integer beyond 64 bits: the standard encoder writes it
        return json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str)
