"""The stage record: everything the runner, the CLI and the report need to know about one stage.

A stage is one object, defined in its own module under ``gristmill/stages/`` and listed once in
``gristmill.stages.STAGES``. Adding a stage means writing that module and adding it to the list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gristmill.core.config import Config
from gristmill.core.workspace import StageContext


@dataclass
class ReportContext:
    """What a stage's report section is handed."""

    run_dir: Path
    manifests: dict[str, dict[str, Any] | None]
    """Every stage's manifest (None for a stage that has not run)."""
    options: Any
    """The report section of the recipe (``ReportConfig``)."""
    charts: dict[str, str] = field(default_factory=dict)
    """A section adds SVG charts here: {file name: SVG text}; the report stage writes them."""

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline."""

    name: str
    """Its folder under ``runs/<name>/``, its recipe section and its command."""
    config: type[Config]
    """The class of its recipe section (from a torch-free config module)."""
    needs: tuple[str, ...]
    """Stages whose outputs it may read: they run first, and their manifests go into its cache key."""
    run: Callable[[StageContext, Any], dict[str, Any]]
    """``run(ctx, cfg) -> stats``: the library calls (imported inside, so loading a recipe stays light)."""
    help: str
    """One line for ``gristmill --help``."""
    resumable: bool = False
    """Keeps its partial output between attempts and finishes it (checkpoints, completion markers), rather
    than restarting."""
    runtime_keys: tuple[str, ...] = ()
    """Keys of its config that change how it runs but never what it writes (workers, executor): left out of
    its cache key, so changing them does not re-run it."""
    distributed: bool = False
    """Under torchrun every rank runs it (rank 0 writes); other stages run on rank 0 alone."""
    external_inputs: Callable[[Any], list[Path]] | None = None
    """The files outside the run it reads, from its config (hashed into its cache key)."""
    reads: Callable[[Any], tuple[str, ...]] | None = None
    """The stages of ``needs`` it reads with this config (default: all of them); those must have finished."""
    conditional: tuple[str, ...] = ()
    """Stages of ``needs`` read only when ``reads`` lists them for the config (synth's teacher from base,
    tokenize's paraphrases from synth): otherwise left out of its cache key, so they do not re-run it."""
    partial_inputs: bool = False
    """Runs on whatever upstream stages have finished (the report); otherwise they all must have."""
    enabled: Callable[[Any], bool] | None = None
    """False when this config asks nothing of the stage (e.g. no base model to import): it is skipped."""
    check: Callable[[Any, Any], None] | None = None
    """``check(cfg, recipe)``: cross-section checks and optional extras, run before any stage runs."""
    report: Callable[[ReportContext], str] | None = None
    """Its section of ``report.md`` (Markdown; empty when there is nothing to show)."""
    summary: Callable[[dict[str, Any], Path], list[str]] | None = None
    """Lines for the summary ``gristmill run`` prints, from its manifest and the run folder."""

    def inputs(self, cfg: Any) -> tuple[str, ...]:
        """The upstream stages this config makes it read."""
        return self.reads(cfg) if self.reads is not None else self.needs

    def active(self, cfg: Any) -> bool:
        return self.enabled(cfg) if self.enabled is not None else True
