"""The run report as one self-contained HTML page (``report/report.html``): plots, tables, samples and a
plain-language reading of the figures.

Built from the same run files as ``report.md`` (nothing is recomputed). The plots are matplotlib SVG
(``plots``) inlined in the page; there is no script, and a Content-Security-Policy forbids fetching
anything, so the file opens offline and shows the same thing everywhere. Every text that comes from the
run (samples, prompts, names, reasons) is HTML-escaped.

Sections: the reading (what improved, what got worse, what to try), the run's models compared, the
evaluation tables (metrics, task-suite scores, before/after fine-tuning), training plots (loss, learning
rate, throughput, gradient norm), the data funnel, samples and answers side by side, the stages and every
stage's statistics.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from gristmill.core.config import flatten
from gristmill.core.stage import ReportContext
from gristmill.report import compare, reading
from gristmill.report.markdown import METRIC_NAMES, before_after_rows, clip, fmt, human_bytes
from gristmill.report.plots import Panel, funnel_figure, line_figure
from gristmill.report.runfiles import funnel, read_dict, read_metrics, stage_rows, tasks_block

STAGE_LABELS = {"train": "pre-training", "finetune": "fine-tuning"}
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
"""Nothing may be fetched: inline styles and data: images only (the page has neither scripts nor links out)."""

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 0 auto;
       max-width: 1100px; padding: 1.5em; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; margin-top: 2em; }
h3 { margin-top: 1.5em; } .facts { color: #555; } nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td pre, .sample pre { margin: 0; white-space: pre-wrap; word-break: break-word; font-size: .95em; }
td.answer { min-width: 14em; max-width: 30em; } .empty { color: #999; font-style: italic; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: .9em; } code { background: #f3f3f3; padding: 0 .2em; }
.improved li::marker { content: "▲ "; color: #2ca02c; } .worse li::marker { content: "▼ "; color: #d62728; }
.try li::marker { content: "→ "; color: #1f77b4; } details { margin: .3em 0; } summary { cursor: pointer; }
.note { color: #555; font-size: .9em; }
"""


# ----------------------------------------------------------------------------------------------------
# Elements


def esc(v: Any) -> str:
    return escape(str(v), quote=True)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class Raw:
    """HTML already escaped, for a table cell."""

    def __init__(self, html: str, cls: str = ""):
        self.html, self.attrs = html, f' class="{esc(cls)}"' if cls else ""


