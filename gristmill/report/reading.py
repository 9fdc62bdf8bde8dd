"""A plain-language reading of a run's figures: what improved, what got worse, what to try.

Each rule looks at numbers the stages recorded (nothing is recomputed) and says what it saw with those
numbers, so a reader can check it against the tables and plots. The thresholds below are where a change
stops being noise on the small validation sets of a short run; they are rules of thumb, stated in the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gristmill.report.runfiles import funnel, latest, read_dict, read_metrics

STILL_FALLING = 0.005
"""Validation loss that fell by more than this share between the last two evaluations is still falling."""
RISING = 0.02
"""Validation loss more than this share above its best, while the training loss fell, is overfitting."""
CHANGED = 0.002
"""A before/after change smaller than this share is reported as no change."""
SET_ASIDE = 0.2
"""A stage that set aside more than this share of its records is worth a look at what it set aside."""
TRUNCATED = 0.05
"""More than this share of fine-tuning conversations cut to the context length is worth fixing."""

KINDS = {"improved": "What improved", "worse": "What got worse", "try": "What to try"}


@dataclass(frozen=True)
class Finding:
    kind: str
    """``improved``, ``worse`` or ``try`` (a suggestion, with the numbers that prompt it)."""
    text: str


def _pct(new: float, old: float) -> str:
    return f"{(new - old) / old:+.1%}" if old else "n/a"


def _knob(cfg: dict[str, Any], section: str, key: str) -> str:
    """``section.key (now value)``, the value read from the stage's resolved config when it is there."""
    return f"{section}.{key}" + (f" (now {cfg[key]})" if key in cfg else "")


def _n(v: float) -> str:
    return f"{v:.3f}" if abs(v) < 100 else f"{v:,.1f}"


def read_run(run_dir: Path, manifests: dict[str, dict[str, Any] | None]) -> list[Finding]:
    """Every finding for the run, grouped by kind (improved, worse, try) in a fixed order."""
    found: list[Finding] = []
    for stage, label, key in (("train", "Pre-training", "train"), ("finetune", "Fine-tuning", "finetune")):
        found += curve_findings(run_dir, manifests, stage, label, key)
    found += finetune_findings(run_dir, manifests)
    found += data_findings(run_dir, manifests)
    found += export_findings(manifests)
    order = list(KINDS)
    return sorted(found, key=lambda f: order.index(f.kind))


def curve_findings(run_dir: Path, manifests: dict[str, dict[str, Any] | None], stage: str, label: str,
                   key: str) -> list[Finding]:
    """The validation curve of pre-training or fine-tuning: improvement, still falling, overfitting; and a
    time budget that ended the run early."""
    metrics = read_metrics(run_dir / stage / "metrics.jsonl")
    val, train = metrics.get(f"{stage}/val_loss") or {}, metrics.get(f"{stage}/loss") or {}
    m = manifests.get(stage) or {}
    stats, cfg = m.get("stats") or {}, m.get("config") or {}
    out: list[Finding] = []
    steps = list(val)
    if len(steps) >= 2:
        first, last = steps[0], steps[-1]
        if val[first] and (val[first] - val[last]) / val[first] > CHANGED:
            out.append(Finding("improved", f"{label}: validation loss fell from {_n(val[first])} at step {first} "
                                           f"to {_n(val[last])} at step {last} ({_pct(val[last], val[first])})."))
        prev = steps[-2]
        best = min(steps, key=lambda s: val[s])
        if val[prev] > 0 and (val[prev] - val[last]) / val[prev] > STILL_FALLING and best == last:
            out.append(Finding("try", f"{label}: validation loss was still falling at the end ({_n(val[prev])} at "
                                      f"step {prev} -> {_n(val[last])} at step {last}, {_pct(val[last], val[prev])}):"
                                      f" train longer ({_knob(cfg, key, 'max_steps')})."))
        t_best, t_last = latest(train, best), latest(train, last)
        if val[best] > 0 and (val[last] - val[best]) / val[best] > RISING and t_best is not None \
                and t_last is not None and t_last < t_best:
            out.append(Finding("worse", f"{label}: validation loss rose from its best {_n(val[best])} at step {best}"
                                        f" to {_n(val[last])} at step {last} ({_pct(val[last], val[best])}) while "
                                        f"the training loss fell from {_n(t_best)} to {_n(t_last)}: overfitting."))
            model = cfg.get("model") or {}
            knobs = [_knob(cfg, key, "weight_decay")]
            if "dropout" in model:
                knobs.insert(0, _knob(model, f"{key}.model", "dropout"))
            out.append(Finding("try", f"{label} overfits after step {best}: add regularisation "
                                      f"({' or '.join(knobs)}), more data, or stop near step {best} "
                                      f"({key}.max_steps)."))
    if stats.get("stopped_by") == "time_budget" and stats.get("max_steps"):
        out.append(Finding("try", f"{label} was stopped by {key}.time_budget after {stats.get('steps')} of "
                                  f"{stats['max_steps']} steps ({stats.get('steps', 0) / stats['max_steps']:.0%}): "
                                  f"raise {key}.time_budget to run the schedule to its end."))
    return out


