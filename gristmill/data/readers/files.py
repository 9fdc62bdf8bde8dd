"""The ``files`` reader (text, JSONL, CSV, Parquet; plain or compressed) and what every reader shares:
document ids, quarantine stubs, opening compressed files.

A reader is a :class:`gristmill.data.step.Step`: ``run(docs, stats)`` passes through the documents it is
given and then yields its own. A record it cannot turn into a document goes to ``stats.drop(stub,
reason)`` as a text-less stub that still carries the record's provenance (file, line or row) and, in
``meta["detail"]``, what was wrong, so a person can find and fix it. A bad record never stops a file, and
a bad file never stops the others.

Quarantine reasons of this reader: ``unsupported_extension`` (a known binary format: .pdf, images,
archives ...), ``binary`` (a file of unknown type whose content is not text, or a text file holding NUL
bytes), ``unreadable`` (an OS error), ``undecodable`` (not UTF-8), ``empty`` (nothing but whitespace),
``too_large`` (over ``max_record_bytes``), ``corrupt_file`` (compressed data that ends early or is
damaged, an unreadable Parquet file: the records before the fault are kept); for records of tables
``invalid_json``, ``not_an_object``, ``malformed_row``, ``missing_field``, ``not_a_string`` and
``nul_byte``, each with the line or row in ``provenance.record``.
"""

from __future__ import annotations

import bz2
import codecs
import glob
import hashlib
import io
import lzma
import zlib
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from itertools import takewhile
from pathlib import Path
from typing import IO, Any

from gristmill.core.paths import resolve
from gristmill.data.config import FilesSource
from gristmill.data.step import StepStats
from gristmill.formats.document import Document, Provenance

TEXT_SUFFIXES = (".txt", ".md", ".text", ".rst")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = (".csv", ".tsv")
PARQUET_SUFFIXES = (".parquet",)
COMPRESSION_SUFFIXES = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
COMPRESSION_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"))
BINARY_SUFFIXES = frozenset(
    ".pdf .doc .docx .xls .xlsx .ppt .pptx .odt .ods .epub .png .jpg .jpeg .gif .bmp .webp .tif .tiff .ico "
    ".mp3 .wav .flac .ogg .mp4 .avi .mkv .mov .webm .zip .tar .tgz .7z .rar .exe .dll .so .dylib .o .a .pyc "
    ".class .jar .whl .db .sqlite .pt .safetensors .gguf .npy .npz .woff .woff2 .ttf .otf".split())
"""Formats known not to be text: quarantined as ``unsupported_extension`` without being opened."""
SNIFF_BYTES = 8192
"""Bytes read from a file of unknown type to decide whether it is text."""
MAX_QUARANTINED_TEXT = 2000
"""Characters of a bad record kept in the quarantine: enough to recognise and fix it."""
READ_CHUNK = 1 << 16


def document_id(source: str, key: str, record: str | None) -> str:
    """A stable id: the same source name, location key and record give the same id on every run."""
    h = hashlib.sha256(f"{source}\x00{key}\x00{record or ''}".encode())
    return h.hexdigest()[:20]


def location_root(location: str) -> Path:
    """The folder that a location's files are named relative to (the part of a glob before any ``*``)."""
    pattern = resolve(location)
    if glob.has_magic(pattern):
        fixed = list(takewhile(lambda part: not glob.has_magic(part), Path(pattern).parts))
        return Path(*fixed) if fixed else Path(".")
    p = Path(pattern)
    return p if p.is_dir() else p.parent


def relative_key(path: Path, root: Path) -> str:
    """The path relative to its source's root, so ids do not depend on where the data is installed."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def utc_iso(timestamp: float) -> str:
    """Seconds since the epoch -> ``2024-05-01T12:00:00Z``."""
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def title_from_filename(path: Path) -> str:
    """``hamlet_gut.txt`` -> ``hamlet gut``: the file name without extension, separators as spaces."""
    return path.stem.replace("_", " ").replace("-", " ").strip() or path.name


# -- opening files -------------------------------------------------------------------------------------------


def split_compression(path: Path) -> tuple[str | None, str]:
    """(compression by suffix or None, the suffix under it): ``a.jsonl.gz`` -> ("gzip", ".jsonl")."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        return COMPRESSION_SUFFIXES[suffixes[-1]], (suffixes[-2] if len(suffixes) > 1 else "")
    return None, path.suffix.lower()


def sniff_compression(head: bytes) -> str | None:
    return next((name for magic, name in COMPRESSION_MAGIC if head.startswith(magic)), None)


