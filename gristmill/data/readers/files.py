"""The ``files`` reader (.txt, .md, .jsonl) and what every reader shares: document ids and quarantine stubs.

A reader is a :class:`gristmill.data.step.Step`: ``run(docs, stats)`` passes through the documents it is given
and then yields its own. A record it cannot turn into a document goes to ``stats.drop(stub, reason)``
as a text-less stub that still carries the record's provenance (file, line or page) and, in
``meta["detail"]``, what was wrong, so a person can find and fix it.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterable, Iterator
from itertools import takewhile
from pathlib import Path

from gristmill.core.paths import resolve
from gristmill.data.config import FilesSource
from gristmill.data.step import StepStats
from gristmill.formats.document import Document, Provenance

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl",)
MAX_QUARANTINED_TEXT = 2000
"""Characters of a bad record kept in the quarantine file: enough to recognise and fix it."""


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


class FilesReader:
    """Plain files: ``.txt``/``.md`` are one document each, ``.jsonl`` one document per line.

    Quarantine reasons: ``unsupported_extension``, ``unreadable`` (an OS error), ``undecodable`` (not
    UTF-8), ``empty`` (nothing but whitespace), and for .jsonl lines ``invalid_json``, ``not_an_object``,
    ``missing_field`` and ``not_a_string``, each with the line number in ``provenance.record``. Blank
    lines in .jsonl files are not records and are skipped.
    """

    name = "files"

    def __init__(self, source: FilesSource, files: list[Path], root: Path):
        self.source = source
        self.files = files
        self.root = root
        self.files_read = 0

    def run(self, docs: Iterable[Document], stats: StepStats) -> Iterator[Document]:
        yield from docs
        for path in self.files:
            self.files_read += 1
            suffix = path.suffix.lower()
            if suffix in TEXT_SUFFIXES:
                yield from self._read_text(path, stats)
            elif suffix in JSONL_SUFFIXES:
                yield from self._read_jsonl(path, stats)
            else:
                supported = ", ".join(TEXT_SUFFIXES + JSONL_SUFFIXES)
                stats.drop(self._stub(path, None, f"'{suffix or path.name}' files are not read "
                                                  f"(supported: {supported})"), "unsupported_extension")

    def _doc(self, path: Path, record: str | None, text: str, title: str | None) -> Document:
        return Document(
            id=document_id(self.source.name, relative_key(path, self.root), record),
            text=text,
            source=self.source.name,
            provenance=Provenance(uri=str(path), reader=self.name, title=title,
                                  license=self.source.license, record=record),
        )

    def _stub(self, path: Path, record: str | None, detail: str, text: str = "") -> Document:
        doc = self._doc(path, record, text[:MAX_QUARANTINED_TEXT], None)
        doc.meta["detail"] = detail
        return doc

    def _read_text(self, path: Path, stats: StepStats) -> Iterator[Document]:
        try:
            raw = path.read_bytes()
        except OSError as e:
            stats.drop(self._stub(path, None, f"cannot read: {e.strerror}"), "unreadable")
            return
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            detail = f"not UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start}"
            stats.drop(self._stub(path, None, detail), "undecodable")
            return
        if not text.strip():
            stats.drop(self._stub(path, None, "the file holds only whitespace"), "empty")
            return
        yield self._doc(path, None, text, title_from_filename(path))

    def _read_jsonl(self, path: Path, stats: StepStats) -> Iterator[Document]:
        field = self.source.text_field
        try:
            f = open(path, "rb")
        except OSError as e:
            stats.drop(self._stub(path, None, f"cannot read: {e.strerror}"), "unreadable")
            return
        with f:
            for lineno, raw in enumerate(f, 1):
                record = str(lineno)
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").rstrip("\r\n")
                except UnicodeDecodeError as e:
                    detail = f"line {lineno} is not UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1}"
                    stats.drop(self._stub(path, record, detail), "undecodable")
                    continue
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    stats.drop(self._stub(path, record, f"line {lineno} is not valid JSON ({e})", line),
                               "invalid_json")
                    continue
                if not isinstance(obj, dict):
                    detail = f"line {lineno} is a JSON {type(obj).__name__}, not an object"
                    stats.drop(self._stub(path, record, detail, line), "not_an_object")
                    continue
                if field not in obj:
                    detail = f"line {lineno} has no '{field}' key (set text_field to the key that holds the text)"
                    stats.drop(self._stub(path, record, detail, line), "missing_field")
                    continue
                text = obj[field]
                if not isinstance(text, str):
                    detail = f"line {lineno}: '{field}' is a {type(text).__name__}, not a string"
                    stats.drop(self._stub(path, record, detail, line), "not_a_string")
                    continue
                if not text.strip():
                    stats.drop(self._stub(path, record, f"line {lineno}: '{field}' is blank"), "empty")
                    continue
                title = obj.get("title")
                yield self._doc(path, record, text, title if isinstance(title, str) else None)


def title_from_filename(path: Path) -> str:
    """``hamlet_gut.txt`` -> ``hamlet gut``: the file name without extension, separators as spaces."""
    return path.stem.replace("_", " ").replace("-", " ").strip() or path.name