def finetune_findings(run_dir: Path, manifests: dict[str, dict[str, Any] | None]) -> list[Finding]:
    """Before/after fine-tuning: chat loss, text bits per byte (what fine-tuning cost), truncation."""
    m = manifests.get("finetune")
    if not m:
        return []
    ft = read_dict(run_dir / "finetune" / "eval.json")
    stats, cfg = m.get("stats") or {}, m.get("config") or {}
    out: list[Finding] = []
    chat = ft.get("chat_val") or {}
    b, a = (chat.get("before") or {}).get("loss"), (chat.get("after") or {}).get("loss")
    if isinstance(b, int | float) and isinstance(a, int | float) and b:
        tokens = (chat.get("after") or {}).get("tokens")
        what = (f"the chat loss on held-out conversations from {_n(b)} to {_n(a)} nats per assistant token "
                f"({_pct(a, b)}" + (f", {tokens:,} tokens)" if isinstance(tokens, int) else ")"))
        if (b - a) / b > CHANGED:
            out.append(Finding("improved", f"Fine-tuning lowered {what}."))
        elif (a - b) / b > CHANGED:
            out.append(Finding("worse", f"Fine-tuning raised {what}."))
            out.append(Finding("try", f"Fine-tuning made the chat loss worse ({_pct(a, b)}): look at the training "
                                      f"conversations (synth/train.jsonl) and lower "
                                      f"{_knob(cfg, 'finetune', 'lr')}."))
    lm = ft.get("lm_val") or {}
    b, a = (lm.get("before") or {}).get("bits_per_byte"), (lm.get("after") or {}).get("bits_per_byte")
    if isinstance(b, int | float) and isinstance(a, int | float) and b:
        tokens = (lm.get("after") or {}).get("tokens")
        on = f" on {tokens:,} validation tokens" if isinstance(tokens, int) else ""
        if (a - b) / b > CHANGED:
            out.append(Finding("worse", f"Fine-tuning raised the text bits per byte from {_n(b)} to {_n(a)} "
                                        f"({_pct(a, b)}){on}: it cost general text modelling."))
            lora = (cfg.get("lora") or {}).get("enabled")
            ways = [f"lower {_knob(cfg, 'finetune', 'lr')}", f"fewer {_knob(cfg, 'finetune', 'max_steps')}"]
            if "lora" in cfg and not lora:
                ways.append("LoRA adapters (finetune.lora.enabled: true)")
            out.append(Finding("try", f"To keep more of the base model's text modelling (bits per byte "
                                      f"{_pct(a, b)} after fine-tuning): {', '.join(ways[:-1])} or {ways[-1]}."))
        elif (b - a) / b > CHANGED:
            out.append(Finding("improved", f"Fine-tuning also lowered the text bits per byte from {_n(b)} to "
                                           f"{_n(a)} ({_pct(a, b)}){on}."))
    examples = (stats.get("train_examples") or 0) + (stats.get("val_examples") or 0)
    cut = stats.get("truncated") or 0
    if examples and cut / examples > TRUNCATED:
        out.append(Finding("try", f"{cut:,} of {examples:,} fine-tuning conversations ({cut / examples:.0%}) were "
                                  f"longer than the model's context and were cut: use a longer context "
                                  f"(train.model.block_size) or shorter conversations (synth's length limits)."))
    return out


def data_findings(run_dir: Path, manifests: dict[str, dict[str, Any] | None]) -> list[Finding]:
    """Shares of records set aside by collect, prepare and synth."""
    out: list[Finding] = []
    for step in funnel(manifests):
        gone = step.documents_in - step.documents_out
        if step.documents_in and gone / step.documents_in > SET_ASIDE:
            why = ", ".join(f"{r} {n:,}" for r, n in sorted(step.dropped.items(), key=lambda x: -x[1])) or "no reason"
            what = ("records collect read were quarantined" if step.name == "collect"
                    else f"documents were dropped by prepare's {step.name} step")
            out.append(Finding("try", f"{gone:,} of {step.documents_in:,} {what} ({gone / step.documents_in:.0%}: "
                                      f"{why}): inspect {run_dir / step.where} to check that is intended."))
    synth = (manifests.get("synth") or {}).get("stats") or {}
    for split, st in synth.items():
        if isinstance(st, dict) and st.get("drafts") and (st.get("rejected") or 0) / st["drafts"] > SET_ASIDE:
            why = ", ".join(f"{r} {n:,}" for r, n in sorted((st.get("rejected_by_reason") or {}).items(),
                                                             key=lambda x: -x[1]))
            out.append(Finding("try", f"synth rejected {st['rejected']:,} of {st['drafts']:,} {split} drafts "
                                      f"({st['rejected'] / st['drafts']:.0%}: {why}): inspect "
                                      f"{run_dir / 'synth' / 'rejected.jsonl'}."))
    return out


def export_findings(manifests: dict[str, dict[str, Any] | None]) -> list[Finding]:
    """Exported files that do not predict like the model they came from."""
    s = (manifests.get("export") or {}).get("stats") or {}
    out = []
    for key, what in (("hf", "transformers folder"), ("gguf", "GGUF file")):
        c = s.get(key)
        if isinstance(c, dict) and isinstance(c.get("argmax_agreement"), int | float) and c["argmax_agreement"] < 1:
            out.append(Finding("worse", f"The exported {what} picks the same next token as Gristmill at "
                                        f"{c['argmax_agreement']:.0%} of {c.get('tokens', '?')} positions (largest "
                                        f"logit difference {c.get('max_abs_logit_diff', float('nan')):.3g})."))
    return out


def to_markdown(findings: list[Finding]) -> str:
    """The reading as Markdown lists under bold headings (an empty string when there is nothing to say)."""
    parts = []
    for kind, title in KINDS.items():
        items = [f"- {f.text}" for f in findings if f.kind == kind]
        if items:
            parts.append(f"**{title}**\n\n" + "\n".join(items) + "\n")
    return "\n".join(parts)
