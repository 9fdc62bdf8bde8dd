"""The document store's shards: Documents round-trip with their provenance and meta, and the files are plain
Parquet that pandas, pyarrow and the datasets library read as they are."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gristmill.data.writers.parquet import DocumentWriter, QuarantineShardWriter
from gristmill.errors import InputError
from gristmill.formats import shards
from gristmill.formats.document import (
    Document,
    Provenance,
    count_documents,
    read_documents,
    read_quarantine,
)

UNICODE = "Zürich, Tōkyō 東京都, Москва — naïve café 🙂"


def docs(n: int) -> list[Document]:
    return [Document(id=f"d{i}", text=f"{UNICODE} {i}\n", source="s" if i % 2 else "t",
                     provenance=Provenance(uri=f"file:///x/{i}.txt", reader="files", title=None if i % 3 else f"T{i}",
                                           license="CC0", record=str(i), retrieved_at="2024-05-01T12:00:00Z",
                                           sha256="ab" * 32),
                     meta={"split": "train", "score": i / 7, "tags": ["a", i]} if i % 2 else {}) for i in range(n)]


def write(folder: Path, items: list[Document], index: int = 0, max_rows: int | None = None,
          row_group_rows: int = 1000) -> list:
    w = DocumentWriter(folder, index, max_rows=max_rows, row_group_rows=row_group_rows)
    for d in items:
        w.write(d)
    return w.close()


def test_documents_round_trip_and_the_same_documents_give_the_same_bytes(tmp_path: Path) -> None:
    original = docs(50)
    info = write(tmp_path / "a" / "documents", original, index=3)
    assert [(i.name, i.rows) for i in info] == [("00003.parquet", 50)]
    assert list(read_documents(tmp_path / "a")) == original
    assert count_documents(tmp_path / "a") == 50
    write(tmp_path / "b" / "documents", original, index=3)
    assert (tmp_path / "a/documents/00003.parquet").read_bytes() == (tmp_path / "b/documents/00003.parquet").read_bytes()
    meta = pq.ParquetFile(tmp_path / "a/documents/00003.parquet").metadata
    assert meta.row_group(0).column(1).compression == "ZSTD"


def test_other_tools_read_the_shards_as_they_are(tmp_path: Path) -> None:
    write(tmp_path / "documents", docs(30))
    import pandas as pd

    df = pd.read_parquet(tmp_path / "documents")
    assert list(df.columns) == ["id", "text", "source", "provenance", "meta"] and len(df) == 30
    assert df.loc[1, "provenance"]["uri"] == "file:///x/1.txt" and df.loc[1, "text"].startswith("Zürich")
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "documents" / "*.parquet"), split="train",
                               streaming=True)
    first = next(iter(ds))
    assert first["id"] == "d0" and first["provenance"]["license"] == "CC0" and first["meta"] is None


def test_rolling_shards_quarantine_and_an_aborted_writer(tmp_path: Path) -> None:
    info = write(tmp_path / "train", docs(45), max_rows=20, row_group_rows=10)  # a new shard every 20 rows
    assert [i.rows for i in info] == [20, 20, 5] and len(shards.list_shards(tmp_path / "train")) == 3
    assert [d.id for d in read_documents(tmp_path, "train")] == [f"d{i}" for i in range(45)]
    q = QuarantineShardWriter(tmp_path / "dropped")
    q(docs(1)[0], "length", "too_short")
    q.close()
    assert list(read_quarantine(tmp_path, "dropped"))[0]["reason"] == "too_short"
    w = DocumentWriter(tmp_path / "val", max_rows=20, row_group_rows=10)
    for d in docs(45):
        w.write(d)
    w.abort()
    assert not list((tmp_path / "val").iterdir())


def test_jsonl_files_and_missing_or_damaged_splits(tmp_path: Path) -> None:
    (tmp_path / "val.jsonl").write_text("".join(d.to_json() + "\n" for d in docs(3)))
    assert [d.id for d in read_documents(tmp_path, "val")] == ["d0", "d1", "d2"]
    assert [d.id for d in read_documents(tmp_path / "val.jsonl")] == ["d0", "d1", "d2"]
    with pytest.raises(InputError, match="has no 'train' documents"):
        list(read_documents(tmp_path, "train"))
    (tmp_path / "documents").mkdir()
    (tmp_path / "documents" / "00000.parquet").write_bytes(b"PAR1 broken")
    with pytest.raises(InputError, match="00000.parquet is not a readable Parquet shard"):
        list(read_documents(tmp_path))
