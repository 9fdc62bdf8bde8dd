"""The stage registry and the runner that chains stages through the run workspace.

Every stage is a function ``fn(ctx: StageContext, cfg) -> stats`` in the module named after it; this
file only says in which order they run, what each needs, and when a stage can be skipped. A stage is
skipped when its manifest's fingerprint (its resolved config, the run seed, the fingerprints and output
hashes of the stages it reads, the hashes of external input files, and the Gristmill version) matches.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gristmill import __version__
from gristmill.errors import ConfigError
from gristmill.recipe import Recipe, recipe_dict
from gristmill.workspace import (
    MANIFEST,
    StageContext,
    load_manifest,
    sha256_file,
    sha256_json,
    write_json,
    write_manifest,
)


@dataclass(frozen=True)
class Stage:
    name: str
    target: str
    """``module:function`` of the stage function, imported only when the stage runs."""
    needs: tuple[str, ...]
    help: str
    resumable: bool = False
    """Resumable stages keep their partial output between attempts and finish it (train, finetune)."""
    external_inputs: str | None = None
    """``module:function`` mapping the stage config to the external files it reads (hashed for caching)."""

    def function(self) -> Callable[..., dict[str, Any]]:
        return _load(self.target)


def _load(target: str) -> Callable[..., Any]:
    mod, _, fn = target.partition(":")
    return getattr(importlib.import_module(mod), fn)


STAGES: tuple[Stage, ...] = (
    Stage("collect", "gristmill.collect:run_collect", (), "read sources into documents with provenance",
          external_inputs="gristmill.collect:input_files"),
    Stage("prepare", "gristmill.prepare:run_prepare", ("collect",),
          "normalise, clean, filter, deduplicate and split documents"),
    Stage("synth", "gristmill.synth:run_synth", ("prepare",), "make synthetic chat data from documents"),
    Stage("tokenize", "gristmill.tokenize:run_tokenize", ("prepare",),
          "train a byte-level BPE tokenizer and write token files"),
    Stage("train", "gristmill.train:run_train", ("tokenize",), "pre-train the transformer", resumable=True),
    Stage("evaluate", "gristmill.evaluate:run_evaluate", ("train", "tokenize"),
          "held-out loss, perplexity, bits per byte, samples"),
    Stage("finetune", "gristmill.finetune:run_finetune", ("train", "synth", "tokenize"),
          "supervised fine-tuning on the synthetic chat data", resumable=True),
    Stage("report", "gristmill.report:run_report", ("collect", "prepare", "synth", "tokenize", "train",
          "evaluate", "finetune"), "write a Markdown report of the run"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise ConfigError(f"unknown stage '{name}' (stages: {', '.join(STAGE_NAMES)})")


def fingerprint(recipe: Recipe, st: Stage) -> tuple[str, dict[str, Any]]:
    """The cache key of a stage, and the inputs record that goes into its manifest."""
    cfg = getattr(recipe, st.name).model_dump(mode="json")
    upstream = {}
    for dep in st.needs:
        m = load_manifest(recipe.run_dir / dep)
        upstream[dep] = None if m is None else sha256_json([m["fingerprint"], m["outputs"]])
    files = {}
    if st.external_inputs:
        for p in _load(st.external_inputs)(getattr(recipe, st.name)):
            files[str(p)] = sha256_file(p)
    inputs = {"upstream": upstream, "files": files}
    key = sha256_json({"stage": st.name, "config": cfg, "seed": recipe.seed, "inputs": inputs,
                       "version": __version__})
    return key, inputs


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_stage(recipe: Recipe, st: Stage, force: bool = False) -> dict[str, Any]:
    """Run one stage unless its cached output is current. Returns its manifest."""
    out_dir = recipe.run_dir / st.name
    key, inputs = fingerprint(recipe, st)
    old = load_manifest(out_dir)
    if old is not None and old.get("fingerprint") == key and not force:
        log(f"[{st.name}] up to date, skipped (cached in {out_dir})")
        return old
    ctx = StageContext(run_dir=recipe.run_dir, stage=st.name, seed=recipe.seed, fingerprint=key, log=log)
    for dep in st.needs:
        ctx.input_dir(dep)  # fail early, with the command to run, if an upstream stage is missing
    if out_dir.exists() and (force or not st.resumable):
        shutil.rmtree(out_dir)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    reason = "forced" if force else ("inputs or config changed" if old else "no previous output")
    log(f"[{st.name}] running ({reason}) -> {out_dir}")
    started = time.time()
    cfg = getattr(recipe, st.name)
    stats = st.function()(ctx, cfg) or {}
    manifest = write_manifest(out_dir, stage=st.name, recipe=recipe.name, fingerprint=key,
                              config=cfg.model_dump(mode="json"), inputs=inputs, stats=stats, started=started)
    log(f"[{st.name}] done in {manifest['wall_time_s']:.1f}s")
    return manifest


def run_pipeline(recipe: Recipe, only: list[str] | None = None, force_from: str | None = None) -> dict[str, Any]:
    """Run the stages in order (or just ``only``); ``force_from`` re-runs that stage and all after it."""
    names = list(only) if only else list(STAGE_NAMES)
    for n in names:
        stage(n)
    forced: set[str] = set()
    if force_from is not None:
        idx = STAGE_NAMES.index(stage(force_from).name)
        forced = set(STAGE_NAMES[idx:])
    recipe.run_dir.mkdir(parents=True, exist_ok=True)
    write_json(recipe.run_dir / "recipe.json", recipe_dict(recipe))
    manifests = {}
    for st in STAGES:
        if st.name in names:
            manifests[st.name] = run_stage(recipe, st, force=st.name in forced)
    return manifests


def stage_dir(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / name
