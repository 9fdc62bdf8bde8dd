"""prepare's unit of work: one collect shard through the steps that judge each document on its own.

Normalisers, the length, language and quality filters and PII redaction need nothing but the document in
hand, so prepare runs them per collect shard: what a shard's steps drop goes straight to the stage's
``dropped/<index>.parquet``, and what they keep flows on to the steps that compare documents
(deduplication, decontamination), which see the shards in order. With one worker the kept documents flow
on in memory (:class:`ShardRun`); on an executor (a process pool, Ray) each task writes them to
``work/kept/<index>.parquet`` (:func:`curate_shard`) and the stage reads those back in order. Either way
a shard's drops, counts and data-card share depend only on the shard and the config, so the stage writes
the same bytes whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gristmill.core.config import Config
from gristmill.data.executor.base import Report
from gristmill.data.step import StepStats, counted
from gristmill.formats.document import Document, read_documents

LOCAL_STEPS = frozenset({"strip_gutenberg", "normalize_unicode", "clean_whitespace", "length", "language",
                         "gopher_quality", "gopher_repetition", "c4", "fineweb", "pii"})
"""Step types that judge or rewrite each document alone (the others compare documents)."""
KEPT, DROPPED = "kept", "dropped"


def local_prefix(steps: Iterable[Config]) -> int:
    """How many of the first steps are per-document steps (they run per shard, in parallel)."""
    n = 0
    for s in steps:
        if s.type not in LOCAL_STEPS:
            break
        n += 1
    return n


class ShardRun:
    """One shard through the per-document steps: :meth:`run` yields what they keep and writes what they
    drop to ``dropped_dir/<index>.parquet``; :meth:`result` is the shard's counts and data-card share."""

    def __init__(self, steps: list[Config], dropped_dir: Path, index: int) -> None:
        from gristmill.curate.build import BUILDERS, BuildContext
        from gristmill.curate.card import DataCard
        from gristmill.data.writers.parquet import QuarantineShardWriter

        build = BuildContext(val_fraction=0.0)
        self.steps = [BUILDERS[type(s)](s, build) for s in steps]
        self.card = DataCard()
        self.dropped = QuarantineShardWriter(dropped_dir, index)
        self.stats = [StepStats(name=step.name, quarantine=self._drop) for step in self.steps]
        self.kept = 0

    def _drop(self, doc: Document, step: str, reason: str) -> None:
        self.card.dropped(doc, step, reason)
        self.dropped(doc, step, reason)

    def run(self, docs: Iterable[Document]) -> Iterator[Document]:
        for step, st in zip(self.steps, self.stats, strict=True):
            docs = counted(step, docs, st)
        for doc in docs:
            self.kept += 1
            yield doc
        self.dropped.close()

    def abort(self) -> None:
        self.dropped.abort()

    def result(self) -> dict[str, Any]:
        return {"steps": [{"name": st.name, **st.as_dict(),
                           **({"summary": step.summary()} if hasattr(step, "summary") else {})}
                          for step, st in zip(self.steps, self.stats, strict=True)],
                "documents": self.kept, "card": self.card.dropped_part()}


@dataclass
class CurateShard:
    """What a worker needs to run one collect shard through the per-document steps (picklable)."""

    path: str
    """The collect shard (or JSONL file) to read."""
    stage_dir: str
    """prepare's folder: drops go to its ``dropped/``, kept documents to its ``work/kept/``."""
    index: int
    steps: list[Config]


def shard_key(spec: CurateShard, version: str) -> str:
    """Everything that decides a task's output: the input file (path, size, time), the steps, the version."""
    st = Path(spec.path).stat()
    key = {"path": spec.path, "size": st.st_size, "mtime": st.st_mtime_ns, "version": version,
           "steps": [s.model_dump(mode="json") for s in spec.steps]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def curate_shard(spec: CurateShard, report: Report) -> dict[str, Any]:
    """An executor task: run one shard, writing ``work/kept/<index>.parquet`` and ``dropped/<index>.parquet``;
    returns :meth:`ShardRun.result`."""
    from gristmill.data.writers.parquet import DocumentWriter

    stage = Path(spec.stage_dir)
    shard = ShardRun(spec.steps, stage / DROPPED, spec.index)
    kept = DocumentWriter(stage / "work" / KEPT, spec.index)
    try:
        for doc in shard.run(read_documents(Path(spec.path))):
            data = doc.text.encode("utf-8")
            kept.write(doc, len(data))
            report(1, len(data))
        kept.close()
    except BaseException:
        kept.abort()
        shard.abort()
        raise
    return shard.result()


def merge_results(results: list[dict[str, Any]]) -> tuple[list[StepStats], dict[str, dict[str, int]]]:
    """Every shard's step counts added up, in step order; and the steps' summaries (counts) added up."""
    merged: list[StepStats] = []
    summaries: dict[str, Counter[str]] = {}
    for result in results:
        for i, d in enumerate(result["steps"]):
            if i == len(merged):
                merged.append(StepStats(name=d["name"]))
            merged[i].add(d)
            if "summary" in d:
                summaries.setdefault(d["name"], Counter()).update(d["summary"])
    ordered = {name: dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))) for name, c in summaries.items()}
    return merged, ordered
