"""Table records: JSONL (one JSON object per line), CSV/TSV (one row each, the first row names the columns)
and Parquet (one row each), for the ``files`` reader; the ``huggingface`` reader uses :func:`record_document`.

The source names the field that holds the text (``text_field``), its title and licence, and the other
fields to keep in ``meta`` (``metadata_fields``). A record without its text, or whose text is not a
string, is quarantined with its line (JSONL, CSV) or row number (Parquet, 0-based) and why.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from typing import Any

from gristmill.core.jsonl import loads
from gristmill.data.config import TableFields
from gristmill.data.readers.files import (
    MAX_QUARANTINED_TEXT,
    STREAM_ERRORS,
    FileRecords,
    bounded_lines,
    open_binary,
)
from gristmill.formats.document import Document


def record_document(ctx: FileRecords, fields: TableFields, record: str, obj: Mapping[str, Any],
                    where: str, raw: str = "") -> Document | None:
    """The document of one record (a mapping of field -> value), or None after quarantining it."""
    name = fields.text_field
    if name not in obj or obj[name] is None:
        present = ", ".join(list(obj)[:12])
        ctx.drop(record, "missing_field", f"{where} has no '{name}' field (it has: {present}); set text_field "
                                          f"to the field that holds the text", raw)
        return None
    text = obj[name]
    if not isinstance(text, str):
        ctx.drop(record, "not_a_string", f"{where}: '{name}' is a {type(text).__name__}, not a string", raw)
        return None
    if "\x00" in text:
        ctx.drop(record, "nul_byte", f"{where}: '{name}' holds NUL characters (binary data, not text)",
                 text.replace("\x00", ""))
        return None
    if not text.strip():
        ctx.drop(record, "empty", f"{where}: '{name}' is blank")
        return None
    title = obj.get(fields.title_field) if fields.title_field else None
    license = obj.get(fields.license_field) if fields.license_field else None
    doc = ctx.doc(record, text, title if isinstance(title, str) and title else None,
                  license if isinstance(license, str) and license else None)
    for key in fields.metadata_fields:
        if key in obj and obj[key] is not None:
            doc.meta[key] = obj[key]
    return doc


def read_jsonl(ctx: FileRecords, source: Any, compression: str | None) -> Iterator[Document]:
    """One document per line; blank lines are not records."""
    cap = source.max_record_bytes
    lineno = 0
    try:
        with open_binary(ctx.path, compression) as f:
            for raw, whole in bounded_lines(f, cap):
                lineno += 1
                record = str(lineno)
                if not whole:
                    ctx.drop(record, "too_large", f"line {lineno} is over max_record_bytes={cap}")
                    continue
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").rstrip("\r\n")
                except UnicodeDecodeError as e:
                    ctx.drop(record, "undecodable",
                             f"line {lineno} is not UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1}")
                    continue
                if not line.strip():
                    continue
                try:
                    obj = loads(line)
                except ValueError as e:
                    ctx.drop(record, "invalid_json", f"line {lineno} is not valid JSON ({e})", line)
                    continue
                if not isinstance(obj, dict):
                    ctx.drop(record, "not_an_object", f"line {lineno} is a JSON {type(obj).__name__}, not an "
                                                      f"object", line)
                    continue
                doc = record_document(ctx, source, record, obj, f"line {lineno}", line)
                if doc is not None:
                    yield doc
    except STREAM_ERRORS as e:
        _cut(ctx, compression, f"line {lineno}", e)


def _cut(ctx: FileRecords, compression: str | None, where: str, e: BaseException) -> None:
    """Quarantine the rest of a file that cannot be read past ``where`` (its earlier records were kept)."""
    if compression is None and isinstance(e, OSError):
        ctx.drop(None, "unreadable", f"cannot read {ctx.path.name} past {where}: {e.strerror or e}")
    else:
        ctx.drop(None, "corrupt_file", f"the {compression or ''} data of {ctx.path.name} ends early or is damaged "
                                       f"after {where} ({type(e).__name__}: {e}); the records before it were kept")


def _decoded_lines(f: Any, lineno: list[int], bad: set[int]) -> Iterator[str]:
    """Lines decoded one by one, so one undecodable line marks its row instead of ending the file."""
    for raw in f:
        lineno[0] += 1
        try:
            yield raw.decode("utf-8-sig" if lineno[0] == 1 else "utf-8")
        except UnicodeDecodeError:
            bad.add(lineno[0])
            yield raw.decode("utf-8", "replace")


def read_csv(ctx: FileRecords, source: Any, compression: str | None, tab: bool) -> Iterator[Document]:
    """One document per row; the first row holds the column names; ``record`` is the row's first line."""
    lineno, bad = [0], set()
    cap = source.max_record_bytes
    csv.field_size_limit(max(csv.field_size_limit(), cap))  # the module's default is 128 KiB a field
    try:
        with open_binary(ctx.path, compression) as f:
            rows = csv.reader(_decoded_lines(f, lineno, bad), delimiter="\t" if tab else ",", strict=True)
            header: list[str] | None = None
            last = 0
            while True:
                start = last + 1
                try:
                    row = next(rows)
                except StopIteration:
                    break
                except csv.Error as e:
                    if rows.line_num == last:  # no progress: the reader cannot go on
                        ctx.drop(str(start), "malformed_row", f"line {start}: {e}; the rest of the file is skipped")
                        break
                    last = rows.line_num
                    ctx.drop(str(start), "malformed_row", f"the row at line {start} is not valid CSV ({e})")
                    continue
                last = rows.line_num
                record = str(start)
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # a blank line is not a record
                if header is None:
                    header = row
                    if source.text_field not in header:
                        ctx.drop(None, "missing_field", f"{ctx.path.name} has no column '{source.text_field}' "
                                 f"(columns: {', '.join(header[:20])}); set text_field to the column of the text")
                        return
                    continue
                if any(n in bad for n in range(start, last + 1)):
                    ctx.drop(record, "undecodable", f"the row at line {start} is not UTF-8")
                    continue
                if len(row) != len(header):
                    ctx.drop(record, "malformed_row", f"the row at line {start} has {len(row)} fields, the header "
                             f"{len(header)}", ",".join(row)[:MAX_QUARANTINED_TEXT])
                    continue
                if sum(len(v) for v in row) > cap:
                    ctx.drop(record, "too_large", f"the row at line {start} is over max_record_bytes={cap}")
                    continue
                doc = record_document(ctx, source, record, dict(zip(header, row, strict=True)), f"row at line {start}")
                if doc is not None:
                    yield doc
    except STREAM_ERRORS as e:
        _cut(ctx, compression, f"line {lineno[0]}", e)


