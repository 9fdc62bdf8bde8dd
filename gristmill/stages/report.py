"""report: a Markdown summary of a run, written from the stages' manifests and output files.

Nothing is recomputed. The report is a header, a table of the stages (status, wall time, outputs), then
each stage's own section (every stage module supplies ``report``), how to serve the model, and every
stage's statistics as the stage reported them. A stage that has not run is listed as such; the report
still renders. Writes ``report.md`` and the SVG charts the sections draw.
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

    rows, total = [], 0.0
    for st in _stages():
        m = rc.manifests.get(st.name)
        if m is None:
            rows.append([st.name, "not run", None, None, None])
            continue
        wall = m.get("wall_time_s")
        total += wall or 0.0
        outputs = m.get("outputs") or {}
        size = sum(o.get("bytes", 0) for o in outputs.values() if isinstance(o, dict))
        rows.append([st.name, "done", m.get("started_at"), None if wall is None else f"{wall:.1f} s",
                     f"{len(outputs)} files, {human_bytes(size)}"])
    return ("## Stages\n\n" + table(["stage", "status", "started", "wall time", "outputs"], rows)
            + f"\n\nTotal wall time of the stages: {total:.1f} s.\n")


def section_stats(rc: ReportContext) -> str:
    """Every stage's stats as reported by the stage, flattened."""
    from gristmill.report.markdown import flatten, table

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


def build_report(run_dir: Path, cfg: ReportConfig) -> tuple[str, dict[str, str]]:
    """The Markdown text and the charts ({file name: SVG text}) for a run directory."""
    from gristmill.report.markdown import read_json_or_none

    run_dir = Path(run_dir)
    stages = _stages()
    rc = ReportContext(run_dir=run_dir, manifests={s.name: load_manifest(run_dir / s.name) for s in stages},
                       options=cfg)
    recipe = read_json_or_none(run_dir / "recipe.json")
    first = next((m for m in rc.manifests.values() if m), None)
    facts = [f"run directory `{run_dir}`"]
    if first and first.get("recipe"):
        facts.append(f"recipe `{first['recipe']}`")
    if isinstance(recipe, dict) and "seed" in recipe:
        facts.append(f"seed {recipe['seed']}")
    if first and isinstance(first.get("versions"), dict):
        v = first["versions"]
        facts.append(", ".join(f"{k} {v[k]}" for k in ("gristmill", "torch", "python") if k in v))
    header = f"# {cfg.title or f'Gristmill run: {run_dir.name}'}\n\n" + "; ".join(facts) + ".\n"
    sections = [section_stages(rc)]
    sections += [st.report(rc) for st in stages if st.report is not None]
    sections += [section_serve(rc, recipe), section_stats(rc)]
    return header + "\n" + "\n".join(s for s in sections if s), rc.charts


def run(ctx: StageContext, cfg: ReportConfig) -> dict[str, Any]:
    text, charts = build_report(ctx.run_dir, cfg)
    for name, svg in charts.items():
        write_text(ctx.out_dir / name, svg)
    write_text(ctx.out_dir / "report.md", text)
    ctx.log(f"[report] {ctx.out_dir / 'report.md'} ({len(text):,} characters, {len(charts)} charts)")
    reported = [s.name for s in _stages() if load_manifest(ctx.run_dir / s.name)]
    return {"characters": len(text), "charts": sorted(charts), "stages_reported": reported}


def summary(manifest: dict[str, Any], run_dir: Path) -> list[str]:
    return [f"  report  {run_dir / 'report' / 'report.md'}"]


STAGE = Stage(
    name="report",
    config=ReportConfig,
    needs=("collect", "prepare", "synth", "tokenize", "train", "evaluate", "base", "finetune", "export"),
    partial_inputs=True,
    run=run,
    help="write a Markdown report of the run",
    summary=summary,
)
