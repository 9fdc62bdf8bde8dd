"""prepare: collect's documents through the steps into the ``train/`` and ``val/`` document shards; every
document a step drops goes to ``dropped/`` as ``{"step", "reason", "document"}`` rows.

Documents stream through the steps one at a time, in collect's order (only deduplication keeps state: a
hash per document), and each split is written as numbered Parquet shards, each one atomically. Every
input document ends up in exactly one split; the stage checks that each step's counts add up, so a step
that loses documents is caught at once. It runs in one process: exact deduplication needs every document
seen before the one at hand.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from gristmill.core.progress import Progress
from gristmill.core.stage import ReportContext, Stage
from gristmill.core.workspace import StageContext
from gristmill.curate.config import PrepareConfig
from gristmill.data.step import StepStats, counted
from gristmill.errors import InputError
from gristmill.formats.document import Document, read_documents

SPLITS = ("train", "val")
DROPPED = "dropped"
SHARD_ROWS = 50_000
"""Documents per output shard, about (a new shard starts at the next row group past it)."""
WARN_DROP_SHARE = 0.5
"""A step that drops more than this share of what it sees gets a warning naming its keys."""


def run(ctx: StageContext, cfg: PrepareConfig) -> dict[str, Any]:
    """Clean, filter, deduplicate and split collect's documents. Returns per-step and per-split stats."""
    from gristmill.curate.build import build_steps
    from gristmill.data.writers.parquet import DocumentWriter, QuarantineShardWriter
    from gristmill.formats.document import count_documents

    source = ctx.input_dir("collect")
    steps = build_steps(cfg)
    started = time.perf_counter()
    n_in = 0
    splits = {name: {"documents": 0, "characters": 0, "sources": Counter()} for name in SPLITS}
    total = count_documents(source)
    progress = Progress("prepare", total, 0, ctx.log, unit_name="documents in")
    drop = QuarantineShardWriter(ctx.out_dir / DROPPED, max_rows=SHARD_ROWS)
    out = {name: DocumentWriter(ctx.out_dir / name, max_rows=SHARD_ROWS) for name in SPLITS}
    writers = [drop, *out.values()]
    try:
        def documents() -> Iterator[Document]:
            nonlocal n_in
            for doc in read_documents(source):
                n_in += 1
                progress.add(units=1)
                yield doc

        stats = [StepStats(name=step.name, quarantine=drop) for step in steps]
        docs: Iterator[Document] = documents()
        for step, st in zip(steps, stats, strict=True):
            docs = counted(step, docs, st)
        for doc in docs:
            split = doc.meta["split"]
            data = doc.text.encode("utf-8")
            out[split].write(doc, len(data))
            progress.add(documents=1, nbytes=len(data))
            s = splits[split]
            s["documents"] += 1
            s["characters"] += len(doc.text)
            s["sources"][doc.source] += 1
        _check_accounting(n_in, stats, splits)
        if cfg.val_fraction > 0 and n_in and not (splits["train"]["documents"] and splits["val"]["documents"]):
            empty = "val" if splits["train"]["documents"] else "train"
            kept = sum(s["documents"] for s in splits.values())
            raise InputError(
                f"prepare: the {empty} split is empty ({kept} documents kept of {n_in}, "
                f"val_fraction={cfg.val_fraction}); add documents or change prepare.val_fraction"
            )
        for w in writers:
            w.close()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    finally:
        progress.close()

    for st in stats:
        ctx.log(f"[prepare] {st.name}: {_describe(st)}")
        n_dropped = sum(st.dropped.values())
        if st.seen and n_dropped > WARN_DROP_SHARE * st.seen:
            ctx.log(f"[prepare] warning: step '{st.name}' dropped {n_dropped:,} of {st.seen:,} documents "
                    f"({n_dropped / st.seen:.0%}); if that is not intended, change its keys under prepare.steps "
                    f"(see `gristmill keys`)")
    result = {
        "documents_in": n_in,
        "dropped": sum(sum(st.dropped.values()) for st in stats),
        "steps": {st.name: st.as_dict() for st in stats},
        "splits": {name: {**s, "sources": dict(sorted(s["sources"].items()))} for name, s in splits.items()},
        "seconds": round(time.perf_counter() - started, 3),
    }
    ctx.log(f"[prepare] {n_in} documents in: {splits['train']['documents']} train, "
            f"{splits['val']['documents']} val, {result['dropped']} dropped")
    return result


def _check_accounting(n_in: int, stats: list[StepStats], splits: dict[str, dict[str, Any]]) -> None:
    """Every document a step saw was kept or dropped with a reason; every input reached an output."""
    for st in stats:
        if st.seen != st.kept + sum(st.dropped.values()):
            raise RuntimeError(f"prepare step '{st.name}' lost documents: saw {st.seen}, kept {st.kept}, "
                               f"dropped {sum(st.dropped.values())} (a step must drop through stats.drop)")
    out = sum(s["documents"] for s in splits.values()) + sum(sum(st.dropped.values()) for st in stats)
    if out != n_in:
        raise RuntimeError(f"prepare read {n_in} documents but wrote {out} (a bug in a step)")


def _describe(st: StepStats) -> str:
    dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(st.dropped.items())) or "none"
    return f"saw {st.seen}, kept {st.kept}, changed {st.changed}, dropped: {dropped}"


def report(rc: ReportContext) -> str:
    from gristmill.report.markdown import reason_table

    m = rc.manifests.get("prepare")
    if not m:
        return ""
    stats = m.get("stats", {})
    rows = [[name, st.get("seen"), st.get("kept"), st.get("changed"), sum((st.get("dropped") or {}).values()),
             st.get("dropped")] for name, st in (stats.get("steps") or {}).items()]
    splits = stats.get("splits") or {}
    kept = ", ".join(f"{s.get('documents', 0):,} {name}" for name, s in splits.items())
    return (f"## Prepare\n\n{stats.get('documents_in', 0):,} documents in; kept {kept}. Each step's counts; every "
            "dropped document is in `prepare/dropped/` with the step and reason.\n\n"
            + reason_table(["step", "seen", "kept", "changed", "dropped", "reasons"], rows) + "\n")


STAGE = Stage(
    name="prepare",
    config=PrepareConfig,
    needs=("collect",),
    run=run,
    help="normalise, clean, filter, deduplicate and split documents",
    report=report,
)
