"""The prepare stage: collect's documents through the steps into ``train.jsonl`` and ``val.jsonl``; every
document a step drops goes to ``dropped.jsonl`` as ``{"step", "reason", "document"}``.

Documents stream through the steps one at a time (only deduplication keeps state: a hash per document),
and the three files are written atomically. Every input document ends up in exactly one of them; the
stage checks that each step's counts add up, so a step that loses documents is caught at once.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict
from typing import IO, Any

from gristmill.data import Document, Step, StepStats, counted, read_documents
from gristmill.errors import InputError
from gristmill.prepare.config import PrepareConfig
from gristmill.prepare.steps import (
    AssignSplit,
    CleanWhitespace,
    ExactDedup,
    LengthFilter,
    NormalizeUnicode,
    StripGutenberg,
)
from gristmill.workspace import StageContext, atomic_open

SPLITS = ("train", "val")
DROPPED = "dropped.jsonl"


def build_steps(cfg: PrepareConfig) -> list[Step]:
    """The step list a config asks for, in order: rewrite, filter, deduplicate, split."""
    steps: list[Step] = []
    if cfg.strip_gutenberg:
        steps.append(StripGutenberg())
    if cfg.unicode_form is not None:
        steps.append(NormalizeUnicode(cfg.unicode_form))
    if cfg.clean_whitespace:
        steps.append(CleanWhitespace())
    if cfg.min_chars or cfg.max_chars is not None or cfg.min_words:
        steps.append(LengthFilter(cfg.min_chars, cfg.max_chars, cfg.min_words))
    if cfg.dedup:
        steps.append(ExactDedup())
    steps.append(AssignSplit(cfg.val_fraction))
    return steps


def run_prepare(ctx: StageContext, cfg: PrepareConfig) -> dict[str, Any]:
    """Clean, filter, deduplicate and split collect's documents. Returns per-step and per-split stats."""
    source = ctx.input_dir("collect") / "documents.jsonl"
    steps = build_steps(cfg)
    started = time.perf_counter()
    n_in = 0
    splits = {name: {"documents": 0, "characters": 0, "sources": Counter()} for name in SPLITS}

    with ExitStack() as files:
        dropped_f = files.enter_context(atomic_open(ctx.out_dir / DROPPED, "w", encoding="utf-8"))
        out: dict[str, IO[str]] = {
            name: files.enter_context(atomic_open(ctx.out_dir / f"{name}.jsonl", "w", encoding="utf-8"))
            for name in SPLITS
        }

        def drop(doc: Document, step: str, reason: str) -> None:
            dropped_f.write(json.dumps({"step": step, "reason": reason, "document": asdict(doc)},
                                       ensure_ascii=False, sort_keys=True) + "\n")

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
