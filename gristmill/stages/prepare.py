"""prepare: collect's documents through the curation steps into the ``train/`` and ``val/`` document shards;
every document a step drops goes to ``dropped/`` as ``{"step", "reason", "document"}`` rows.

The leading steps that judge each document alone (cleaning, length, language, quality, PII) run per
collect shard on the executor (``prepare.workers``, ``prepare.executor``); the steps that compare
documents (exact and near-duplicate removal, decontamination) then run over the kept shards in collect's
order, in this process, keeping state or parking documents on disk until the stream ends; the split comes
last.
The bytes written do not depend on the number of workers.
Each split is written as numbered Parquet shards, each one atomically. Every input document ends up in
exactly one split or in ``dropped/``; the stage checks that each step's counts add up, so a step that
loses documents is caught at once. Beside the shards: ``data_card.json`` (per step kept and dropped by
reason with examples, histograms of what was kept; :mod:`gristmill.curate.card`) and, with the
``minhash`` step, ``clusters.jsonl`` (each near-duplicate cluster with its members and their start).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gristmill.core.config import Config
from gristmill.core.extras import check
from gristmill.core.progress import Progress
from gristmill.core.stage import ReportContext, Stage
from gristmill.core.workspace import StageContext
from gristmill.curate.config import PrepareConfig, reason_key
from gristmill.data.config import RUNTIME_KEYS
from gristmill.data.step import StepStats, counted
from gristmill.errors import InputError
from gristmill.formats.document import Document, read_documents
from gristmill.formats.shards import shard_name as shards_name

SPLITS = ("train", "val")
DROPPED = "dropped"
CARD = "data_card.json"
CLUSTERS = "clusters.jsonl"
WORK = "work"
"""The first phase's shards and the scratch files of the steps that read their stream twice, removed when
the stage ends."""
SHARD_ROWS = 50_000
"""Documents per output shard, about (a new shard starts at the next row group past it)."""
WARN_DROP_SHARE = 0.5
"""A step that drops more than this share of what it sees gets a warning naming the key to change."""


def held_out_paths(cfg: PrepareConfig) -> list[Path]:
    """The files the decontamination step reads: its ``files`` and, with ``from_evaluate``, the files the
    recipe's evaluate section names (an InputError naming the key if one names nothing)."""
    from gristmill.core.paths import expand

    out: list[Path] = []
    for step in cfg.steps:
        if step.type != "decontaminate":
            continue
        for loc in step.files:
            try:
                out += expand(loc)
            except InputError as e:
                raise InputError(f"prepare step 'decontaminate', files: {e}") from None
        if step.from_evaluate:
            out += evaluate_files(cfg)
    return list(dict.fromkeys(out))  # a file named twice is read once


def evaluate_files(cfg: PrepareConfig) -> list[Path]:
    """The held-out files, task files and the tasks' local data files of the recipe's evaluate section,
    as the evaluate stage finds them."""
    from gristmill.eval.config import EvaluateConfig
    from gristmill.stages.evaluate import external_inputs

    heldout, tasks = cfg.evaluate_files
    if not heldout and not tasks:
        return []
    try:
        return external_inputs(EvaluateConfig(heldout_files=heldout, tasks=tasks))
    except InputError as e:
        raise InputError(f"{e} (prepare's decontaminate step reads the evaluate section's files; fix the "
                         "path or set from_evaluate: false)") from None


def check_config(cfg: PrepareConfig, recipe: Any) -> None:
    """Before any stage runs: the language model is installed, the held-out files exist."""
    for step in cfg.steps:
        if step.type == "language":
            check("py3langid", "curate", "prepare step 'language'")
    if cfg.executor == "ray":
        check("ray", "ray", "prepare.executor: ray")
    held_out_paths(cfg)


