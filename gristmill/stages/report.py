"""report: a Markdown and an HTML report of a run, written from the stages' manifests and output files.

Nothing is recomputed. ``report.md`` is a header, a reading of the figures (what improved, what got worse,
what to try), a table of the stages (status, wall time, outputs), then each stage's own section (every
stage module supplies ``report``), the run's models compared, how to serve the model, and every stage's
statistics as the stage reported them. ``report.html`` (``gristmill.report.html``; needs the ``report``
extra, matplotlib) shows the same run as one self-contained page with plots. A stage that has not run is
listed as such; the reports still render. Writes ``report.md``, the SVG charts its sections draw, and
``report.html``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gristmill.core.stage import ReportContext, Stage
from gristmill.core.workspace import StageContext, load_manifest, write_text
from gristmill.report.config import ReportConfig


def _stages() -> tuple[Stage, ...]:
    from gristmill.stages import STAGES  # the registry lists this module too: import it when used

    return tuple(s for s in STAGES if s.name != "report")


def section_stages(rc: ReportContext) -> str:
    from gristmill.report.markdown import human_bytes, table
    from gristmill.report.runfiles import stage_rows

    rows, total = stage_rows(rc.manifests)
    cells = [[name, status, started, None if wall is None else f"{wall:.1f} s",
              None if files is None else f"{files} files, {human_bytes(size)}"]
             for name, status, started, wall, files, size in rows]
    return ("## Stages\n\n" + table(["stage", "status", "started", "wall time", "outputs"], cells)
            + f"\n\nTotal wall time of the stages: {total:.1f} s.\n")


def section_reading(rc: ReportContext) -> str:
    from gristmill.report.reading import read_run, to_markdown

    text = to_markdown(read_run(rc.run_dir, rc.manifests))
    if not text:
        return ""
    return f"## Reading\n\nWhat the recorded figures say (rules of thumb over the numbers below).\n\n{text}"


def section_models(rc: ReportContext) -> str:
    from gristmill.report.compare import run_models, to_markdown

    entries = run_models(rc.run_dir)
    if not entries:
        return ""
    return ("## Models\n\nEvery model of this run with the figures its run recorded (`gristmill compare "
            f"{rc.run_dir} OTHER_RUN` puts other runs beside it).\n\n" + to_markdown(entries))


def section_stats(rc: ReportContext) -> str:
    """Every stage's stats as reported by the stage, flattened."""
    from gristmill.core.config import flatten
    from gristmill.report.markdown import table

    parts = []
    for st in _stages():
        stats = (rc.manifests.get(st.name) or {}).get("stats")
        if stats:
            parts.append(f"### {st.name}\n\n" + table(["statistic", "value"], [[k, v] for k, v in
                                                                              flatten(stats).items()]) + "\n")
    if not parts:
        return ""
    return ("## Stage statistics\n\nAs each stage reported them (`<stage>/manifest.json`, key `stats`).\n\n"
            + "\n".join(parts))


def section_serve(rc: ReportContext, recipe: Any) -> str:
    run_dir = rc.run_dir
    which = "finetune" if (run_dir / "finetune" / "model" / "model.safetensors").exists() else "train"
    serve = recipe.get("serve") if isinstance(recipe, dict) else None
    port = serve.get("port", 8000) if isinstance(serve, dict) else 8000
    return (
        "## Serve the model\n\n"
        f"The served model is `{run_dir / which / 'model'}` (the fine-tuned one when there is one).\n\n"
        f"```sh\ngristmill serve {run_dir}   # then open http://127.0.0.1:{port}/ for the chat page\n```\n\n"
        "OpenAI-compatible API (add `-H 'Authorization: Bearer <key>'` when the server has an API key):\n\n"
        f"```sh\ncurl http://127.0.0.1:{port}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        f"  -d '{{\"model\": \"{run_dir.name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Who was "
        "Hamlet?\"}]}'\n```\n"
    )


