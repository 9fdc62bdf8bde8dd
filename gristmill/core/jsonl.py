"""The one JSONL reader and writer, and the one quarantine writer.

Readers report a bad line as ``file:line`` with what is wrong (an :class:`InputError`), or, with
``strict=False`` (reports, best-effort views), skip it. Writers are atomic: a crash leaves the old
file or none, never half a file. A quarantine file holds one ``{"step", "reason", "document"}`` record
per dropped or unreadable input, so every input record ends up in an output or a quarantine file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from gristmill.core.workspace import atomic_open
from gristmill.errors import InputError


def dumps(record: Any) -> str:
    """One JSON line (no newline): sorted keys, UTF-8 kept as is; dataclasses by their fields."""
    if hasattr(record, "to_json"):
        return record.to_json()
    if is_dataclass(record) and not isinstance(record, type):
        record = asdict(record)
    return json.dumps(record, ensure_ascii=False, sort_keys=True)


def loads(text: str | bytes) -> Any:
    """Parse JSON with orjson (several times faster than ``json``), falling back to ``json`` for what only
    it accepts (NaN and Infinity, lone surrogates) and for its error messages."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def read_jsonl(path: Path, *, strict: bool = True, hint: str = "") -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` for every non-blank line of a JSONL file.

    ``strict``: a line that is not JSON is an InputError ``path:line is not valid JSON (...)`` (with
    ``hint``, e.g. "re-run `gristmill synth`", appended); otherwise it is skipped. A missing file is an
    InputError either way, unless not strict (then nothing is yielded).
    """
    path = Path(path)
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        if not strict:
            return
        raise InputError(f"cannot read {path}: {e.strerror}" + (f"; {hint}" if hint else "")) from e
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, loads(line)
            except ValueError as e:
                if strict:
                    raise InputError(f"{path}:{lineno} is not valid JSON ({e})"
                                     + (f"; {hint}" if hint else "")) from e


def read_records(path: Path, *, strict: bool = True, hint: str = "") -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL file (a line holding another JSON value is an error, or skipped)."""
    for lineno, rec in read_jsonl(path, strict=strict, hint=hint):
        if isinstance(rec, dict):
            yield rec
        elif strict:
            raise InputError(f"{path}:{lineno} is a JSON {type(rec).__name__}, not an object"
                             + (f"; {hint}" if hint else ""))


def write_jsonl(path: Path, records: Iterable[Any]) -> int:
    """Write records (dicts, dataclasses, or objects with ``to_json``) one per line, atomically.
    Returns the count."""
    n = 0
    with atomic_open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(dumps(r) + "\n")
            n += 1
    return n


def count_lines(path: Path) -> int | None:
    """Non-blank lines of a file (None if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


class QuarantineWriter:
    """Writes ``{"step", "reason", "document"}`` lines to an open text file; counts them.

    Use it as a step's quarantine sink: ``StepStats(name, quarantine=writer)``.
    """

    def __init__(self, f: IO[str]):
        self.f = f
        self.count = 0

    def __call__(self, document: Any, step: str, reason: str) -> None:
        doc = asdict(document) if is_dataclass(document) and not isinstance(document, type) else document
        self.f.write(json.dumps({"step": step, "reason": reason, "document": doc},
                                ensure_ascii=False, sort_keys=True) + "\n")
        self.count += 1