def run(ctx: StageContext, cfg: PrepareConfig) -> dict[str, Any]:
    """Clean, filter, deduplicate and split collect's documents. Returns per-step and per-split stats.

    The leading steps that judge each document alone run per collect shard (:mod:`gristmill.curate.shard`):
    in this process, streaming into the rest, or on the executor (``prepare.workers``), each task writing
    its kept documents to ``work/``. Their drops go to ``dropped/<shard>.parquet``. The kept documents then
    go, shard by shard in order, through the steps that compare documents and the split, whose drops
    follow in ``dropped/`` (numbered after the shards). The same bytes either way.
    """
    import shutil

    from gristmill import __version__
    from gristmill.core.jsonl import write_jsonl
    from gristmill.core.workspace import write_json
    from gristmill.curate.build import build_steps
    from gristmill.curate.card import DataCard
    from gristmill.curate.decontam import held_out_texts
    from gristmill.curate.shard import (
        KEPT,
        CurateShard,
        ShardRun,
        curate_shard,
        local_prefix,
        merge_results,
        shard_key,
    )
    from gristmill.data.executor import InlineExecutor, Task, make_executor, run_tasks
    from gristmill.data.writers.parquet import DocumentWriter, QuarantineShardWriter
    from gristmill.formats.document import count_documents, document_files

    source = ctx.input_dir("collect")
    total = count_documents(source)  # an InputError naming the command to run if collect has not
    files = document_files(source)
    started = time.perf_counter()
    stage_dir = ctx.out_dir.resolve()
    n_local = local_prefix(cfg.steps)
    local_cfg = list(cfg.steps[:n_local])
    steps = build_steps(cfg, list(held_out_texts(held_out_paths(cfg))), work_dir=stage_dir / WORK)[n_local:]
    card = DataCard()
    shard_results: list[dict[str, Any]] = []
    stream = True
    if n_local and files:
        specs = [CurateShard(str(f), str(stage_dir), i, local_cfg) for i, f in enumerate(files)]
        tasks = [Task(index=s.index, key=shard_key(s, __version__), label=f"collect shard {Path(s.path).name}",
                      input_bytes=Path(s.path).stat().st_size, payload=s) for s in specs]
        executor = make_executor(cfg, tasks)
        stream = isinstance(executor, InlineExecutor)
        if not stream:
            markers = run_tasks(curate_shard, stage_dir, tasks, (DROPPED, f"{WORK}/{KEPT}"), executor, ctx.log,
                                "prepare: per-document steps")
            shard_results = [m["stats"] for m in markers]
            total = sum(int(r["documents"]) for r in shard_results)
    splits = {name: {"documents": 0, "characters": 0, "bytes": 0, "sources": Counter()} for name in SPLITS}
    progress = Progress("prepare", total, 0, ctx.log, unit_name="documents in")
    # The second phase's drops are numbered after the shards' own.
    drop = QuarantineShardWriter(ctx.out_dir / DROPPED, first_index=len(files) if n_local else 0,
                                 max_rows=SHARD_ROWS)
    out = {name: DocumentWriter(ctx.out_dir / name, max_rows=SHARD_ROWS) for name in SPLITS}
    writers = [drop, *out.values()]
    n_plain = 0  # documents read with no per-document step before the rest

    def quarantine(doc: Document, step: str, reason: str) -> None:
        card.dropped(doc, step, reason)
        drop(doc, step, reason)

    def documents() -> Iterator[Document]:
        nonlocal n_plain
        for i, path in enumerate(files):
            if not n_local:
                for doc in read_documents(path):
                    n_plain += 1
                    progress.add(units=1)
                    yield doc
            elif stream:
                shard = ShardRun(local_cfg, ctx.out_dir / DROPPED, i)
                try:
                    for doc in shard.run(read_documents(path)):
                        progress.add(units=1)
                        yield doc
                except BaseException:
                    shard.abort()
                    raise
                shard_results.append(shard.result())
            else:
                for doc in read_documents(stage_dir / WORK / KEPT / shards_name(i)):
                    progress.add(units=1)
                    yield doc

    try:
        stats = [StepStats(name=step.name, quarantine=quarantine) for step in steps]
        docs: Iterator[Document] = documents()
        for step, st in zip(steps, stats, strict=True):
            docs = counted(step, docs, st)
        for doc in docs:
            split = doc.meta["split"]
            data = doc.text.encode("utf-8")
            out[split].write(doc, len(data))
            card.kept(doc)
            progress.add(documents=1, nbytes=len(data))
            s = splits[split]
            s["documents"] += 1
            s["characters"] += len(doc.text)
            s["bytes"] += len(data)
            s["sources"][doc.source] += 1
        local_stats, local_details = merge_results(shard_results)
        for r in shard_results:  # in shard order: the first examples of each reason, as one stream gives
            card.add_dropped(r["card"])
        stats = local_stats + stats
        n_in = local_stats[0].seen if local_stats else n_plain
        _check_accounting(n_in, stats, splits)
        if cfg.val_fraction > 0 and n_in and not (splits["train"]["documents"] and splits["val"]["documents"]):
            empty = "val" if splits["train"]["documents"] else "train"
            kept = sum(s["documents"] for s in splits.values())
            why = "".join(f"; {w}" for w in _warnings(cfg, stats)[:1])
            raise InputError(f"prepare: the {empty} split is empty ({kept} documents kept of {n_in}, "
                             f"val_fraction={cfg.val_fraction}); add documents or change prepare.val_fraction"
                             + why)
        for w in writers:
            w.close()
    except BaseException:
        for w in writers:
            w.abort()
        shutil.rmtree(ctx.out_dir / DROPPED, ignore_errors=True)  # the shards' drops too: no partial output
        raise
    finally:
        progress.close()
        shutil.rmtree(stage_dir / WORK, ignore_errors=True)
        shutil.rmtree(stage_dir / "done", ignore_errors=True)

    details = {**local_details, **{step.name: step.summary() for step in steps if hasattr(step, "summary")}}
    minhash = next((step for step in steps if step.name == "minhash"), None)
    if minhash is not None:
        write_jsonl(ctx.out_dir / CLUSTERS, minhash.cluster_records())
    warnings = _warnings(cfg, stats)
    for st in stats:
        ctx.log(f"[prepare] {st.name}: {_describe(st)}")
    for w in warnings:
        ctx.log(f"[prepare] warning: {w}")
    split_stats = {name: {**s, "sources": dict(sorted(s["sources"].items()))} for name, s in splits.items()}
    configs = {s.type: s for s in cfg.steps}
    reason_keys = {st.name: {r: reason_key(configs[st.name], r) for r in st.dropped}
                   for st in stats if st.name in configs}
    write_json(ctx.out_dir / CARD, card.build(stats, reason_keys=reason_keys, details=details,
                                              splits=split_stats, documents_in=n_in, warnings=warnings))
    result = {
        "documents_in": n_in,
        "dropped": sum(sum(st.dropped.values()) for st in stats),
        "steps": {st.name: {**st.as_dict(), **({"details": details[st.name]} if st.name in details else {})}
                  for st in stats},
        "splits": split_stats,
        "warnings": warnings,
        "seconds": round(time.perf_counter() - started, 3),
    }
    ctx.log(f"[prepare] {n_in} documents in: {splits['train']['documents']} train, "
            f"{splits['val']['documents']} val, {result['dropped']} dropped")
    return result