def _context(run_dir: Path, cfg: ReportConfig) -> tuple[ReportContext, Any]:
    """The report context (every stage's manifest, in stage order) and the run's recorded recipe."""
    from gristmill.report.markdown import read_json_or_none

    run_dir = Path(run_dir)
    rc = ReportContext(run_dir=run_dir, manifests={s.name: load_manifest(run_dir / s.name) for s in _stages()},
                       options=cfg)
    return rc, read_json_or_none(run_dir / "recipe.json")


def run_facts(rc: ReportContext, recipe: Any) -> list[tuple[str, str, bool]]:
    """The header line's facts: (label, value, whether the value is code)."""
    first = next((m for m in rc.manifests.values() if m), None)
    facts = [("run directory", str(rc.run_dir), True)]
    if first and first.get("recipe"):
        facts.append(("recipe", str(first["recipe"]), True))
    if isinstance(recipe, dict) and "seed" in recipe:
        facts.append(("seed", str(recipe["seed"]), False))
    if first and isinstance(first.get("versions"), dict):
        v = first["versions"]
        facts.append(("", ", ".join(f"{k} {v[k]}" for k in ("gristmill", "torch", "python") if k in v), False))
    return facts


def _title(rc: ReportContext, cfg: ReportConfig) -> str:
    return cfg.title or f"Gristmill run: {rc.run_dir.name}"


def build_report(run_dir: Path, cfg: ReportConfig) -> tuple[str, dict[str, str]]:
    """The Markdown text and the charts ({file name: SVG text}) for a run directory."""
    rc, recipe = _context(run_dir, cfg)
    facts = "; ".join(f"{label} `{v}`" if code else f"{label} {v}".strip()
                      for label, v, code in run_facts(rc, recipe))
    header = f"# {_title(rc, cfg)}\n\n{facts}.\n"
    sections = [section_reading(rc), section_stages(rc)]
    sections += [st.report(rc) for st in _stages() if st.report is not None]
    sections += [section_models(rc), section_serve(rc, recipe), section_stats(rc)]
    return header + "\n" + "\n".join(s for s in sections if s), rc.charts


def build_html(run_dir: Path, cfg: ReportConfig) -> str:
    """The self-contained HTML page for a run directory (needs matplotlib: the ``report`` extra)."""
    from gristmill.report.html import render

    rc, recipe = _context(run_dir, cfg)
    return render(rc, _title(rc, cfg), run_facts(rc, recipe))


def run(ctx: StageContext, cfg: ReportConfig) -> dict[str, Any]:
    from gristmill.core.extras import available
    from gristmill.errors import MissingExtra

    text, charts = build_report(ctx.run_dir, cfg)
    for name, svg in charts.items():
        write_text(ctx.out_dir / name, svg)
    write_text(ctx.out_dir / "report.md", text)
    ctx.log(f"[report] {ctx.out_dir / 'report.md'} ({len(text):,} characters, {len(charts)} charts)")
    page = None
    if available("matplotlib"):
        page = build_html(ctx.run_dir, cfg)
        write_text(ctx.out_dir / "report.html", page)
        ctx.log(f"[report] {ctx.out_dir / 'report.html'} ({len(page):,} characters; open it in a browser)")
    else:  # the Markdown report needs nothing optional: write it, and say once how to get the page
        ctx.log(f"[report] report.html not written: {MissingExtra('the HTML report', 'report', 'matplotlib')}, "
                f"then `gristmill report RECIPE --force`")
    reported = [s.name for s in _stages() if load_manifest(ctx.run_dir / s.name)]
    return {"characters": len(text), "charts": sorted(charts), "stages_reported": reported,
            "html_characters": None if page is None else len(page)}


def summary(manifest: dict[str, Any], run_dir: Path) -> list[str]:
    lines = [f"  report  {run_dir / 'report' / 'report.md'}"]
    if (run_dir / "report" / "report.html").is_file():
        lines.append(f"          {run_dir / 'report' / 'report.html'} (plots; open it in a browser)")
    return lines


STAGE = Stage(
    name="report",
    config=ReportConfig,
    needs=("collect", "prepare", "synth", "tokenize", "train", "evaluate", "base", "finetune", "export"),
    partial_inputs=True,
    run=run,
    help="write a Markdown and an HTML report of the run",
    summary=summary,
)
