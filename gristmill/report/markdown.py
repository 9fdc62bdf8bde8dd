"""Markdown pieces for the run report: tables, numbers, code blocks, training curves and samples.

Generic: each stage's module (``gristmill/stages/``) builds its own section from these, so the report
stage knows no stage's statistics.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gristmill.core.jsonl import read_records
from gristmill.core.stage import ReportContext
from gristmill.report.svg import loss_svg

METRIC_NAMES = {"loss": "loss (nats/token)", "perplexity": "perplexity", "bits_per_byte": "bits per byte",
                "tokens": "tokens predicted", "bytes": "bytes"}


# ----------------------------------------------------------------------------------------------------
# Reading the run directory


def reason_counts(path: Path) -> Counter:
    """``step: reason`` (or just ``reason``) -> count, over a dropped/quarantine/rejected JSONL file."""
    out: Counter = Counter()
    for rec in read_records(path, strict=False):
        reason = str(rec.get("reason", "unknown"))
        out[f"{rec['step']}: {reason}" if rec.get("step") else reason] += 1
    return out


def read_json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------------
# Formatting


def fmt(v: Any) -> str:
    """A number or value for a table cell: thousands separators, 4 decimals for small floats."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.2f}"
        return f"{v:.4f}"
    if isinstance(v, list):
        if all(not isinstance(x, dict | list) for x in v):
            return ", ".join(fmt(x) for x in v) if v else "–"
        return f"{len(v)} items"
    return str(v)


