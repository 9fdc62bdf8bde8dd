"""report: a Markdown summary of a run, written from the stages' manifests and output files.

Nothing is recomputed: document counts and drop reasons come from each data stage's JSONL outputs,
tokenizer numbers from ``tokenize/meta.json``, the training curve from ``train/metrics.jsonl`` (drawn as
``loss.svg``, plain SVG text), metrics and samples from ``evaluate/eval.json`` and ``finetune/eval.json``,
and wall times from the manifests. Stats a stage returns are shown as they are (nested keys flattened),
so a stage can add numbers without the report having to know them. A stage that has not run is listed
as such; the report still renders.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

from gristmill.config import Config
from gristmill.workspace import StageContext, load_manifest, write_text

DATA_STAGES = ("collect", "prepare", "synth", "tokenize", "train", "evaluate", "finetune")


class ReportConfig(Config):
    """What goes into ``report.md``."""

    title: str | None = None
    """Heading of the report (None = "Gristmill run: <run name>")."""
    curve_rows: int = Field(12, ge=2)
    """Most rows in the training-curve tables (evenly spaced steps, the last one always included)."""
    max_sample_chars: int = Field(800, ge=20)
    """Samples longer than this many characters are cut (with a note)."""


# ----------------------------------------------------------------------------------------------------
# Reading the run directory


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file; unparsable lines are skipped (a report must not fail on them)."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    yield rec


def count_lines(path: Path) -> int | None:
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def reason_counts(path: Path) -> Counter:
    """``step: reason`` (or just ``reason``) -> count, over a dropped/quarantine/rejected JSONL file."""
    out: Counter = Counter()
    for rec in read_jsonl(path):
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


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    if not isinstance(d, dict):
        return {prefix or "value": d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


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
    for rec in read_jsonl(path):
        step = rec.get("step")
        if not isinstance(step, int):
            continue
        for keys, series in (((f"{prefix}/loss", "train_loss", "loss"), train),
                             ((f"{prefix}/val_loss", f"{prefix}/final_val_loss", "val_loss"), val)):
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


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round-numbered ticks covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 10))
    return ticks


def loss_svg(series: dict[str, dict[int, float]], title: str, width: int = 640, height: int = 320) -> str:
    """A line chart of loss vs step as standalone SVG text (no scripts, no external resources)."""
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    points = [(s, v) for d in series.values() for s, v in d.items()]
    left, right, top, bottom = 56, 16, 32, 40
    pw, ph = width - left - right, height - top - bottom
    xs = [p[0] for p in points] or [0, 1]
    ys = [p[1] for p in points] or [0, 1]
    xt = nice_ticks(min(0, min(xs)), max(xs) if max(xs) > 0 else 1)
    yt = nice_ticks(min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1)
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def X(s: float) -> float:
        return left + (s - x0) / (x1 - x0) * pw

    def Y(v: float) -> float:
        return top + (1 - (v - y0) / (y1 - y0)) * ph

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2:.0f}" y="18" text-anchor="middle" font-size="13">{_esc(title)}</text>']
    for t in yt:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{Y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    for t in xt:
        out.append(f'<line x1="{X(t):.1f}" x2="{X(t):.1f}" y1="{top}" y2="{top + ph}" stroke="#f0f0f0"/>')
        out.append(f'<text x="{X(t):.1f}" y="{top + ph + 16}" text-anchor="middle">{t:g}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    out.append(f'<text x="{left + pw / 2:.0f}" y="{height - 6}" text-anchor="middle">step</text>')
    out.append(f'<text x="14" y="{top + ph / 2:.0f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + ph / 2:.0f})">loss (nats/token)</text>')
    for i, (name, d) in enumerate(series.items()):
        if not d:
            continue
        color = colors[i % len(colors)]
        pts = " ".join(f"{X(s):.1f},{Y(v):.1f}" for s, v in d.items())
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{pts}"/>')
        if len(d) <= 60:
            out += [f'<circle cx="{X(s):.1f}" cy="{Y(v):.1f}" r="2.5" fill="{color}"/>' for s, v in d.items()]
        ly = top + 12 + 16 * i
        out.append(f'<line x1="{left + pw - 110}" x2="{left + pw - 90}" y1="{ly}" y2="{ly}" '
                   f'stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{left + pw - 84}" y="{ly + 4}">{_esc(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


# ----------------------------------------------------------------------------------------------------
# Sections


def section_stages(run_dir: Path, manifests: dict[str, dict[str, Any] | None]) -> str:
    rows, total = [], 0.0
    for stage in DATA_STAGES:
        m = manifests.get(stage)
        if m is None:
            rows.append([stage, "not run", None, None, None])
            continue
        wall = m.get("wall_time_s")
        total += wall or 0.0
        outputs = m.get("outputs") or {}
        size = sum(o.get("bytes", 0) for o in outputs.values() if isinstance(o, dict))
        rows.append([stage, "done", m.get("started_at"), None if wall is None else f"{wall:.1f} s",
                     f"{len(outputs)} files, {human_bytes(size)}"])
    return ("## Stages\n\n" + table(["stage", "status", "started", "wall time", "outputs"], rows)
            + f"\n\nTotal wall time of the stages: {total:.1f} s.\n")


def section_data(run_dir: Path, manifests: dict[str, dict[str, Any] | None]) -> str:
    """Documents into and out of each data step, with the reasons for what was dropped."""
    rows = []
    collect, prepare, synth = run_dir / "collect", run_dir / "prepare", run_dir / "synth"
    n_docs = count_lines(collect / "documents.jsonl")
    quarantined = reason_counts(collect / "quarantine.jsonl")
    if manifests.get("collect"):
        rows.append(["collect", "source files", n_docs, sum(quarantined.values()), _reasons(quarantined)])
    train, val = count_lines(prepare / "train.jsonl"), count_lines(prepare / "val.jsonl")
    dropped = reason_counts(prepare / "dropped.jsonl")
    if manifests.get("prepare"):
        out = None if train is None else f"{(train or 0) + (val or 0):,} ({train:,} train, {val or 0:,} val)"
        rows.append(["prepare", n_docs, out, sum(dropped.values()), _reasons(dropped)])
    if manifests.get("synth"):
        st, sv = count_lines(synth / "train.jsonl"), count_lines(synth / "val.jsonl")
        rejected = reason_counts(synth / "rejected.jsonl")
        docs_in = None if train is None else (train or 0) + (val or 0)
        out = None if st is None else f"{st + (sv or 0):,} conversations ({st:,} train, {sv or 0:,} val)"
        rows.append(["synth", docs_in, out, sum(rejected.values()), _reasons(rejected)])
    if not rows:
        return ""
    return ("## Data\n\nDocuments into and out of each step; every dropped record is in the stage's "
            "`quarantine.jsonl`, `dropped.jsonl` or `rejected.jsonl` with its reason.\n\n"
            + table(["stage", "in", "out", "dropped", "reasons"], rows) + "\n")


def _reasons(c: Counter) -> str:
    return ", ".join(f"{r} ({n:,})" for r, n in c.most_common()) or "–"


def section_tokenizer(run_dir: Path) -> str:
    meta = read_json_or_none(run_dir / "tokenize" / "meta.json")
    if not isinstance(meta, dict):
        return ""
    rows = []
    for split, s in (meta.get("splits") or {}).items():
        tokens, n_bytes = s.get("tokens"), s.get("bytes")
        bpt = n_bytes / tokens if tokens and n_bytes is not None else None
        rows.append([split, s.get("documents"), tokens, n_bytes, bpt])
    return (f"## Tokenizer\n\nByte-level BPE, vocabulary {fmt(meta.get('vocab_size'))} tokens "
            f"(token files as `{meta.get('dtype')}`, `<|endoftext|>` = {meta.get('eot_id')} after each document)."
            "\n\n" + table(["split", "documents", "tokens", "bytes", "bytes per token"], rows) + "\n")


def section_curve(run_dir: Path, stage: str, cfg: ReportConfig, svg_name: str) -> tuple[str, str | None]:
    """The curve section for train or finetune, and the SVG text (None without metrics)."""
    train, val = read_curve(run_dir / stage / "metrics.jsonl", stage)
    if not train and not val:
        return "", None
    label = "Training" if stage == "train" else "Fine-tuning"
    title = f"{label} loss ({'nats per token' if stage == 'train' else 'nats per assistant token'})"
    svg = loss_svg({"train": train, "validation": val}, title)
    last = [f"train loss logged at {len(train)} steps, validation loss at {len(val)}"]
    if train:
        last.append(f"last train loss {fmt(list(train.values())[-1])} at step {list(train)[-1]}")
    if val:
        last.append(f"last validation loss {fmt(list(val.values())[-1])} at step {list(val)[-1]}")
    body = (f"## {label} curve\n\n![{label} loss]({svg_name})\n\n" + "; ".join(last) + ".\n\n"
            + curve_table(train, val, cfg.curve_rows) + "\n")
    return body, svg


METRIC_NAMES = {"loss": "loss (nats/token)", "perplexity": "perplexity", "bits_per_byte": "bits per byte",
                "tokens": "tokens predicted", "bytes": "bytes"}


def section_eval(run_dir: Path, cfg: ReportConfig) -> str:
    parts = []
    ev = read_json_or_none(run_dir / "evaluate" / "eval.json")
    if isinstance(ev, dict):
        rows = [[METRIC_NAMES[k], ev[k]] for k in METRIC_NAMES if k in ev]
        note = " (capped: a prefix of the split)" if ev.get("capped") else ""
        parts.append(f"### Pre-trained model on the validation text{note}\n\n"
                     + table(["metric", "value"], rows) + "\n")
    ft = read_json_or_none(run_dir / "finetune" / "eval.json")
    if isinstance(ft, dict):
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
        if rows:
            parts.append("### Before and after fine-tuning\n\nChat val: loss on the assistant tokens of synth's "
                         "validation conversations. Text val: the language-model metrics on tokenize's "
                         "validation text, which show what fine-tuning cost general text modelling.\n\n"
                         + table(["metric", "base model", "fine-tuned", "change"], rows) + "\n")
    if not parts:
        return ""
    return "## Evaluation\n\n" + "\n".join(parts)


def section_samples(run_dir: Path, cfg: ReportConfig) -> str:
    parts = []
    for stage, label in (("evaluate", "Pre-trained model"), ("finetune", "Fine-tuned model")):
        ev = read_json_or_none(run_dir / stage / "eval.json")
        samples = ev.get("samples") if isinstance(ev, dict) else None
        if not isinstance(samples, list) or not samples:
            continue
        sampling = ev.get("sampling")
        how = ("; ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in sampling.items())
               if isinstance(sampling, dict) else "")
        parts.append(f"### {label}\n" + (f"\nSampling: {how}.\n" if how else ""))
        for s in samples:
            if not isinstance(s, dict):
                continue
            prompt = s.get("prompt")
            if prompt is None and isinstance(s.get("messages"), list):
                prompt = "\n".join(f"{m.get('role')}: {m.get('content')}" for m in s["messages"]
                                   if isinstance(m, dict))
            completion = s.get("completion", s.get("response", s.get("text", "")))
            text = clip(f"{prompt or ''}{completion}", cfg.max_sample_chars)
            reason = s.get("finish_reason")
            parts.append(f"Prompt `{_inline(str(prompt or ''))}`" + (f" (ended by {reason})" if reason else "")
                         + ":\n\n" + fenced(text) + "\n")
    if not parts:
        return ""
    return "## Samples\n\n" + "\n".join(parts)


def _inline(s: str) -> str:
    return s.replace("`", "'").replace("\n", "\\n")[:120]


def section_stats(manifests: dict[str, dict[str, Any] | None]) -> str:
    """Every stage's stats as reported by the stage, flattened."""
    parts = []
    for stage in DATA_STAGES:
        m = manifests.get(stage)
        stats = m.get("stats") if m else None
        if not stats:
            continue
        rows = [[k, v] for k, v in flatten(stats).items()]
        parts.append(f"### {stage}\n\n" + table(["statistic", "value"], rows) + "\n")
    if not parts:
        return ""
    return "## Stage statistics\n\nAs each stage reported them (`<stage>/manifest.json`, key `stats`).\n\n" + "\n".join(
        parts)


