"""prepare: collect's documents through the steps into ``train.jsonl`` and ``val.jsonl``; every
document a step drops goes to ``dropped.jsonl`` as ``{"step", "reason", "document"}``.

Documents stream through the steps one at a time (only deduplication keeps state: a hash per document),
and the three files are written atomically. Every input document ends up in exactly one of them; the
stage checks that each step's counts add up, so a step that loses documents is caught at once.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from typing import IO, Any

from gristmill.core.jsonl import QuarantineWriter
from gristmill.core.stage import ReportContext, Stage
from gristmill.core.workspace import StageContext, atomic_open
from gristmill.curate.config import PrepareConfig
from gristmill.data.step import StepStats, counted
from gristmill.errors import InputError
from gristmill.formats.document import Document, read_documents

SPLITS = ("train", "val")
DROPPED = "dropped.jsonl"
WARN_DROP_SHARE = 0.5
"""A step that drops more than this share of what it sees gets a warning naming its keys."""


def run(ctx: StageContext, cfg: PrepareConfig) -> dict[str, Any]:
    """Clean, filter, deduplicate and split collect's documents. Returns per-step and per-split stats."""
    from gristmill.curate.build import build_steps

    source = ctx.input_dir("collect") / "documents.jsonl"
    steps = build_steps(cfg)
    started = time.perf_counter()
    n_in = 0
    splits = {name: {"documents": 0, "characters": 0, "sources": Counter()} for name in SPLITS}

    with ExitStack() as files:
        drop = QuarantineWriter(files.enter_context(atomic_open(ctx.out_dir / DROPPED, "w", encoding="utf-8")))
        out: dict[str, IO[str]] = {
            name: files.enter_context(atomic_open(ctx.out_dir / f"{name}.jsonl", "w", encoding="utf-8"))
            for name in SPLITS
        }

        def documents() -> Iterator[Document]:
            nonlocal n_in
            for doc in read_documents(source):
                n_in += 1
                yield doc

        stats = [StepStats(name=step.name, quarantine=drop) for step in steps]
        docs: Iterator[Document] = documents()
        for step, st in zip(steps, stats, strict=True):
            docs = counted(step, docs, st)
        for doc in docs:
            split = doc.meta["split"]
            out[split].write(doc.to_json() + "\n")
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
            "dropped document is in `prepare/dropped.jsonl` with the step and reason.\n\n"
            + reason_table(["step", "seen", "kept", "changed", "dropped", "reasons"], rows) + "\n")


STAGE = Stage(
    name="prepare",
    config=PrepareConfig,
    needs=("collect",),
    run=run,
    help="normalise, clean, filter, deduplicate and split documents",
    report=report,
)
