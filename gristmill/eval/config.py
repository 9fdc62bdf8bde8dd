"""The evaluate stage's config (pydantic only)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gristmill.core.config import Config
from gristmill.formats.chat import SAMPLE_PROMPTS

ModelStage = Literal["train", "base", "finetune"]
BuiltinTask = Literal["cloze", "continuation", "cloze_gen"]


class EvaluateConfig(Config):
    """Every model of the run (pre-trained, imported, fine-tuned) on the same held-out text, the same task
    suite and the same prompts, so the numbers compare side by side."""

    models: list[ModelStage] | None = None
    """Which models to score: ``train`` (pre-trained here), ``base`` (imported), ``finetune``. None = every
    one the run has made."""
    max_chars: int | None = Field(None, ge=1)
    """Score the language-model metrics on the first this many characters of prepare's validation
    documents (None = all of them). Every model reads the same text, each with its own tokenizer, so bits
    per byte compare across tokenizers."""
    heldout_files: list[str] = []
    """More held-out text to score every model on (paths, globs or ``pkg://``; each file reported on its
    own, with the same metrics)."""
    builtin_tasks: list[BuiltinTask] = ["cloze", "continuation"]
    """Tasks made from the validation documents: ``cloze`` (LAMBADA-style last word: log-likelihood and
    greedy accuracy), ``continuation`` (HellaSwag-style: pick the true ending among three from other
    documents; acc and acc_norm), ``cloze_gen`` (the cloze items answered by greedy generation, exact
    match). Written to ``evaluate/tasks/`` in lm-evaluation-harness's format."""
    task_items: int = Field(100, ge=1)
    """Items per built-in task (fewer when the validation documents are too few)."""
    tasks: list[str] = []
    """Your own task files in lm-evaluation-harness's format (YAML + local JSONL; a file or a folder of
    them): multiple choice, log-likelihood, rolling log-likelihood or generation."""
    num_fewshot: int | None = Field(None, ge=0)
    """Few-shot examples per prompt for every task (None = each task's own ``num_fewshot``)."""
    task_limit: int | None = Field(None, ge=1)
    """Score only the first this many items of each task (None = all)."""
    batch_size: int = Field(8, ge=1)
    """Sequences per forward pass (LM windows and task scoring)."""
    prompts: list[str] = ["The ", "Once upon a time", "Hamlet.\n"]
    """Plain-text prompts each model continues (sampled), shown in the report."""
    chat_prompts: list[str] = list(SAMPLE_PROMPTS)
    """Chat prompts each model answers (greedily, with its chat template), shown side by side."""
    max_new_tokens: int = Field(64, ge=0)
    """Tokens to generate per sample and answer (0 = no samples)."""
    temperature: float = Field(0.8, ge=0)
    """Sampling temperature of the plain-text samples (0 = greedy)."""
    top_k: int | None = Field(50, ge=0)
    """Sample among the k most likely tokens (None or 0 = all)."""
    top_p: float | None = Field(None, gt=0, le=1)
    """Nucleus sampling threshold (None = off)."""
    canary_candidates: int = Field(1000, ge=1)
    """When the run planted canaries (``train.canaries``): random secrets of the same format each canary's
    secret is ranked against; the highest exposure measurable is log2(canary_candidates + 1) bits."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