def cell(v: Any) -> str:
    """Table-cell text: pipes escaped, line breaks as spaces."""
    return fmt(v).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def table(header: list[str], rows: Iterable[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def before_after_rows(ft: dict[str, Any]) -> list[list[Any]]:
    """``[label, before, after, change]`` for every number of ``finetune/eval.json``'s before/after blocks
    (``chat_val``, ``lm_val``); counts (tokens, bytes) get no change."""
    rows = []
    for name, block in ft.items():
        if not (isinstance(block, dict) and isinstance(block.get("before"), dict)):
            continue
        before, after = block["before"], block.get("after") or {}
        what = {"chat_val": "chat val", "lm_val": "text val"}.get(name, name)
        for k, b in before.items():
            a = after.get(k)
            if isinstance(b, int | float) and not isinstance(b, bool):
                change = a - b if isinstance(a, int | float) and k not in ("tokens", "bytes") else None
                rows.append([f"{what}: {METRIC_NAMES.get(k, k)}", b, a, change])
    return rows


def fenced(text: str) -> str:
    """A code block that survives backticks inside the text."""
    ticks = 3
    while "`" * ticks in text:
        ticks += 1
    return f"{'`' * ticks}text\n{text}\n{'`' * ticks}"


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f" … [{len(text) - limit} more characters]"


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


# ----------------------------------------------------------------------------------------------------
# Training curves


def read_curve(path: Path, prefix: str) -> tuple[dict[int, float], dict[int, float]]:
    """(train loss by step, validation loss by step) from a metrics.jsonl; a resumed run's later
    records replace earlier ones at the same step."""
    train: dict[int, float] = {}
    val: dict[int, float] = {}
    for rec in read_records(path, strict=False):
        step = rec.get("step")
        if not isinstance(step, int):
            continue
        for keys, series in (((f"{prefix}/loss", "train_loss", "loss"), train),
                             ((f"{prefix}/val_loss", "val_loss"), val)):
            for k in keys:
                v = rec.get(k)
                if isinstance(v, int | float) and math.isfinite(v):
                    series[step] = float(v)
                    break
    return dict(sorted(train.items())), dict(sorted(val.items()))


def pick_rows(steps: list[int], n: int) -> list[int]:
    """At most n evenly spaced steps, first and last included."""
    if len(steps) <= n:
        return steps
    idx = sorted({round(i * (len(steps) - 1) / (n - 1)) for i in range(n)})
    return [steps[i] for i in idx]


def curve_table(train: dict[int, float], val: dict[int, float], n: int) -> str:
    """Steps vs train/val loss: the evaluation steps when there are several, else the logged steps.
    The train loss shown is the latest logged at or before the step."""
    steps = list(val) if len(val) >= 2 else list(train)
    rows = []
    train_steps = list(train)
    for s in pick_rows(steps, n):
        before = [t for t in train_steps if t <= s]
        rows.append([s, train[before[-1]] if before else None, val.get(s)])
    return table(["step", "train loss", "val loss"], rows)


def reasons(c: dict[str, int] | Counter | None) -> str:
    """``reason (n), ...``, most frequent first."""
    return ", ".join(f"{r} ({n:,})" for r, n in Counter(c or {}).most_common()) or "–"


def reason_table(header: list[str], rows: Iterable[list[Any]]) -> str:
    """A table whose last column is a {reason: count} mapping, written as ``reason (n), ...``."""
    return table(header, [[*row[:-1], reasons(row[-1])] for row in rows])


def curve_section(rc: ReportContext, stage: str, label: str, unit: str, svg_name: str) -> str:
    """A stage's loss curve: the chart (added to ``rc.charts``) and a table of evaluation steps.

    The validation series is the periodic evaluations' token set (the first ``eval_tokens`` tokens); the
    whole split's final figure is stated beside it, labelled."""
    train, val = read_curve(rc.stage_dir(stage) / "metrics.jsonl", stage)
    if not train and not val:
        return ""
    rc.charts[svg_name] = loss_svg({"train": train, "validation": val}, f"{label} loss ({unit})")
    stats = (rc.manifests.get(stage) or {}).get("stats") or {}
    facts = [f"train loss logged at {len(train)} steps, validation loss at {len(val)}"]
    if stats.get("curve_val_tokens"):
        facts.append(f"validation points score the first {stats['curve_val_tokens']:,} validation tokens")
    if stats.get("val_loss") is not None and stats.get("val_tokens"):
        facts.append(f"the final model's loss over the whole split ({stats['val_tokens']:,} tokens) is "
                     f"{fmt(stats['val_loss'])}")
    if stats.get("stopped_by"):
        how = f"stopped by {stats['stopped_by']} at step {stats.get('steps')}"
        if stats.get("stopped_by") == "time_budget" and stats.get("max_steps"):
            how += f" of {stats['max_steps']} ({stats['steps'] / stats['max_steps']:.0%}: the time budget ended it)"
        facts.append(how)
    return (f"## {label}\n\n![{label} loss]({svg_name})\n\n" + "; ".join(facts) + ".\n\n"
            + curve_table(train, val, rc.options.curve_rows) + "\n")


def samples_section(ev: dict[str, Any], title: str, options: Any) -> str:
    """The samples of an ``eval.json`` (prompt, completion, finish reason) as code blocks."""
    samples = ev.get("samples")
    if not isinstance(samples, list) or not samples:
        return ""
    sampling = ev.get("sampling")
    how = ("; ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in sampling.items())
           if isinstance(sampling, dict) else "")
    parts = [f"### {title}\n" + (f"\nSampling: {how}.\n" if how else "")]
    for s in samples:
        if not isinstance(s, dict):
            continue
        prompt = s.get("prompt")
        if prompt is None and isinstance(s.get("messages"), list):
            prompt = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in s["messages"] if isinstance(m, dict))
        completion = s.get("completion", s.get("response", s.get("text", "")))
        text = clip(f"{prompt or ''}{completion}", options.max_sample_chars)
        reason = s.get("finish_reason")
        parts.append(f"Prompt `{_inline(str(prompt or ''))}`" + (f" (ended by {reason})" if reason else "")
                     + ":\n\n" + fenced(text) + "\n")
    return "\n".join(parts)


def _inline(s: str) -> str:
    return s.replace("`", "'").replace("\n", "\\n")[:120]
