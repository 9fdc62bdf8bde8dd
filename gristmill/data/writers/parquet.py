"""The sharded Parquet store's writers: documents and quarantine records into numbered shards.

Rows are buffered column by column and written a row group at a time, so memory stays flat whatever the
number of documents. Each shard is written to a temporary name and renamed into place by ``close``; a
writer that is not closed (an error, a killed process) leaves no shard under a final name. The layout
and schema are in :mod:`gristmill.formats.shards`. The same documents give the same bytes: nothing in a
shard depends on time, host or worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gristmill.formats import shards
from gristmill.formats.document import Document

ROW_GROUP_ROWS = 20_000
"""Rows per Parquet row group, at most (a reader decodes one row group at a time)."""
ROW_GROUP_BYTES = 64 << 20
"""... or this many bytes of text, whichever comes first."""
COMPRESSION = "zstd"


@dataclass
class ShardInfo:
    """One shard a writer finished."""

    name: str
    rows: int
    bytes: int


class _Columns:
    """Document rows (or the ``document`` struct of quarantine rows), buffered as tuples and turned into
    columns when a row group is written (one tuple per row is cheaper than eleven list appends)."""

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []

    def clear(self) -> None:
        self.rows = []

    def add(self, doc: Document) -> None:
        p = doc.provenance
        self.rows.append((doc.id, doc.text, doc.source, p.uri, p.reader, p.title, p.license, p.record,
                          p.retrieved_at, p.sha256, shards.meta_to_column(doc.meta) if doc.meta else None))

    def arrays(self) -> list[Any]:
        import pyarrow as pa

        cols = list(zip(*self.rows, strict=True)) if self.rows else [()] * 11
        strings = [pa.array(c, pa.string()) for c in cols]
        prov = pa.StructArray.from_arrays(strings[3:10], fields=list(shards.provenance_type()))
        return [strings[0], strings[1], strings[2], prov, strings[10]]


class _ParquetShards:
    """Rows into ``folder/NNNNN.parquet``: one shard, or a new one every ``max_rows`` rows (prepare)."""

    def __init__(self, folder: Path, first_index: int, schema: Any, max_rows: int | None = None,
                 row_group_rows: int = ROW_GROUP_ROWS):
        self.folder = Path(folder)
        self.row_group_rows = row_group_rows
        self.index = first_index
        self.schema = schema
        self.max_rows = max_rows
        self.finished: list[ShardInfo] = []
        self.rows_in_shard = 0
        self.pending = 0
        self.pending_bytes = 0
        self._writer: Any = None
        self._tmp: Path | None = None

    def _open(self) -> None:
        import pyarrow.parquet as pq

        self.folder.mkdir(parents=True, exist_ok=True)
        self._tmp = self.folder / f".{shards.shard_name(self.index)}.{os.getpid()}.tmp"
        self._writer = pq.ParquetWriter(self._tmp, self.schema, compression=COMPRESSION)

    def row_added(self, text_bytes: int) -> None:
        self.pending += 1
        self.pending_bytes += text_bytes
        if self.pending >= self.row_group_rows or self.pending_bytes >= ROW_GROUP_BYTES:
            self.flush()
            if self.max_rows is not None and self.rows_in_shard >= self.max_rows:
                self._finish()

    def flush(self) -> None:
        import pyarrow as pa

        if not self.pending:
            return
        if self._writer is None:
            self._open()
        self._writer.write_table(pa.Table.from_arrays(self.arrays(), schema=self.schema))
        self.rows_in_shard += self.pending
        self.pending = self.pending_bytes = 0
        self.clear_buffers()

    def _finish(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        final = self.folder / shards.shard_name(self.index)
        os.replace(self._tmp, final)
        self.finished.append(ShardInfo(final.name, self.rows_in_shard, final.stat().st_size))
        self._writer = self._tmp = None
        self.rows_in_shard = 0
        self.index += 1

    def close(self) -> list[ShardInfo]:
        """Write what is buffered and rename the shard into place; returns every shard written."""
        self.flush()
        self._finish()
        self.folder.mkdir(parents=True, exist_ok=True)  # a split with no rows is still a written split
        return self.finished

    def abort(self) -> None:
        """An error happened: remove every shard this writer made, finished or not, so a failed run leaves
        no partial split behind."""
        if self._writer is not None:
            try:
                self._writer.close()
            finally:
                self._tmp.unlink(missing_ok=True)
                self._writer = self._tmp = None
        for info in self.finished:
            (self.folder / info.name).unlink(missing_ok=True)
        self.finished = []

    # subclasses
    def arrays(self) -> list[Any]:
        raise NotImplementedError

    def clear_buffers(self) -> None:
        raise NotImplementedError


class DocumentWriter(_ParquetShards):
    """Documents into numbered shards: ``write(doc)``, then ``close()``."""

    def __init__(self, folder: Path, first_index: int = 0, max_rows: int | None = None,
                 row_group_rows: int = ROW_GROUP_ROWS):
        super().__init__(folder, first_index, shards.document_schema(), max_rows, row_group_rows)
        self.columns = _Columns()
        self.documents = 0
        self.text_bytes = 0

    def write(self, doc: Document, nbytes: int | None = None) -> None:
        """Add a document; ``nbytes``: its text's UTF-8 length, if the caller has it already."""
        self.columns.add(doc)
        n = len(doc.text.encode("utf-8")) if nbytes is None else nbytes
        self.documents += 1
        self.text_bytes += n
        self.row_added(n)

    def arrays(self) -> list[Any]:
        return self.columns.arrays()

    def clear_buffers(self) -> None:
        self.columns.clear()


class QuarantineShardWriter(_ParquetShards):
    """Quarantine records into numbered shards; a step's quarantine sink: ``writer(doc, step, reason)``."""

    def __init__(self, folder: Path, first_index: int = 0, max_rows: int | None = None):
        super().__init__(folder, first_index, shards.quarantine_schema(), max_rows)
        self.columns = _Columns()
        self.steps: list[str] = []
        self.reasons: list[str] = []
        self.count = 0

    def __call__(self, document: Document, step: str, reason: str) -> None:
        self.columns.add(document)
        self.steps.append(step)
        self.reasons.append(reason)
        self.count += 1
        self.row_added(len(document.text))

    def arrays(self) -> list[Any]:
        import pyarrow as pa

        doc_type = self.schema.field("document").type
        doc = pa.StructArray.from_arrays(self.columns.arrays(), fields=list(doc_type))
        return [pa.array(self.steps, pa.string()), pa.array(self.reasons, pa.string()), doc]

    def clear_buffers(self) -> None:
        self.columns.clear()
        self.steps, self.reasons = [], []