def read_parquet(ctx: FileRecords, source: Any) -> Iterator[Document]:
    """One document per row; ``record`` is the row's index in the file (from 0)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(ctx.path)
        names = pf.schema_arrow.names
    except (OSError, ValueError) as e:
        ctx.drop(None, "corrupt_file", f"{ctx.path.name} is not a readable Parquet file ({e})")
        return
    if source.text_field not in names:
        ctx.drop(None, "missing_field", f"{ctx.path.name} has no column '{source.text_field}' (columns: "
                                        f"{', '.join(names[:20])}); set text_field to the column of the text")
        return
    kind = pf.schema_arrow.field(source.text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        ctx.drop(None, "not_a_string", f"{ctx.path.name}: column '{source.text_field}' holds {kind}, not strings")
        return
    wanted = [source.text_field, source.title_field, source.license_field, *source.metadata_fields]
    columns = list(dict.fromkeys(c for c in wanted if c and c in names))
    cap = source.max_record_bytes
    row_index = 0
    try:
        for batch in pf.iter_batches(batch_size=1024, columns=columns):
            for obj in batch.to_pylist():
                record = str(row_index)
                row_index += 1
                text = obj.get(source.text_field)
                if isinstance(text, str) and len(text) > cap:
                    ctx.drop(record, "too_large", f"row {record} is over max_record_bytes={cap}")
                    continue
                doc = record_document(ctx, source, record, obj, f"row {record}")
                if doc is not None:
                    yield doc
    except (OSError, ValueError) as e:
        ctx.drop(None, "corrupt_file", f"{ctx.path.name} cannot be read past row {row_index} ({e}); the rows "
                                       f"before it were kept")
