"""synth: synthetic instruction data in chat format, made from the prepared documents.

Reads prepare's ``train`` and ``val`` documents and writes ``train.jsonl`` (from train documents only),
``val.jsonl`` (from val documents only, so nothing leaks into evaluation) and ``rejected.jsonl``
(``{"split", "reason", "task", "messages", "source_ids"}``). Each record is
``{"id", "task", "messages", "source_ids"}`` (docs/contracts.md). Output is a function of the documents,
the config and the run seed: the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gristmill.core.jsonl import write_jsonl
from gristmill.core.stage import ReportContext, Stage
from gristmill.core.workspace import StageContext
from gristmill.errors import InputError
from gristmill.formats.document import Document, read_documents
from gristmill.synth.config import SynthConfig

if TYPE_CHECKING:
    from gristmill.synth.checks import DraftFilter


def record_id(split: str, task: str, messages: list[dict[str, str]]) -> str:
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    return f"{split}-{task}-{digest[:12]}"


def synthesize(
    docs: Iterable[Document], split: str, cfg: SynthConfig, seed: int, dfilter: DraftFilter
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Chat records, rejected records and counts for one split's documents.

    ``dfilter`` carries the prompts already accepted, so passing the train split's filter on to the val
    split also rejects val prompts that duplicate train prompts.
    """
    kept: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    drafts: Counter = Counter()
    accepted: Counter = Counter()
    reasons: Counter = Counter()
    n_docs = 0
    from gristmill.synth.base import TaskContext
    from gristmill.synth.extractive import GENERATORS, display_title

    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    for doc in docs:
        n_docs += 1
        title = display_title(doc, cfg.play_readers)
        n = min(cfg.examples_per_document, max(1, len(doc.text) // cfg.chars_per_example))
        for gen in cfg.generators:
            # a generator's own rng: the same document gives the same drafts whatever else is in the split
            rng = random.Random(f"{seed}:{split}:{gen.type}:{doc.id}")
            for draft in GENERATORS[gen.type](doc, TaskContext(gen=gen, cfg=cfg, rng=rng, n=n, title=title)):
                drafts[draft.task] += 1
                messages = system + draft.messages
                why = dfilter.reason(draft)
                if why is None:
                    accepted[draft.task] += 1
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
                        }
                    )
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
    }
    return kept, rejected, stats


def run(ctx: StageContext, cfg: SynthConfig) -> dict[str, Any]:
    """Make ``train.jsonl`` from prepare's train documents and ``val.jsonl`` from its val documents."""
    from gristmill.synth.checks import DraftFilter

    src = ctx.input_dir("prepare")
    dfilter = DraftFilter(cfg)
    all_rejected: list[dict[str, Any]] = []
    stats: dict[str, Any] = {}
    for split in ("train", "val"):
        records, rejected, stats[split] = synthesize(read_documents(src, split), split, cfg, ctx.seed, dfilter)
        write_jsonl(ctx.out_dir / f"{split}.jsonl", records)
        all_rejected += rejected
        s = stats[split]
        ctx.log(
            f"[synth] {split}: {s['documents']} documents -> {s['examples']} examples "
            f"({s['rejected']} rejected: {s['rejected_by_reason']})"
        )
    if stats["train"]["examples"] == 0:
        raise InputError(
            f"synth made no train examples from {stats['train']['documents']} documents "
            f"(rejected: {stats['train']['rejected_by_reason']}); check synth.generators and the length limits"
        )
    write_jsonl(ctx.out_dir / "rejected.jsonl", all_rejected)
    return stats


def report(rc: ReportContext) -> str:
    from gristmill.report.markdown import reason_table

    m = rc.manifests.get("synth")
    if not m:
        return ""
    rows = []
    for split, st in (m.get("stats") or {}).items():
        if isinstance(st, dict):
            rows.append([split, st.get("documents"), st.get("drafts"), st.get("examples"), st.get("rejected"),
                         st.get("rejected_by_reason")])
    by_task = (m.get("stats") or {}).get("train", {}).get("accepted_by_task") or {}
    tasks = ", ".join(f"{t} {n:,}" for t, n in by_task.items())
    return ("## Synth\n\nConversations made from each split's documents (train from train documents only); "
            f"train examples by generator: {tasks or 'none'}. Rejected drafts are in `synth/rejected.jsonl`."
            "\n\n" + reason_table(["split", "documents", "drafts", "examples", "rejected", "reasons"], rows) + "\n")


STAGE = Stage(
    name="synth",
    config=SynthConfig,
    needs=("prepare",),
    run=run,
    help="make synthetic chat data from documents",
    report=report,
)