def table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    """A table; numbers formatted like the Markdown report's and right-aligned. A cell given as
    ``Raw(html)`` is inserted as is (for pre-formatted samples)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for v in row:
            if isinstance(v, Raw):
                cells.append(f"<td{v.attrs}>{v.html}</td>")
            else:
                cells.append(f'<td class="num">{esc(fmt(v))}</td>' if _is_number(v) else f"<td>{esc(fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    attrs = f' class="{esc(cls)}"' if cls else ""
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def pre(text: str, cls: str = "") -> Raw:
    """A cell of text kept as written (line breaks and spaces), escaped; an empty text says so."""
    return Raw(f"<pre>{esc(text)}</pre>" if text else '<span class="empty">(empty)</span>', cls)


def figure(fig_id: str, svg: str, caption: str) -> str:
    return f'<figure id="{esc(fig_id)}">{svg}<figcaption>{esc(caption)}</figcaption></figure>'


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>\n{body}\n</section>' if body else ""


def para(text: str, cls: str = "") -> str:
    attrs = f' class="{esc(cls)}"' if cls else ""
    return f"<p{attrs}>{esc(text)}</p>"


# ----------------------------------------------------------------------------------------------------
# The page


def render(rc: ReportContext, title: str, facts: list[tuple[str, str, bool]]) -> str:
    """The whole page. ``facts``: (label, value, as code) pairs for the header line."""
    sections = [("reading", "Reading", reading_section(rc)), ("models", "Models", models_section(rc)),
                ("evaluation", "Evaluation", evaluation_section(rc)), ("training", "Training", training_section(rc)),
                ("data", "Data", data_section(rc)), ("samples", "Samples and answers", samples_section(rc)),
                ("stages", "Stages", stages_section(rc)), ("use", "Use the model", use_section(rc))]
    sections = [(sid, t, body) for sid, t, body in sections if body]
    head = "; ".join(f"{esc(label)} <code>{esc(v)}</code>" if code else f"{esc(label)} {esc(v)}".strip()
                     for label, v, code in facts)
    nav = " ".join(f'<a href="#{sid}">{esc(t)}</a>' for sid, t, _ in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<h1>{esc(title)}</h1>\n<p class=\"facts\">{head}.</p>\n<nav>{nav}</nav>\n"
            + "\n".join(section(sid, t, body) for sid, t, body in sections) + "\n</body>\n</html>\n")


def reading_section(rc: ReportContext) -> str:
    findings = reading.read_run(rc.run_dir, rc.manifests)
    if not findings:
        return para("Nothing stands out in the recorded figures: no rule below fired.") + _rules_note()
    parts = []
    for kind, title in reading.KINDS.items():
        items = [f"<li>{esc(f.text)}</li>" for f in findings if f.kind == kind]
        if items:
            parts.append(f'<h3>{esc(title)}</h3><ul class="{kind}">' + "".join(items) + "</ul>")
    return "\n".join(parts) + _rules_note()


def _rules_note() -> str:
    return para(f"Rules of thumb over the recorded numbers: validation loss that fell by more than "
                f"{reading.STILL_FALLING:.1%} between the last two evaluations is still falling; more than "
                f"{reading.RISING:.0%} above its best while the training loss falls is overfitting; changes under "
                f"{reading.CHANGED:.1%} count as none; a stage that set aside more than {reading.SET_ASIDE:.0%} of "
                f"its records is worth a look.", "note")


def models_section(rc: ReportContext) -> str:
    entries = compare.run_models(rc.run_dir)
    if not entries:
        return ""
    header, rows = compare.grid(entries)
    return (f"<p>Every model of this run with the figures its run recorded; <code>gristmill compare "
            f"{esc(rc.run_dir)} OTHER_RUN</code> puts other runs beside it.</p>"
            + table(header, rows) + para(compare.NOTE, "note"))


def evaluation_section(rc: ReportContext) -> str:
    parts = []
    ev = read_dict(rc.stage_dir("evaluate") / "eval.json") if rc.manifests.get("evaluate") else {}
    models = run_models_scored(ev)
    if models:
        names = list(models)
        text = ev.get("text") if isinstance(ev.get("text"), dict) else {}
        scope = (f"the first {text['max_chars']:,} characters of" if text.get("max_chars") else "all of")
        parts.append("<h3>Held-out text, every model</h3>"
                     + para(f"Scored on {scope} prepare's validation documents, each model with its own tokenizer "
                            "(bits per byte compare across tokenizers).")
                     + table(["metric", *(f"{n}/model" for n in names)],
                             [[METRIC_NAMES[k], *(models[n].get(k) for n in names)] for k in METRIC_NAMES]))
        per_model = {n: tasks_block(models[n].get("tasks")) for n in names}
        task_names = list(dict.fromkeys(t for blk in per_model.values() for t in blk))
        rows = []
        for t in task_names:
            metrics = list(dict.fromkeys(m for blk in per_model.values() for m in blk.get(t, {})))
            rows += [[f"{t}: {m}", *(per_model[n].get(t, {}).get(m) for n in names)] for m in metrics]
        if rows:
            parts.append("<h3>Task suite, every model</h3>"
                         + para("The same items and prompts for every model; per-item logs in "
                                "<code>evaluate/samples/&lt;model&gt;/</code>.")
                         + table(["task: metric", *(f"{n}/model" for n in names)], rows))
    ft = read_dict(rc.stage_dir("finetune") / "eval.json")
    if rc.manifests.get("finetune") and ft:
        rows = [[*r, f"{r[3] / r[1]:+.1%}" if r[3] is not None and r[1] else None] for r in before_after_rows(ft)]
        if rows:
            parts.append(f"<h3>Before and after fine-tuning: <code>{esc(ft.get('base_model', ''))}</code> → "
                         "<code>finetune/model</code></h3>"
                         + para("Chat val: loss on the assistant tokens of held-out conversations. Text val: the "
                                "language-model metrics on the validation text, the same tokens before and after: "
                                "what fine-tuning cost general text modelling.")
                         + table(["metric", "before", "after", "change", "change %"], rows))
        tasks = ft.get("tasks") if isinstance(ft.get("tasks"), dict) else {}
        # {"before": {task: ...}, "after": {task: ...}}, or the fine-tuned model's scores alone
        for when, block in (tasks.items() if "after" in tasks else [("fine-tuned", tasks)]):
            if tasks_block(block):
                parts.append(f"<h3>Task suite, {esc(when)} fine-tuning</h3>" if when in ("before", "after")
                             else "<h3>Task suite: <code>finetune/model</code></h3>")
                parts[-1] += tasks_table(tasks_block(block))
    return "\n".join(parts)


def tasks_table(tasks: dict[str, dict[str, Any]]) -> str:
    """One row per task, one column per metric any task reports."""
    metrics: list[str] = []
    for ms in tasks.values():
        metrics += [m for m in ms if m not in metrics]
    return table(["task", *metrics], [[t, *(ms.get(m) for m in metrics)] for t, ms in tasks.items()])


def training_section(rc: ReportContext) -> str:
    runs = {s: read_metrics(rc.stage_dir(s) / "metrics.jsonl") for s in STAGE_LABELS}
    runs = {s: m for s, m in runs.items() if m}
    if not runs:
        return ""
    units = {"train": "nats per token", "finetune": "nats per assistant token"}
    parts = []
    loss = [Panel(STAGE_LABELS[s], f"loss ({units[s]})", {"train": m.get(f"{s}/loss") or {},
                                                           "validation": m.get(f"{s}/val_loss") or {}}, markers=False)
            for s, m in runs.items()]
    if any(any(p.series.values()) for p in loss):
        parts.append(figure("fig-loss", line_figure("fig-loss", "Loss", loss),
                            "Training loss (mean over the steps since the last log line) and validation loss "
                            "(periodic evaluations on the first eval_tokens validation tokens)."))
    parts += [para(line) for line in _curve_facts(rc, runs)]

    lr_panels, rates = [], []
    for s, m in runs.items():
        cfg = (rc.manifests.get(s) or {}).get("config") or {}
        mult = m.get("lr_mult") or {}
        if isinstance(cfg.get("lr"), int | float):
            lr_panels.append(Panel(STAGE_LABELS[s], "learning rate", {"lr": {k: v * cfg["lr"] for k, v in mult.items()}},
                                   from_zero=True))
            extra = [f"{k} {cfg[k]:g}" for k in ("embedding_lr", "matrix_lr")
                     if isinstance(cfg.get(k), int | float) and (k != "matrix_lr" or cfg.get("optimizer") == "muon")]
            rates.append(f"{STAGE_LABELS[s]}: {cfg.get('optimizer', '')} lr {cfg['lr']:g}, schedule "
                         f"{cfg.get('schedule', '?')}" + (f" (also scaled: {', '.join(extra)})" if extra else ""))
        else:
            lr_panels.append(Panel(STAGE_LABELS[s], "learning-rate multiplier", {"multiplier": mult}, from_zero=True))
    if any(any(p.series.values()) for p in lr_panels):
        parts.append(figure("fig-lr", line_figure("fig-lr", "Learning rate", lr_panels),
                            "The peak rate times the schedule's multiplier at each logged step; every parameter "
                            "group follows the same multiplier. " + "; ".join(rates)))
    speed = [Panel(STAGE_LABELS[s], "tokens per second", {"tokens/s": m.get("tokens_per_s") or {}},
                   from_zero=True)
             for s, m in runs.items()]
    if any(any(p.series.values()) for p in speed):
        parts.append(figure("fig-throughput", line_figure("fig-throughput", "Throughput", speed),
                            "Training tokens per second of optimiser time since the (re)start, as logged "
                            "(evaluation and checkpoint time excluded)."))
    grad = [Panel(STAGE_LABELS[s], "gradient norm", {"grad norm": m.get("grad_norm") or {}},
                  from_zero=True) for s, m in runs.items()]
    if any(any(p.series.values()) for p in grad):
        parts.append(figure("fig-grad-norm", line_figure("fig-grad-norm", "Gradient norm", grad),
                            "Global gradient norm before clipping, at the logged steps."))
    return "\n".join(parts)


def _curve_facts(rc: ReportContext, runs: dict[str, dict[str, dict[int, float]]]) -> list[str]:
    lines = []
    for s, m in runs.items():
        st = (rc.manifests.get(s) or {}).get("stats") or {}
        n_train, n_val = len(m.get(f"{s}/loss") or {}), len(m.get(f"{s}/val_loss") or {})
        facts = [f"train loss logged at {n_train} step{'s' * (n_train != 1)}, validation loss at {n_val}"]
        if st.get("curve_val_tokens"):
            facts.append(f"validation points score the first {st['curve_val_tokens']:,} validation tokens")
        if st.get("val_loss") is not None and st.get("val_tokens"):
            facts.append(f"the final model's loss over the whole split ({st['val_tokens']:,} tokens) is "
                         f"{fmt(st['val_loss'])}")
        if st.get("stopped_by"):
            facts.append(f"stopped by {st['stopped_by']} at step {st.get('steps')} of {st.get('max_steps')}")
        lines.append(f"{STAGE_LABELS[s].capitalize()}: " + "; ".join(facts) + ".")
    return lines


def data_section(rc: ReportContext) -> str:
    steps = funnel(rc.manifests)
    parts = []
    if steps:
        names = [("collect (records read)" if st.name == "collect" else st.name) for st in steps]
        panels = [("documents", [s.documents_in for s in steps], [s.documents_out for s in steps])]
        if all(s.characters_out is not None for s in steps[1:]) and len(steps) > 1:
            # collect does not count the characters of what it could not read: its bar is what it kept
            panels.append(("characters", [s.characters_in if s.characters_in is not None else s.characters_out or 0
                                          for s in steps], [s.characters_out or 0 for s in steps]))
        parts.append(figure("fig-funnel", funnel_figure("fig-funnel", "Data funnel", names, panels),
                            "What each step kept and what it removed, from the records collect read to the "
                            "documents prepare split into train and validation."))
        rows = [[st.name, st.documents_in, st.documents_out, st.documents_in - st.documents_out, st.characters_in,
                 st.characters_out, ", ".join(f"{r} ({n:,})" for r, n in sorted(st.dropped.items(),
                                                                              key=lambda x: -x[1])) or "–",
                 st.where] for st in steps]
        parts.append(table(["step", "documents in", "kept", "removed", "characters in", "characters out",
                            "reasons", "set aside in"], rows))
    splits = ((rc.manifests.get("prepare") or {}).get("stats") or {}).get("splits") or {}
    if splits:
        parts.append(para("Splits: " + "; ".join(f"{name} {s.get('documents', 0):,} documents, "
                                                 f"{s.get('characters', 0):,} characters"
                                                 for name, s in splits.items()) + "."))
    parts.append(data_card_section(rc))
    sources = ((rc.manifests.get("collect") or {}).get("stats") or {}).get("sources") or {}
    if sources:
        parts.append("<h3>Sources</h3>" + table(
            ["source", "type", "files", "documents", "characters", "quarantined"],
            [[n, s.get("type"), s.get("files"), s.get("documents"), s.get("characters"),
              sum((s.get("quarantined") or {}).values())] for n, s in sources.items() if isinstance(s, dict)]))
    return "\n".join(parts)


def data_card_section(rc: ReportContext) -> str:
    """prepare's data card (``prepare/data_card.json``): warnings, what each reason dropped with the key
    behind it and an example, the language mix and the length of what was kept."""
    card = read_dict(rc.stage_dir("prepare") / "data_card.json") if rc.manifests.get("prepare") else {}
    if not card:
        return ""
    parts = ["<h3>Data card</h3>", para(f"From prepare/data_card.json: {card.get('documents_in', 0):,} documents "
                                         f"({human_bytes(int(card.get('bytes_in', 0)))}) in, "
                                         f"{card.get('documents_kept', 0):,} ({human_bytes(int(card.get('bytes_kept', 0)))}) "
                                         "kept.")]
    warnings = [w for w in card.get("warnings") or [] if isinstance(w, str)]
    if warnings:
        parts.append("<ul>" + "".join(f"<li>warning: {esc(w)}</li>" for w in warnings) + "</ul>")
    rows = []
    for st in card.get("steps") or []:
        for reason, d in ((st or {}).get("dropped") or {}).items():
            ex = (d.get("examples") or [{}])[0]
            rows.append([f"{st.get('step')}: {reason}", d.get("documents"), human_bytes(int(d.get("bytes") or 0)),
                         d.get("key") or "–", pre(clip(str(ex.get("text", "")), 300))])
    if rows:
        parts.append(table(["step: reason", "documents", "bytes", "key that decides it", "first document dropped"],
                           rows))
    hist = card.get("histograms") or {}
    langs = hist.get("language") or {}
    if langs:
        total = sum(langs.values()) or 1
        parts.append(para("Languages of the kept documents: " + ", ".join(
            f"{lang} {n / total:.1%}" for lang, n in list(langs.items())[:10]) + "."))
    length = hist.get("length_characters") or {}
    edges, counts = length.get("edges") or [], length.get("counts") or []
    if any(counts):
        parts.append(table(["length (characters)", "documents kept"], [
            [f"{edges[i]:,}–{edges[i + 1]:,}" if i + 1 < len(edges) else f"{edges[i]:,}+", n]
            for i, n in enumerate(counts) if n]))
    return "\n".join(parts)


def samples_section(rc: ReportContext) -> str:
    parts = []
    limit = rc.options.max_sample_chars
    ev = read_dict(rc.stage_dir("evaluate") / "eval.json") if rc.manifests.get("evaluate") else {}
    models = run_models_scored(ev)
    sampling = ev.get("sampling") if isinstance(ev.get("sampling"), dict) else {}
    how = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in sampling.items()
                    if v is not None)
    for name, scored in models.items():
        samples = [s for s in scored.get("samples") or [] if isinstance(s, dict)]
        if not samples:
            continue
        rows = [[pre(str(s.get("prompt", ""))), pre(clip(str(s.get("completion", "")), limit)),
                 s.get("finish_reason")] for s in samples]
        parts.append(f"<h3>Samples: <code>{esc(name)}/model</code></h3>"
                     + (para(f"Sampling: {how}.") if how else "")
                     + table(["prompt", "completion", "ended by"], rows, cls="sample"))
    columns = answer_columns(rc, ev)
    if columns:
        prompts: list[str] = []
        for _, answers in columns:
            prompts += [p for p in answers if p not in prompts]
        rows = [[Raw(f"<strong>{esc(p)}</strong>"),
                 *(pre(clip(a[p], limit), "answer") if p in a else Raw("–", "answer") for _, a in columns)]
                for p in prompts]
        parts.append("<h3>Answers side by side</h3>" + para("The same chat prompts, answered greedily by each "
                                                             "model of the run.")
                     + table(["prompt", *(name for name, _ in columns)], rows))
    return "\n".join(parts)


def run_models_scored(ev: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """evaluate's per-model results in the order a run makes the models (pre-trained, imported, fine-tuned)."""
    order = ("train", "base", "finetune")
    models = {k: v for k, v in (ev.get("models") or {}).items() if isinstance(v, dict)}
    return dict(sorted(models.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def answer_columns(rc: ReportContext, ev: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """(model, {prompt: answer}) for every model's greedy answers to the chat prompts: evaluate's (every
    model, the same prompts), else fine-tuning's own before/after answers."""
    labels = {"train": "pre-trained (this run)", "base": "imported base", "finetune": "fine-tuned"}
    cols = []
    for name, scored in run_models_scored(ev).items():
        answers = {str(a.get("prompt")): str(a.get("answer", "")) for a in (scored or {}).get("chat_answers") or []
                   if isinstance(a, dict)}
        if answers:
            cols.append((labels.get(name, name), answers))
    if cols:
        return cols
    ft = read_dict(rc.stage_dir("finetune") / "eval.json") if rc.manifests.get("finetune") else {}
    answers = [a for a in ft.get("answers") or [] if isinstance(a, dict) and "prompt" in a]
    if not answers:
        return []
    return [("before fine-tuning", {str(a["prompt"]): str(a.get("before", "")) for a in answers}),
            ("fine-tuned", {str(a["prompt"]): str(a.get("after", "")) for a in answers})]


def stages_section(rc: ReportContext) -> str:
    rows, total = stage_rows(rc.manifests)
    parts = [table(["stage", "status", "started", "wall time", "outputs"],
                   [[n, status, started, None if wall is None else f"{wall:.1f} s",
                     None if files is None else f"{files} files, {human_bytes(size)}"]
                    for n, status, started, wall, files, size in rows]),
             para(f"Total wall time of the stages: {total:.1f} s.")]
    for name, m in rc.manifests.items():
        stats = (m or {}).get("stats")
        if stats:
            parts.append(f"<details><summary>{esc(name)} statistics</summary>"
                         + table(["statistic", "value"], [[k, v] for k, v in flatten(stats).items()])
                         + "</details>")
    return "\n".join(parts)


def use_section(rc: ReportContext) -> str:
    run_dir = Path(rc.run_dir)
    which = "finetune" if (run_dir / "finetune" / "model").is_dir() else "train"
    if not (run_dir / which / "model").is_dir():
        return ""
    return (para(f"The served model is {run_dir / which / 'model'} (the fine-tuned one when there is one).")
            + f"<pre>gristmill serve {esc(run_dir)}\ngristmill chat {esc(run_dir)}\n"
              f"gristmill compare {esc(run_dir)}</pre>")
