"""What a run's document store holds, for a person to look at: ``gristmill show-docs RUN STAGE``.

Counts come from the shards' columns (``source``, ``reason``: only those columns are read), the
documents printed are the first ``n`` of the split.
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from itertools import islice
from pathlib import Path

from gristmill.errors import InputError
from gristmill.formats import shards
from gristmill.formats.document import document_files, read_documents, read_quarantine

SPLITS = {"collect": ("documents", "quarantine"), "prepare": ("train", "val", "dropped")}
QUARANTINE_SPLITS = ("quarantine", "dropped")


def _column_counts(files: list[Path], column: str, nested: str | None = None) -> Counter:
    counts: Counter = Counter()
    parquet = [p for p in files if p.suffix == shards.SHARD_SUFFIX]
    for row in shards.iter_rows(parquet, columns=[nested or column]):
        value = row[nested][column] if nested else row[column]
        counts[value or "unknown"] += 1
    for p in files:
        if p not in parquet:  # an older JSONL split
            from gristmill.core.jsonl import read_records

            for rec in read_records(p, strict=False):
                value = (rec.get(nested) or {}).get(column) if nested else rec.get(column)
                counts[value or "unknown"] += 1
    return counts


def _line(counts: Counter) -> str:
    return ", ".join(f"{k} {n:,}" for k, n in counts.most_common()) or "none"


def show_documents(run_dir: Path, stage: str, split: str | None = None, n: int = 3, chars: int = 300) -> str:
    """Counts per split (by source; by reason for quarantines) and the first ``n`` documents of ``split``."""
    stage_dir = Path(run_dir) / stage
    if stage not in SPLITS:
        raise InputError(f"show-docs reads collect or prepare, not '{stage}'")
    if not stage_dir.is_dir():
        raise InputError(f"{stage_dir} does not exist: run `gristmill {stage} RECIPE` first (or check the run folder)")
    split = split or SPLITS[stage][0]
    if split not in SPLITS[stage]:
        raise InputError(f"{stage} has the splits {', '.join(SPLITS[stage])}, not '{split}'")
    out = [f"{stage_dir}/"]
    for name in SPLITS[stage]:
        files = document_files(stage_dir, name)
        if name in QUARANTINE_SPLITS:
            reasons = _column_counts(files, "reason")
            out.append(f"  {name}: {sum(reasons.values()):,} records in {len(files)} shard(s); by reason: "
                       f"{_line(reasons)}")
        else:
            sources = _column_counts(files, "source")
            out.append(f"  {name}: {sum(sources.values()):,} documents in {len(files)} shard(s); by source: "
                       f"{_line(sources)}")
    out.append("")
    if split in QUARANTINE_SPLITS:
        for i, rec in enumerate(islice(read_quarantine(stage_dir, split), n), 1):
            doc = rec["document"]
            prov = doc.get("provenance") or {}
            detail = (doc.get("meta") or {}).get("detail", "")
            out.append(f"[{i}] {rec['reason']} (step {rec['step']}, source {doc.get('source')})")
            out.append(f"    uri {prov.get('uri')}  record {prov.get('record')}")
            out.append(textwrap.indent(textwrap.fill(str(detail), 100), "    "))
            if doc.get("text"):
                out.append(textwrap.indent(_excerpt(doc["text"], chars), "    | "))
            out.append("")
    else:
        for i, doc in enumerate(islice(read_documents(stage_dir, split), n), 1):
            p = doc.provenance
            out.append(f"[{i}] {doc.id}  source {doc.source}  title {p.title!r}  {len(doc.text):,} characters")
            out.append(f"    uri {p.uri}  record {p.record}  retrieved {p.retrieved_at}  licence {p.license}")
            if doc.meta:
                out.append(f"    meta {json.dumps(doc.meta, ensure_ascii=False, sort_keys=True)[:300]}")
            out.append(textwrap.indent(_excerpt(doc.text, chars), "    | "))
            out.append("")
    return "\n".join(out) + "\n"


def _excerpt(text: str, chars: int) -> str:
    cut = text[:chars]
    return cut + ("…" if len(text) > chars else "")