class _Inflating(io.RawIOBase):
    """A compressed file read as a stream of its decompressed bytes, handing out what it has decoded before
    it raises: a file cut short or damaged in the middle still gives every whole line before the fault
    (the standard library's readers lose their buffer). At most ``INFLATE_STEP`` bytes are decoded at a
    time, so a small file that inflates to gigabytes cannot fill the memory. Multi-member gzip, bz2 and xz
    files (concatenated streams) are read whole."""

    def __init__(self, path: Path, kind: str):
        self.f = open(path, "rb")
        self.kind = kind
        self.d = self._new()
        self.pending = b""
        self.done = False

    def _new(self) -> Any:
        if self.kind == "gzip":
            return zlib.decompressobj(wbits=31)
        return bz2.BZ2Decompressor() if self.kind == "bz2" else lzma.LZMADecompressor()

    def readable(self) -> bool:
        return True

    def _more(self) -> bytes:
        d = self.d
        if self.kind == "gzip" and d.unconsumed_tail:
            return d.decompress(d.unconsumed_tail, INFLATE_STEP)
        if self.kind != "gzip" and not d.eof and not d.needs_input:
            return d.decompress(b"", INFLATE_STEP)
        if d.eof:  # one stream ended: another may follow
            data = d.unused_data or self.f.read(READ_CHUNK)
            if not data:
                self.done = True
                return b""
            self.d = d = self._new()
        else:
            data = self.f.read(READ_CHUNK)
            if not data:
                raise EOFError(f"the {self.kind} data ends before its end-of-stream marker (the file is cut short)")
        return d.decompress(data, INFLATE_STEP)

    def readinto(self, b: Any) -> int:
        while not self.pending and not self.done:
            self.pending = self._more()
        n = min(len(b), len(self.pending))
        b[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def close(self) -> None:
        self.f.close()
        super().close()


INFLATE_STEP = 1 << 20


def open_binary(path: Path, compression: str | None) -> IO[bytes]:
    """A file for reading bytes, decompressed on the fly (gzip, bz2, xz, zstd)."""
    if compression in ("gzip", "bz2", "xz"):
        return io.BufferedReader(_Inflating(path, compression), READ_CHUNK)
    if compression == "zstd":
        import pyarrow as pa  # ships a zstd codec: no extra package

        return io.BufferedReader(pa.CompressedInputStream(pa.OSFile(str(path)), "zstd"), READ_CHUNK)
    return open(path, "rb")


STREAM_ERRORS = (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error)
"""What reading raises on a file that cannot be read or on compressed data that ends early or is damaged
(bz2 raises OSError, pyarrow's zstd OSError)."""


def bounded_lines(f: IO[bytes], cap: int) -> Iterator[tuple[bytes, bool]]:
    """The lines of a binary file as (line, whole), holding at most ``cap`` bytes of one line: a longer line
    is read to its end and yielded as (its first ``cap`` bytes, False)."""
    while line := f.readline(cap + 1):
        if len(line) > cap and not line.endswith(b"\n"):
            while (more := f.readline(READ_CHUNK)) and not more.endswith(b"\n"):
                pass
            yield line[:cap], False
        else:
            yield line, True


def sniff_text(head: bytes, complete: bool) -> tuple[str, str] | None:
    """None if ``head`` looks like UTF-8 text; else (reason, detail). ``complete``: ``head`` is the whole
    file (so a multi-byte character may not be cut at its end)."""
    nul = head.find(b"\x00")
    if nul >= 0:
        return "binary", f"it holds NUL bytes (first at offset {nul}): binary data, not text"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=complete)
    except UnicodeDecodeError as e:
        return "undecodable", f"not UTF-8 text: byte 0x{head[e.start]:02x} at offset {e.start}"
    return None


class FileRecords:
    """What a table or text record reader needs for one file: making documents and stubs, dropping."""

    def __init__(self, source: Any, path: Path, key: str, stats: StepStats, reader: str):
        self.source = source
        self.path = path
        self.key = key
        self.stats = stats
        self.reader = reader
        try:
            self.retrieved_at: str | None = utc_iso(path.stat().st_mtime)
        except OSError:
            self.retrieved_at = None

    def doc(self, record: str | None, text: str, title: str | None, license: str | None = None) -> Document:
        return Document(
            id=document_id(self.source.name, self.key, record),
            text=text,
            source=self.source.name,
            provenance=Provenance(uri=str(self.path), reader=self.reader, title=title,
                                  license=license or self.source.license, record=record,
                                  retrieved_at=self.retrieved_at),
        )

    def drop(self, record: str | None, reason: str, detail: str, text: str = "") -> None:
        stub = self.doc(record, text[:MAX_QUARANTINED_TEXT], None)
        stub.meta["detail"] = detail
        self.stats.drop(stub, reason)


# -- the reader ----------------------------------------------------------------------------------------------