def _warnings(cfg: PrepareConfig, stats: list[StepStats]) -> list[str]:
    """One sentence for each step that dropped more than half of what it saw, naming the key to change."""
    configs = {s.type: s for s in cfg.steps}
    out = []
    for st in stats:
        n_dropped = sum(st.dropped.values())
        if not st.seen or n_dropped <= WARN_DROP_SHARE * st.seen:
            continue
        reason, n = max(st.dropped.items(), key=lambda kv: (kv[1], kv[0]))
        step_cfg = configs.get(st.name)
        key = reason_key(step_cfg, reason) if step_cfg is not None else None
        msg = (f"step '{st.name}' dropped {n_dropped:,} of {st.seen:,} documents ({n_dropped / st.seen:.0%}), "
               f"{n:,} for {reason}; ")
        if key is None:
            msg += f"if that is not intended, take '{st.name}' out of prepare.steps"
        else:
            msg += f"if that is not intended, change prepare.steps[{st.name}].{key}{_now(step_cfg, key)}"
        if cfg.kind != "short" and st.name == "length":
            msg += ", or set prepare.kind: short for quotes, verses and other short texts"
        out.append(msg)
    return out


def _now(step_cfg: Config | None, key: str) -> str:
    """`` (now 200)`` for the fields a reason key names."""
    names = [k.strip() for k in key.split("(")[0].split("/")]
    known = [k for k in names if k in type(step_cfg).model_fields]
    if len(known) == 1:
        return f" (now {getattr(step_cfg, known[0])!r})"
    return f" (now {', '.join(f'{k} {getattr(step_cfg, k)!r}' for k in known)})" if known else ""


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
    from gristmill.report.runfiles import prepare_steps

    m = rc.manifests.get("prepare")
    if not m:
        return ""
    stats = m.get("stats", {})
    rows = [[name, st.get("seen"), st.get("kept"), st.get("changed"), sum((st.get("dropped") or {}).values()),
             st.get("dropped")] for name, st in prepare_steps(m)]
    splits = stats.get("splits") or {}
    kept = ", ".join(f"{s.get('documents', 0):,} {name}" for name, s in splits.items())
    return (f"## Prepare\n\n{stats.get('documents_in', 0):,} documents in; kept {kept}. Each step's counts; every "
            "dropped document is in `prepare/dropped/` with the step and reason.\n\n"
            + reason_table(["step", "seen", "kept", "changed", "dropped", "reasons"], rows) + "\n"
            + card_section(rc.stage_dir("prepare") / CARD))


