"""The collect stage: read every source into ``documents.jsonl``; what cannot be read, into
``quarantine.jsonl`` with the reason.

Both files are written as the sources stream through (atomically: a failed run leaves neither), so
memory stays flat whatever the size of the input. Quarantine lines have the shape of prepare's
``dropped.jsonl``: ``{"step": <reader>, "reason": ..., "document": <stub with provenance and
meta.detail>}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Any

from gristmill.collect.config import CollectConfig, SourceConfig
from gristmill.collect.mediawiki import MediaWikiReader
from gristmill.collect.readers import FilesReader, location_root
from gristmill.data import Document, StepStats
from gristmill.errors import ConfigError, InputError
from gristmill.paths import expand
from gristmill.workspace import StageContext, atomic_open, write_jsonl

DOCUMENTS = "documents.jsonl"
QUARANTINE = "quarantine.jsonl"


def source_files(source: SourceConfig) -> list[Path]:
    """The files a source names; an InputError naming the source if there are none."""
    try:
        return expand(source.path)
    except InputError as e:
        raise InputError(f"collect source '{source.name}': {e}; fix its path in the recipe") from None


def input_files(cfg: CollectConfig) -> list[Path]:
    """Every file the stage reads (hashed by the runner to decide whether collect must run again)."""
    seen: dict[Path, None] = {}
    for source in cfg.sources:
        seen.update(dict.fromkeys(source_files(source)))
    return list(seen)


def make_reader(source: SourceConfig, files: list[Path]) -> FilesReader | MediaWikiReader:
    if source.type == "files":
        return FilesReader(source, files, location_root(source.path))
    if source.type == "mediawiki":
        return MediaWikiReader(source, files)
    raise ConfigError(f"source '{source.name}' ({source.path}) has unknown type '{source.type}'")


def run_collect(ctx: StageContext, cfg: CollectConfig) -> dict[str, Any]:
    """Read all sources into ``documents.jsonl`` and ``quarantine.jsonl``. Returns per-source stats."""
    if not cfg.sources:
        raise ConfigError("collect.sources is empty: add at least one source (name, type, path) to the recipe")
    # Resolve every path before writing anything, so a typo in the last source fails in a second.
    plan = [(source, source_files(source)) for source in cfg.sources]
    per_source: dict[str, dict[str, Any]] = {}

    with atomic_open(ctx.out_dir / QUARANTINE, "w", encoding="utf-8") as qf:
        def quarantine(doc: Document, step: str, reason: str) -> None:
            qf.write(json.dumps({"step": step, "reason": reason, "document": asdict(doc)},
                                ensure_ascii=False, sort_keys=True) + "\n")

        def documents() -> Iterator[Document]:
            for source, files in plan:
                reader = make_reader(source, files)
                stats = StepStats(name=reader.name, quarantine=quarantine)
                started, chars = time.perf_counter(), 0
                with closing(reader.run([], stats)) as docs:
                    for doc in islice(docs, source.limit):
                        stats.kept += 1
                        chars += len(doc.text)
                        yield doc
                per_source[source.name] = summary = {
                    "type": source.type,
                    "files": len(files),
                    "files_read": reader.files_read,
                    "documents": stats.kept,
                    "quarantined": dict(sorted(stats.dropped.items())),
                    "characters": chars,
                    "seconds": round(time.perf_counter() - started, 3),
                }
                ctx.log(f"[collect] {source.name}: {_describe(summary)}")

        n_docs = write_jsonl(ctx.out_dir / DOCUMENTS, documents())

    return {
        "documents": n_docs,
        "quarantined": sum(sum(s["quarantined"].values()) for s in per_source.values()),
        "characters": sum(s["characters"] for s in per_source.values()),
        "sources": per_source,
    }


def _describe(s: dict[str, Any]) -> str:
    q = ", ".join(f"{reason} {n}" for reason, n in s["quarantined"].items()) or "none"
    return (f"{s['documents']} documents, {s['characters'] / 1e6:.2f}M characters from {s['files_read']} "
            f"of {s['files']} files in {s['seconds']:.1f}s; quarantined: {q}")
