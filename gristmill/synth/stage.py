"""The synth stage: run the selected generators over each split's documents, filter, write."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterable
from typing import Any

from gristmill.data import Document, read_documents
from gristmill.errors import InputError
from gristmill.synth.config import SynthConfig
from gristmill.synth.filters import DraftFilter
from gristmill.synth.tasks import TASKS, TaskContext, display_title
from gristmill.workspace import StageContext, write_jsonl


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
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    for doc in docs:
        n_docs += 1
        title = display_title(doc, cfg.play_readers)
        n = min(cfg.examples_per_document, max(1, len(doc.text) // cfg.chars_per_example))
        for name in cfg.tasks:
            # a generator's own rng: the same document gives the same drafts whatever else is in the split
            rng = random.Random(f"{seed}:{split}:{name}:{doc.id}")
            for draft in TASKS[name](doc, TaskContext(cfg=cfg, rng=rng, n=n, title=title)):
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


def run_synth(ctx: StageContext, cfg: SynthConfig) -> dict[str, Any]:
    """Make ``train.jsonl`` from prepare's train documents and ``val.jsonl`` from its val documents."""
    src = ctx.input_dir("prepare")
    dfilter = DraftFilter(cfg)
    all_rejected: list[dict[str, Any]] = []
    stats: dict[str, Any] = {}
    for split in ("train", "val"):
        path = src / f"{split}.jsonl"
        if not path.is_file():
            raise InputError(f"{path} is missing: re-run `gristmill prepare`")
        records, rejected, stats[split] = synthesize(read_documents(path), split, cfg, ctx.seed, dfilter)
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
            f"(rejected: {stats['train']['rejected_by_reason']}); check synth.tasks and the length limits"
        )
    write_jsonl(ctx.out_dir / "rejected.jsonl", all_rejected)
    return stats
