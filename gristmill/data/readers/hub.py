"""The ``huggingface`` reader: rows of a Hugging Face ``datasets`` dataset, one document each.

Three kinds of location, told apart without importing ``datasets``:

* a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``: opened with
  ``load_from_disk`` (memory-mapped Arrow files, nothing copied);
* local data files (a file, a folder or a glob of .parquet, .json/.jsonl, .csv, .txt, .arrow): read with
  the matching packaged builder, streamed (nothing is written to the datasets cache);
* a Hub name (``user/dataset``): streamed from the Hub. Before any request the reader checks, within
  a few seconds, that the Hub can be reached at all; offline (or with ``HF_HUB_OFFLINE=1``) the run
  fails at once with a sentence saying so, instead of the library's minutes of retries.

Rows become documents through the same field mapping as table files (``text_field``, ``title_field``,
``license_field``, ``metadata_fields``); ``record`` is the row's index in the split (from 0).
"""

from __future__ import annotations

import glob
import os
import re
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gristmill.core.extras import require
from gristmill.core.paths import resolve
from gristmill.data.config import HubSource
from gristmill.data.readers.files import FileRecords, utc_iso
from gristmill.data.step import StepStats
from gristmill.errors import InputError
from gristmill.formats.document import Document

HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv",
            ".txt": "text", ".arrow": "arrow"}
"""Data file extension -> the datasets library's packaged builder that reads it."""
SAVED_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")
"""Files ``save_to_disk`` writes: a folder holding one is a saved dataset."""
CONNECT_TIMEOUT_S = 4.0
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass
class HubLocation:
    """What a ``huggingface`` source's path names."""

    kind: str
    """``saved``, ``files`` or ``hub``."""
    target: str
    """The folder (saved), the Hub name (hub), or the builder name (files)."""
    files: list[Path] = field(default_factory=list)
    """The data files (``files``), or every file of a saved dataset (hashed into the cache key)."""


def locate(source: HubSource) -> HubLocation:
    """Tell a saved dataset, local data files and a Hub name apart; an InputError if it is none of them."""
    pattern = resolve(source.path)
    p = Path(pattern)
    if p.is_dir() and any((p / m).is_file() for m in SAVED_MARKERS):
        return HubLocation("saved", str(p), sorted(q for q in p.rglob("*") if q.is_file()))
    if p.is_dir():
        found = sorted(q for q in p.rglob("*") if q.is_file() and _builder(q) is not None)
    elif glob.has_magic(pattern):
        found = sorted(Path(q) for q in glob.glob(pattern, recursive=True) if Path(q).is_file())
    elif p.is_file():
        found = [p]
    elif HUB_NAME.match(source.path) and not source.path.startswith((".", "/")):
        return HubLocation("hub", source.path)
    else:
        raise InputError(f"collect source '{source.name}': {source.path} is neither a local path nor a Hub "
                         f"name (user/dataset); fix its path in the recipe")
    builders = {_builder(q) for q in found}
    if not found or None in builders or len(builders) > 1:
        kinds = ", ".join(sorted({q.suffix or q.name for q in found})) or "no files"
        raise InputError(f"collect source '{source.name}': {source.path} holds {kinds}; a huggingface source "
                         f"reads a save_to_disk folder or data files of one kind ({', '.join(BUILDERS)})")
    return HubLocation("files", builders.pop() or "", found)


def _builder(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in (".gz", ".bz2", ".xz", ".zst")]
    return BUILDERS.get(suffixes[-1]) if suffixes else None


def _endpoint_host() -> tuple[str, int]:
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def check_hub_reachable(source_name: str, name: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail at once, with one sentence, when the Hub cannot be reached (a thread bounds the DNS lookup,
    which a socket timeout does not)."""
    hint = ("run with a network, or point path at a dataset saved with save_to_disk or at local data "
            "files")
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            raise InputError(f"collect source '{source_name}': '{name}' is a Hugging Face Hub name and {var} "
                             f"is set (offline); {hint}")
    host, port = _endpoint_host()
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(e)

    t = threading.Thread(target=connect, daemon=True, name="gristmill-hub-check")
    t.start()
    t.join(timeout + 0.5)
    if not outcome or outcome[0] is not None:
        why = f"{type(outcome[0]).__name__}: {outcome[0]}" if outcome else f"no answer in {timeout:.0f} s"
        raise InputError(f"collect source '{source_name}': '{name}' is a Hugging Face Hub name and {host} "
                         f"cannot be reached ({why}): this machine looks offline; {hint}")


class HubReader:
    """One document per row of a dataset split; quarantine reasons as for table files."""

    name = "huggingface"

    def __init__(self, source: HubSource, location: HubLocation):
        self.source = source
        self.location = location
        self.files_read = 0
        self.bytes_read = 0
        self.datasets = require("datasets", extra="hub", feature=f"huggingface source '{source.name}'")

    def run(self, docs: Iterable[Document], stats: StepStats) -> Iterator[Document]:
        from gristmill.data.readers.tables import record_document

        yield from docs
        loc = self.location
        rows = self._rows()
        uri = loc.target if loc.kind != "files" else str(loc.files[0].parent)
        ctx = FileRecords(self.source, Path(uri), f"{loc.kind}:{loc.target}:{self.source.subset or ''}:"
                                                  f"{self.source.split}", stats, self.name)
        ctx.retrieved_at = self._retrieved_at()
        for index, row in enumerate(rows):
            record = str(index)
            doc = record_document(ctx, self.source, record, row, f"row {index}")
            if doc is not None:
                doc.provenance.uri = f"{uri}#{self.source.split}/{index}" if loc.kind != "hub" else \
                    f"hf://datasets/{loc.target}#{self.source.split}/{index}"
                yield doc

    def _retrieved_at(self) -> str | None:
        mtimes = [p.stat().st_mtime for p in self.location.files if p.exists()]
        return utc_iso(max(mtimes)) if mtimes else None

    def _rows(self) -> Iterator[dict[str, Any]]:
        ds_lib = self.datasets
        ds_lib.disable_progress_bars()
        src, loc = self.source, self.location
        self.files_read = len(loc.files)
        self.bytes_read = sum(p.stat().st_size for p in loc.files if p.exists())
        if loc.kind == "saved":
            ds = ds_lib.load_from_disk(loc.target)
            if isinstance(ds, ds_lib.DatasetDict):
                if src.split not in ds:
                    raise InputError(f"collect source '{src.name}': {src.path} has no split '{src.split}' "
                                     f"(splits: {', '.join(ds)}); set split")
                ds = ds[src.split]
            for batch in ds.iter(batch_size=1024):
                names = list(batch)
                yield from (dict(zip(names, values, strict=True)) for values in zip(*batch.values(), strict=True))
            return
        if loc.kind == "hub":
            check_hub_reachable(src.name, loc.target)
            ds = ds_lib.load_dataset(loc.target, src.subset, split=src.split, revision=src.revision, streaming=True)
        else:
            ds = ds_lib.load_dataset(loc.target, data_files=[str(p) for p in loc.files], split="train",
                                     streaming=True)
        yield from ds