class FilesReader:
    """Local files in several formats; see the module docstring for the quarantine reasons."""

    name = "files"

    def __init__(self, source: FilesSource, files: list[Path], root: Path):
        self.source = source
        self.files = files
        self.root = root
        self.files_read = 0
        self.bytes_read = 0

    def run(self, docs: Iterable[Document], stats: StepStats) -> Iterator[Document]:
        yield from docs
        for path in self.files:
            self.files_read += 1
            try:
                self.bytes_read += path.stat().st_size
            except OSError:
                pass
            ctx = FileRecords(self.source, path, relative_key(path, self.root), stats, self.name)
            yield from self._read_file(ctx)

    def _read_file(self, ctx: FileRecords) -> Iterator[Document]:
        from gristmill.data.readers import tables

        path = ctx.path
        compression, suffix = split_compression(path)
        fmt = self.source.format
        if fmt == "auto":
            if suffix in BINARY_SUFFIXES:
                ctx.drop(None, "unsupported_extension", f"'{suffix}' files are not text (a {suffix[1:].upper()} "
                         f"reader is not part of Gristmill); convert them to text first")
                return
            fmt = ("text" if suffix in TEXT_SUFFIXES else "jsonl" if suffix in JSONL_SUFFIXES
                   else "csv" if suffix in CSV_SUFFIXES else "parquet" if suffix in PARQUET_SUFFIXES else "sniff")
        if fmt == "parquet":
            yield from tables.read_parquet(ctx, self.source)
            return
        try:
            with open(path, "rb") as f:
                magic = f.read(8)
        except OSError as e:
            ctx.drop(None, "unreadable", f"cannot read {path.name}: {e.strerror}")
            return
        compression = compression or sniff_compression(magic)
        if fmt == "sniff":
            problem = self._sniff(ctx, compression)
            if problem is not None:
                reason, detail = problem
                ctx.drop(None, reason, f"{path.name} was not read: {detail} (set the source's format to read "
                                       f"it anyway)")
                return
            fmt = "text"
        if fmt == "text":
            yield from (self._read_delimited(ctx, compression) if self.source.delimiter
                        else self._read_whole(ctx, compression))
        elif fmt == "jsonl":
            yield from tables.read_jsonl(ctx, self.source, compression)
        else:
            yield from tables.read_csv(ctx, self.source, compression, tab=suffix == ".tsv")

    def _sniff(self, ctx: FileRecords, compression: str | None) -> tuple[str, str] | None:
        try:
            with open_binary(ctx.path, compression) as f:
                head = f.read(SNIFF_BYTES + 1)
        except STREAM_ERRORS as e:
            return "corrupt_file", f"its {compression or ''} data cannot be read ({type(e).__name__}: {e})"
        return sniff_text(head[:SNIFF_BYTES], complete=len(head) <= SNIFF_BYTES)

    def _read_whole(self, ctx: FileRecords, compression: str | None) -> Iterator[Document]:
        cap = self.source.max_record_bytes
        try:
            with open_binary(ctx.path, compression) as f:
                raw = f.read(cap + 1)
        except STREAM_ERRORS as e:
            what = "unreadable" if isinstance(e, OSError) and compression is None else "corrupt_file"
            ctx.drop(None, what, f"cannot read {ctx.path.name}: {getattr(e, 'strerror', None) or e}")
            return
        if len(raw) > cap:
            ctx.drop(None, "too_large", f"{ctx.path.name} is over max_record_bytes={cap} (set a delimiter to "
                                        f"split it into records, or raise max_record_bytes)")
            return
        doc = self._text_record(ctx, None, raw, title_from_filename(ctx.path))
        if doc is not None:
            yield doc

    def _text_record(self, ctx: FileRecords, record: str | None, raw: bytes, title: str) -> Document | None:
        where = f"record at line {record}" if record else ctx.path.name
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            ctx.drop(record, "undecodable", f"{where} is not UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start}")
            return None
        nul = text.find("\x00")
        if nul >= 0:
            ctx.drop(record, "binary", f"{where} holds NUL bytes (first at character {nul}): binary data, not text",
                     text.replace("\x00", ""))
            return None
        if not text.strip():
            ctx.drop(record, "empty", f"{where} holds only whitespace")
            return None
        return ctx.doc(record, text, title)

    def _read_delimited(self, ctx: FileRecords, compression: str | None) -> Iterator[Document]:
        """Records separated by lines that hold only the delimiter; ``record`` is a record's first line."""
        delim = self.source.delimiter.encode("utf-8")
        cap = self.source.max_record_bytes
        title = title_from_filename(ctx.path)
        parts: list[bytes] = []
        size, start, lineno, over = 0, 1, 0, False

        def finish() -> Document | None:
            raw = b"".join(parts)
            if over:
                ctx.drop(str(start), "too_large", f"the record at line {start} is over max_record_bytes={cap}")
                return None
            if not raw.strip():
                return None  # nothing between two delimiters: not a record
            return self._text_record(ctx, str(start), raw.rstrip(b"\r\n"), title)

        try:
            with open_binary(ctx.path, compression) as f:
                for line, whole in bounded_lines(f, cap):
                    lineno += 1
                    if whole and line.rstrip() == delim:
                        if (doc := finish()) is not None:
                            yield doc
                        parts, size, start, over = [], 0, lineno + 1, False
                        continue
                    size += len(line)
                    if size > cap or not whole:
                        over, parts = True, []
                    elif not over:
                        parts.append(line)
        except STREAM_ERRORS as e:
            ctx.drop(None, "corrupt_file", f"{ctx.path.name} cannot be read past line {lineno} ({type(e).__name__}: "
                                           f"{e}); the records before it were kept")
            return
        if (doc := finish()) is not None:
            yield doc
