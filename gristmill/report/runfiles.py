"""What a run folder holds, read as the stages wrote it (nothing is recomputed): the training logs' series,
the data funnel, the evaluation files. The HTML report, the reading of its figures and ``gristmill compare``
share these readers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gristmill.core.config import flatten
from gristmill.core.jsonl import read_records
from gristmill.report.markdown import read_json_or_none


def read_dict(path: Path) -> dict[str, Any]:
    """A JSON object file, or {} when it is missing, unreadable or not an object (a report renders
    whatever is there)."""
    data = read_json_or_none(path)
    return data if isinstance(data, dict) else {}


def read_metrics(path: Path) -> dict[str, dict[int, float]]:
    """Every finite number a ``metrics.jsonl`` logged, by key then step: {"train/loss": {10: 5.9, ...}, ...}.

    Steps are sorted; a resumed run's later record replaces an earlier one at the same step."""
    out: dict[str, dict[int, float]] = {}
    for rec in read_records(path, strict=False):
        step = rec.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            continue
        for k, v in rec.items():
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                out.setdefault(k, {})[step] = float(v)
    return {k: dict(sorted(s.items())) for k, s in out.items()}


def latest(series: dict[int, float], step: int) -> float | None:
    """The last value logged at or before ``step``."""
    before = [s for s in series if s <= step]
    return series[before[-1]] if before else None


@dataclass
class FunnelStep:
    """One step data goes through on its way to the training splits."""

    name: str
    documents_in: int
    documents_out: int
    characters_in: int | None = None
    """None when the stage did not count it (collect does not measure records it could not read)."""
    characters_out: int | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    """Reason -> documents."""
    where: str = ""
    """The file, relative to the run folder, that holds what this step set aside."""


def funnel(manifests: dict[str, dict[str, Any] | None]) -> list[FunnelStep]:
    """collect (records read -> documents), then every prepare step in the order it ran."""
    steps: list[FunnelStep] = []
    collect = (manifests.get("collect") or {}).get("stats") or {}
    if "documents" in collect:
        reasons: dict[str, int] = {}
        for s in (collect.get("sources") or {}).values():
            for r, n in ((s or {}).get("quarantined") or {}).items():
                reasons[r] = reasons.get(r, 0) + int(n)
        quarantined = sum(reasons.values()) if reasons else int(collect.get("quarantined") or 0)
        steps.append(FunnelStep("collect", collect["documents"] + quarantined, collect["documents"], None,
                                collect.get("characters"), reasons, "collect/quarantine/"))
    prepare = manifests.get("prepare") or {}
    for name, st in prepare_steps(prepare):
        steps.append(FunnelStep(name, int(st.get("seen", 0)), int(st.get("kept", 0)), st.get("characters_in"),
                                st.get("characters_out"), dict(st.get("dropped") or {}), "prepare/dropped/"))
    return steps


def prepare_steps(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """prepare's per-step stats in the order the steps ran.

    The manifest stores them by name (sorted), so the order is rebuilt: each step sees what the one before
    kept, so "seen" never grows along the chain; steps that saw as many run in the order of
    ``prepare.steps``, and the split (not a configured step) runs last."""
    stats = (manifest.get("stats") or {}).get("steps") or {}
    configured = [s.get("type") for s in (manifest.get("config") or {}).get("steps") or [] if isinstance(s, dict)]

    def key(item: tuple[str, Any]) -> tuple[int, int]:
        name, st = item
        return -int((st or {}).get("seen", 0)), configured.index(name) if name in configured else len(configured)

    return [(n, st) for n, st in sorted(stats.items(), key=key) if isinstance(st, dict)]


def tasks_block(block: Any) -> dict[str, dict[str, Any]]:
    """A task-suite block as {task: {metric: number}}.

    Takes ``{task: {metric: value, ...}}`` (nested dicts flattened to ``a.b``; a bare number is metric
    ``value``) and the harness's records ``{task: {"metrics": {name: {"value": v, "stderr": s}}, "items": n,
    "num_fewshot": k, ...}}`` (read as ``name``, ``name stderr``, ``items``, ``num_fewshot``). Only numbers
    (and None, a metric that could not be computed) are kept: names, paths and timings are not scores."""
    out: dict[str, dict[str, Any]] = {}
    for task, rec in (block.items() if isinstance(block, dict) else ()):
        if isinstance(rec, dict) and isinstance(rec.get("metrics"), dict):
            flat: dict[str, Any] = {}
            for name, m in rec["metrics"].items():
                if isinstance(m, dict):
                    flat[name] = m.get("value")
                    if m.get("stderr") is not None:
                        flat[f"{name} stderr"] = m["stderr"]
                else:
                    flat[name] = m
            flat.update({k: rec[k] for k in ("items", "num_fewshot") if k in rec})
        else:
            flat = flatten(rec)  # a bare number becomes metric "value"
        flat = {k: v for k, v in flat.items() if v is None or (isinstance(v, int | float) and not isinstance(v, bool))}
        if flat:
            out[str(task)] = flat
    return out


def stage_rows(manifests: dict[str, dict[str, Any] | None]
               ) -> tuple[list[tuple[str, str, Any, float | None, int | None, int]], float]:
    """(stage, status, started at, wall time s, output files, output bytes) per stage, and the total wall
    time; a stage without a manifest is "not run"."""
    rows: list[tuple[str, str, Any, float | None, int | None, int]] = []
    total = 0.0
    for name, m in manifests.items():
        if m is None:
            rows.append((name, "not run", None, None, None, 0))
            continue
        wall = m.get("wall_time_s")
        total += wall or 0.0
        outputs = m.get("outputs") or {}
        size = sum(o.get("bytes", 0) for o in outputs.values() if isinstance(o, dict))
        rows.append((name, "done", m.get("started_at"), wall, len(outputs), size))
    return rows, total