def section_serve(run_dir: Path, recipe: Any) -> str:
    which = "finetune" if (run_dir / "finetune" / "model" / "model.safetensors").exists() else "train"
    name = run_dir.name
    serve = recipe.get("serve") if isinstance(recipe, dict) else None
    port = serve.get("port", 8000) if isinstance(serve, dict) else 8000
    return (
        "## Serve the model\n\n"
        f"The served model is `{run_dir / which / 'model'}` (the fine-tuned one when there is one).\n\n"
        f"```sh\ngristmill serve {run_dir}   # then open http://127.0.0.1:{port}/ for the chat page\n```\n\n"
        "OpenAI-compatible API (add `-H 'Authorization: Bearer <key>'` when the server has an API key):\n\n"
        f"```sh\ncurl http://127.0.0.1:{port}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        f"  -d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Who was Hamlet?\"}}]}}'\n"
        "```\n"
    )


# ----------------------------------------------------------------------------------------------------
# The stage


def build_report(run_dir: Path, cfg: ReportConfig) -> tuple[str, dict[str, str]]:
    """The Markdown text and the charts ({file name: SVG text}) for a run directory."""
    run_dir = Path(run_dir)
    manifests = {s: load_manifest(run_dir / s) for s in DATA_STAGES}
    title = cfg.title or f"Gristmill run: {run_dir.name}"
    recipe = read_json_or_none(run_dir / "recipe.json")
    first = next((m for m in manifests.values() if m), None)
    header = [f"# {title}", ""]
    facts = [f"run directory `{run_dir}`"]
    if first and first.get("recipe"):
        facts.append(f"recipe `{first['recipe']}`")
    if isinstance(recipe, dict) and "seed" in recipe:
        facts.append(f"seed {recipe['seed']}")
    if first and isinstance(first.get("versions"), dict):
        v = first["versions"]
        facts.append(", ".join(f"{k} {v[k]}" for k in ("gristmill", "torch", "python") if k in v))
    header.append("; ".join(facts) + ".\n")

    charts: dict[str, str] = {}
    sections = [section_stages(run_dir, manifests), section_data(run_dir, manifests), section_tokenizer(run_dir)]
    for stage, svg_name in (("train", "loss.svg"), ("finetune", "finetune_loss.svg")):
        body, svg = section_curve(run_dir, stage, cfg, svg_name)
        if svg is not None:
            charts[svg_name] = svg
        sections.append(body)
    sections += [section_eval(run_dir, cfg), section_samples(run_dir, cfg), section_serve(run_dir, recipe),
                 section_stats(manifests)]
    text = "\n".join(header) + "\n" + "\n".join(s for s in sections if s)
    return text, charts


def run_report(ctx: StageContext, cfg: ReportConfig) -> dict[str, Any]:
    text, charts = build_report(ctx.run_dir, cfg)
    for name, svg in charts.items():
        write_text(ctx.out_dir / name, svg)
    write_text(ctx.out_dir / "report.md", text)
    ctx.log(f"[report] {ctx.out_dir / 'report.md'} ({len(text):,} characters, {len(charts)} charts)")
    stages = [s for s in DATA_STAGES if load_manifest(ctx.run_dir / s)]
    return {"characters": len(text), "charts": sorted(charts), "stages_reported": stages}
