"""Compare models across runs and checkpoints on the metrics their runs recorded (nothing is recomputed).

A run holds up to three models: ``train/model`` (pre-trained), ``base/model`` (imported) and
``finetune/model`` (fine-tuned). For each, the figures come from the files the stages wrote:

- text validation loss, perplexity and bits per byte, with the tokens scored: ``evaluate/eval.json``
  (``models.<stage>``: every model on the same text); failing that, train's final evaluation in
  ``train/manifest.json`` for the pre-trained model and ``finetune/eval.json`` (``lm_val`` before/after)
  for the model fine-tuning started from and the fine-tuned one;
- chat validation loss before/after fine-tuning: ``finetune/eval.json`` (``chat_val``);
- task-suite scores: ``models.<stage>.tasks`` in ``evaluate/eval.json``;
- parameters, steps, training time and tokens: the stages' manifests.

``compare(paths)`` resolves run and model folders (a one-line error for a missing or unfinished one);
``to_text``, ``to_markdown`` and ``to_json`` format the result.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gristmill.core.workspace import load_manifest
from gristmill.errors import InputError
from gristmill.report.markdown import fmt, table
from gristmill.report.runfiles import read_dict, read_metrics, tasks_block

MODELS = {"train": "pre-trained", "base": "imported", "finetune": "fine-tuned"}
"""The stages whose ``model/`` folder is a model, in the order they are listed, with what each model is."""


@dataclass
class Scores:
    """Metrics of one model on one set of held-out tokens, and where they were read."""

    loss: float | None = None
    perplexity: float | None = None
    bits_per_byte: float | None = None
    tokens: int | None = None
    source: str = ""
    """``file: key`` the numbers come from, relative to the run folder."""


@dataclass
class ModelEntry:
    """One model of one run with what its run recorded about it. Missing figures are None."""

    run: str
    """The run folder's name."""
    model: str
    """The stage that made it: ``train``, ``base`` or ``finetune``."""
    label: str
    """pre-trained, imported or fine-tuned."""
    path: str
    parameters: int | None = None
    steps: int | None = None
    max_steps: int | None = None
    train_seconds: float | None = None
    tokens_seen: int | None = None
    started_from: str | None = None
    """Fine-tuned models: the model fine-tuning started from (``train/model`` or ``base/model``)."""
    text_val: Scores | None = None
    """Language-model metrics on validation text (nats per token of this model's tokenizer)."""
    chat_val: Scores | None = None
    """Loss on the assistant tokens of held-out conversations (nats per assistant token)."""
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Task-suite scores: {task: {metric: value}}."""

    @property
    def name(self) -> str:
        return f"{self.run} {self.label}"


# ----------------------------------------------------------------------------------------------------
# Reading a run


def _scores(d: Any, source: str) -> Scores | None:
    if not isinstance(d, dict) or not isinstance(d.get("loss"), int | float):
        return None
    return Scores(d.get("loss"), d.get("perplexity"), d.get("bits_per_byte"), d.get("tokens"), source)


def run_models(run_dir: Path) -> list[ModelEntry]:
    """Every finished model of a run (its stage's manifest written and its ``model/`` folder there)."""
    run_dir = Path(run_dir)
    manifests = {s: load_manifest(run_dir / s) for s in (*MODELS, "evaluate")}
    entries: dict[str, ModelEntry] = {}
    for stage, label in MODELS.items():
        m = manifests[stage]
        if m is None or not (run_dir / stage / "model").is_dir():
            continue
        s = m.get("stats") or {}
        e = ModelEntry(run=run_dir.name, model=stage, label=label, path=str(run_dir / stage / "model"),
                       parameters=s.get("parameters"))
        if stage != "base":
            e.steps, e.max_steps, e.train_seconds = s.get("steps"), s.get("max_steps"), s.get("train_seconds")
            e.tokens_seen = s.get("tokens_seen")
            if e.tokens_seen is None:  # fine-tuning logs its token count in metrics.jsonl only
                tokens = read_metrics(run_dir / stage / "metrics.jsonl").get("tokens") or {}
                e.tokens_seen = int(list(tokens.values())[-1]) if tokens else None
        entries[stage] = e

    # evaluate scores every model of the run: held-out text metrics and task-suite scores
    ev = read_dict(run_dir / "evaluate" / "eval.json") if manifests["evaluate"] is not None else {}
    for stage, scored in (ev.get("models") or {}).items():
        owner = entries.get(stage)
        if owner is not None and isinstance(scored, dict):
            owner.text_val = _scores(scored, f"evaluate/eval.json: models.{stage}")
            owner.tasks.update(tasks_block(scored.get("tasks")))
    if "train" in entries and entries["train"].text_val is None:
        s = manifests["train"].get("stats") or {}
        if s.get("val_perplexity") is not None:  # train's final evaluation covered the whole split
            entries["train"].text_val = Scores(s.get("val_loss"), s.get("val_perplexity"), s.get("val_bits_per_byte"),
                                               s.get("val_tokens"), "train/manifest.json: final evaluation")

    if "finetune" in entries:
        ft_entry = entries["finetune"]
        s = manifests["finetune"].get("stats") or {}
        ft = read_dict(run_dir / "finetune" / "eval.json")
        start = str(s.get("start_from") or str(ft.get("base_model", "train/model")).split("/")[0])
        ft_entry.started_from = f"{start}/model"
        before = entries.get(start)
        if ft_entry.parameters is None and before is not None:
            ft_entry.parameters = before.parameters  # the same architecture (adapters are merged or separate)
        lm, chat = ft.get("lm_val") or {}, ft.get("chat_val") or {}
        # evaluate's figures (every model on the same text) win over fine-tuning's own before/after
        ft_entry.text_val = ft_entry.text_val or _scores(lm.get("after"), "finetune/eval.json: lm_val.after")
        ft_entry.chat_val = _scores(chat.get("after"), "finetune/eval.json: chat_val.after")
        if before is not None:
            before.chat_val = _scores(chat.get("before"), "finetune/eval.json: chat_val.before")
            if before.text_val is None:  # an imported model: only fine-tuning scored it
                before.text_val = _scores(lm.get("before"), "finetune/eval.json: lm_val.before")
        tasks = ft.get("tasks")
        if isinstance(tasks, dict) and isinstance(tasks.get("after"), dict):
            ft_entry.tasks.update(tasks_block(tasks["after"]))
            if before is not None:
                before.tasks.update(tasks_block(tasks.get("before")))
        else:
            ft_entry.tasks.update(tasks_block(tasks))
    return list(entries.values())


def resolve(arg: str) -> tuple[Path, str | None]:
    """(run folder, the one model asked for or None for all) from a run folder, a run name under ./runs,
    a model's stage folder (``runs/x/finetune``) or a model folder (``runs/x/finetune/model``)."""
    p = Path(arg)
    if not p.exists() and len(p.parts) == 1 and (Path("runs") / arg).is_dir():
        p = Path("runs") / arg
    if not p.is_dir():
        raise InputError(f"{arg}: no such run or model folder (give runs/<name>, or a model folder such as "
                         f"runs/<name>/finetune/model)")
    if p.name == "model" and p.parent.name in MODELS:
        return p.parent.parent, p.parent.name
    if p.name in MODELS and (p / "model").is_dir():
        return p.parent, p.name
    return p, None


def compare(paths: Sequence[str]) -> list[ModelEntry]:
    """The models of every run or model folder given, in order (a run's models: pre-trained, imported,
    fine-tuned). Raises InputError naming a folder that is missing, not a run, or holds no finished model."""
    out: list[ModelEntry] = []
    for arg in paths:
        run_dir, only = resolve(arg)
        models = run_models(run_dir)
        if only is not None:
            models = [e for e in models if e.model == only]
            if not models:
                raise InputError(f"{arg}: the {only} stage of {run_dir} has not finished (no "
                                 f"{run_dir / only / 'manifest.json'}); finish the run with `gristmill run RECIPE`")
        elif not models:
            what = ("is not a run folder (no stage manifests)" if not any(run_dir.glob("*/manifest.json"))
                    else "has no finished model (train, base or finetune)")
            raise InputError(f"{arg}: {what}; give a run folder (runs/<name>) whose run has trained or imported "
                             f"a model, or finish it with `gristmill run RECIPE`")
        out += models
    return out


# ----------------------------------------------------------------------------------------------------
# Formatting


ROWS: list[tuple[str, Any]] = [
    ("model folder", lambda e: e.path),
    ("parameters", lambda e: e.parameters),
    ("training steps", lambda e: e.steps),
    ("training time (s)", lambda e: e.train_seconds),
    ("training tokens", lambda e: e.tokens_seen),
    ("fine-tuned from", lambda e: e.started_from),
    ("text val loss (nats/token)", lambda e: e.text_val and e.text_val.loss),
    ("text val perplexity", lambda e: e.text_val and e.text_val.perplexity),
    ("text val bits per byte", lambda e: e.text_val and e.text_val.bits_per_byte),
    ("text val tokens", lambda e: e.text_val and e.text_val.tokens),
    ("text val read from", lambda e: e.text_val and e.text_val.source),
    ("chat val loss (nats/assistant token)", lambda e: e.chat_val and e.chat_val.loss),
    ("chat val tokens", lambda e: e.chat_val and e.chat_val.tokens),
    ("chat val read from", lambda e: e.chat_val and e.chat_val.source),
]
"""The comparison's rows: a label and how to read it from an entry."""

NOTE = ("Loss and perplexity are per token of each model's own tokenizer; bits per byte compares models with "
        "different tokenizers. Compare a figure across models when the tokens scored match.")


def grid(entries: list[ModelEntry]) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) of the comparison: one column per model, one row per metric that any model has."""
    rows = [[label, *(get(e) for e in entries)] for label, get in ROWS]
    task_keys = sorted({(t, k) for e in entries for t, ms in e.tasks.items() for k in ms})
    rows += [[f"task {t}: {k}", *(e.tasks.get(t, {}).get(k) for e in entries)] for t, k in task_keys]
    return ["", *(e.name for e in entries)], [r for r in rows if any(v not in (None, "") for v in r[1:])]


def to_text(entries: list[ModelEntry]) -> str:
    """An aligned plain-text table for the terminal (numbers right-aligned)."""
    header, rows = grid(entries)
    cells = [header] + [[r[0], *(fmt(v) for v in r[1:])] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str], numeric: list[bool]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric, strict=True))

    out = [line(header, [False] * len(header)), "  ".join("-" * w for w in widths)]
    for raw, row in zip(rows, cells[1:], strict=True):
        out.append(line(row, [False] + [isinstance(v, int | float) and not isinstance(v, bool) for v in raw[1:]]))
    return "\n".join(line.rstrip() for line in out) + "\n\n" + textwrap.fill(NOTE, 100) + "\n"


def to_markdown(entries: list[ModelEntry]) -> str:
    header, rows = grid(entries)
    return table(header, rows) + f"\n\n{NOTE}\n"


def to_json(entries: list[ModelEntry]) -> str:
    """``{"models": [...]}``: every entry with every key (null when not recorded)."""
    return json.dumps({"models": [asdict(e) for e in entries]}, indent=2, ensure_ascii=False) + "\n"