def card_section(path: Path) -> str:
    """The data card as Markdown: sizes per step, the key behind each drop reason with an example, the
    language mix, the length and signal histograms, and the warnings."""
    from gristmill.report.markdown import clip, human_bytes, read_json_or_none, table

    card = read_json_or_none(path)
    if not isinstance(card, dict):
        return ""
    out = [f"### Data card\n\n`prepare/{CARD}`: {card.get('documents_in', 0):,} documents "
           f"({human_bytes(int(card.get('bytes_in', 0)))}) in, {card.get('documents_kept', 0):,} "
           f"({human_bytes(int(card.get('bytes_kept', 0)))}) kept.\n"]
    out += [f"- warning: {w}" for w in card.get("warnings") or []]
    rows, examples = [], []
    for st in card.get("steps") or []:
        rows.append([st.get("step"), st.get("seen"), human_bytes(int(st.get("bytes_in", 0))),
                     human_bytes(int(st.get("bytes_out", 0))), human_bytes(int(st.get("dropped_bytes", 0)))])
        for reason, d in (st.get("dropped") or {}).items():
            ex = (d.get("examples") or [{}])[0]
            examples.append([f"{st.get('step')}: {reason}", d.get("documents"), human_bytes(int(d.get("bytes", 0))),
                             f"`{d['key']}`" if d.get("key") else "–",
                             clip(" ".join(str(ex.get("text", "")).split()), 100).replace("|", "\\|")])
    out.append("\n" + table(["step", "documents in", "bytes in", "bytes out", "bytes dropped"], rows))
    if examples:
        out.append("\nWhat was dropped, the key that decides it, and the start of the first document dropped:\n\n"
                   + table(["step: reason", "documents", "bytes", "key", "example"], examples))
    hist = card.get("histograms") or {}
    if hist.get("language"):
        total = sum(hist["language"].values()) or 1
        out.append("\nLanguages of the kept documents: " + ", ".join(
            f"{lang} {n / total:.1%}" for lang, n in list(hist["language"].items())[:10]) + ".")
    length = hist.get("length_characters") or {}
    if any(length.get("counts") or []):
        edges, counts = length["edges"], length["counts"]
        cells = [[f"{edges[i]:,}–{edges[i + 1]:,}" if i + 1 < len(edges) else f"{edges[i]:,}+", n]
                 for i, n in enumerate(counts) if n]
        out.append("\nLength of the kept documents (characters):\n\n" + table(["characters", "documents"], cells))
    for name, h in (hist.get("signals") or {}).items():
        edges, counts = h.get("edges") or [], h.get("counts") or []
        cells = [f"≥{edges[i]:g}: {n:,}" for i, n in enumerate(counts) if n]
        if cells:
            out.append(f"\n`{name}` over the kept documents: " + ", ".join(cells) + ".")
    return "\n".join(out) + "\n"


STAGE = Stage(
    name="prepare",
    config=PrepareConfig,
    needs=("collect",),
    run=run,
    help="normalise, clean, filter, deduplicate and split documents",
    runtime_keys=RUNTIME_KEYS,
    check=check_config,
    external_inputs=held_out_paths,
    report=report,
)
