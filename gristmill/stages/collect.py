"""collect: read every source into ``documents.jsonl``; what cannot be read, into ``quarantine.jsonl``
with the reason.

Both files are written as the sources stream through (atomically: a failed run leaves neither), so
memory stays flat whatever the size of the input. Quarantine lines have the shape of prepare's
``dropped.jsonl``: ``{"step": <reader>, "reason": ..., "document": <stub with provenance and
meta.detail>}``. A source that yields no document is an error naming the source and the reasons its
records were quarantined: a run never trains on silence.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import closing
from itertools import islice
from pathlib import Path
from typing import Any

from gristmill.core.extras import check
from gristmill.core.jsonl import QuarantineWriter, write_jsonl
from gristmill.core.paths import Scan, scan
from gristmill.core.stage import ReportContext, Stage
from gristmill.core.workspace import StageContext, atomic_open
from gristmill.data.config import CollectConfig, SourceConfig
from gristmill.data.step import StepStats
from gristmill.errors import ConfigError, InputError
from gristmill.formats.document import Document, Provenance

DOCUMENTS = "documents.jsonl"
QUARANTINE = "quarantine.jsonl"
READER_EXTRAS = {"mediawiki": ("mwparserfromhell", "wiki")}
"""Source type -> (module, extra) it needs beyond the core install."""


def source_scan(source: SourceConfig) -> Scan:
    """The files a source names; an InputError naming the source if there are none."""
    try:
        return scan(source.path)
    except InputError as e:
        raise InputError(f"collect source '{source.name}': {e}; fix its path in the recipe") from None


def input_files(cfg: CollectConfig) -> list[Path]:
    """Every file the stage reads (hashed by the runner to decide whether collect must run again)."""
    seen: dict[Path, None] = {}
    for source in cfg.sources:
        seen.update(dict.fromkeys(source_scan(source).files))
    return list(seen)


def check_config(cfg: CollectConfig, recipe: Any) -> None:
    if not cfg.sources:
        raise ConfigError("collect.sources is empty: add at least one source (name, type, path) to the recipe")
    for source in cfg.sources:
        if source.type in READER_EXTRAS:
            module, extra = READER_EXTRAS[source.type]
            check(module, extra, f"collect source '{source.name}' (type {source.type})")


def make_reader(source: SourceConfig, files: list[Path]):
    if source.type == "files":
        from gristmill.data.readers.files import FilesReader, location_root

        return FilesReader(source, files, location_root(source.path))
    if source.type == "mediawiki":
        from gristmill.data.readers.mediawiki import MediaWikiReader

        return MediaWikiReader(source, files)
    raise ConfigError(f"source '{source.name}' ({source.path}) has unknown type '{source.type}'")


def _problem_stub(source: SourceConfig, path: Path, detail: str) -> Document:
    from gristmill.data.readers.files import document_id

    doc = Document(id=document_id(source.name, str(path), None), text="", source=source.name,
                   provenance=Provenance(uri=str(path), reader=source.type, license=source.license))
    doc.meta["detail"] = detail
    return doc


def run(ctx: StageContext, cfg: CollectConfig) -> dict[str, Any]:
    """Read all sources into ``documents.jsonl`` and ``quarantine.jsonl``. Returns per-source stats."""
    check_config(cfg, None)
    # Resolve every path before writing anything, so a typo in the last source fails in a second.
    plan = [(source, source_scan(source)) for source in cfg.sources]
    per_source: dict[str, dict[str, Any]] = {}

    with atomic_open(ctx.out_dir / QUARANTINE, "w", encoding="utf-8") as qf:
        quarantine = QuarantineWriter(qf)

        def documents() -> Iterator[Document]:
            for source, found in plan:
                reader = make_reader(source, found.files)
                stats = StepStats(name=reader.name, quarantine=quarantine)
                for path, reason, detail in found.problems:
                    stats.drop(_problem_stub(source, path, detail), reason)
                started, chars = time.perf_counter(), 0
                with closing(reader.run([], stats)) as docs:
                    for doc in islice(docs, source.limit):
                        stats.kept += 1
                        chars += len(doc.text)
                        yield doc
                per_source[source.name] = summary = {
                    "type": source.type,
                    "files": len(found.files),
                    "files_read": reader.files_read,
                    "documents": stats.kept,
                    "quarantined": dict(sorted(stats.dropped.items())),
                    "characters": chars,
                    "seconds": round(time.perf_counter() - started, 3),
                }
                ctx.log(f"[collect] {source.name}: {_describe(summary)}")
                if stats.kept == 0:
                    reasons = ", ".join(f"{r} {n}" for r, n in sorted(stats.dropped.items())) or "no records"
                    raise InputError(
                        f"collect source '{source.name}' ({source.path}) gave 0 documents (quarantined: "
                        f"{reasons}); check the source's type, path and file format")

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


def report(rc: ReportContext) -> str:
    from gristmill.report.markdown import reason_table

    m = rc.manifests.get("collect")
    if not m:
        return ""
    rows = [[name, s.get("type"), s.get("files"), s.get("documents"), s.get("characters"),
             sum((s.get("quarantined") or {}).values()), s.get("quarantined")]
            for name, s in (m.get("stats", {}).get("sources") or {}).items()]
    return ("## Collect\n\nDocuments read from each source; records that could not be read are in "
            "`collect/quarantine.jsonl` with their reason.\n\n"
            + reason_table(["source", "type", "files", "documents", "characters", "quarantined", "reasons"], rows)
            + "\n")


STAGE = Stage(
    name="collect",
    config=CollectConfig,
    needs=(),
    run=run,
    help="read sources into documents with provenance",
    external_inputs=input_files,
    check=check_config,
    report=report,
)
