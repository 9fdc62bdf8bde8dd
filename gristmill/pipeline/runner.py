"""The runner: chains stages through the run workspace, skips what is up to date, and works the same in one
process or under torchrun.

A stage is skipped when its manifest's fingerprint (its resolved config, the run seed, the fingerprints and
output hashes of the stages it reads, the hashes of external input files, and the Gristmill version)
matches *and* its output files still hash as the manifest recorded; a changed or missing output is named
and the stage runs again.

Under torchrun (``WORLD_SIZE`` > 1) rank 0 decides whether a stage runs and prepares its folder; the
decision is broadcast; stages marked ``distributed`` (train, finetune) run on every rank, the others on
rank 0 alone; rank 0 writes the manifest. Nothing here imports torch unless torchrun started the process.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gristmill import __version__
from gristmill.core.stage import Stage
from gristmill.core.workspace import (
    MANIFEST,
    StageContext,
    load_manifest,
    sha256_file,
    sha256_json,
    verify_outputs,
    write_json,
    write_manifest,
)
from gristmill.errors import ConfigError
from gristmill.pipeline.recipe import check_recipe, recipe_dict
from gristmill.stages import STAGE_NAMES, STAGES


def stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise ConfigError(f"unknown stage '{name}' (stages: {', '.join(STAGE_NAMES)})")


def fingerprint(recipe: Any, st: Stage) -> tuple[str, dict[str, Any]]:
    """The cache key of a stage, and the inputs record that goes into its manifest."""
    cfg = getattr(recipe, st.name).model_dump(mode="json", exclude=set(st.runtime_keys))
    upstream = {}
    unread = set(st.conditional) - set(st.inputs(getattr(recipe, st.name)))
    for dep in st.needs:  # every stage it may read, finished or not: a change upstream re-runs it
        if dep in unread:
            continue
        m = load_manifest(recipe.run_dir / dep)
        upstream[dep] = None if m is None else sha256_json([m["fingerprint"], m["outputs"]])
    files = {}
    if st.external_inputs:
        for p in st.external_inputs(getattr(recipe, st.name)):
            files[str(p)] = sha256_file(p)
    inputs = {"upstream": upstream, "files": files}
    key = sha256_json({"stage": st.name, "config": cfg, "seed": recipe.seed, "inputs": inputs,
                       "version": __version__})
    return key, inputs


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@contextmanager
def distributed_session(device: str = "auto") -> Iterator[None]:
    """Join torchrun's process group for the stages run inside (a no-op outside torchrun)."""
    if _world()[1] <= 1:
        yield
        return
    from gristmill.runtime import init_distributed, shutdown_distributed

    init_distributed(device)
    try:
        yield
    finally:
        shutdown_distributed()


def _decide(recipe: Any, st: Stage, key: str, force: bool) -> str | None:
    """Why the stage must run (None: its cached output is current). Prepares its folder when it runs."""
    out_dir = recipe.run_dir / st.name
    old = load_manifest(out_dir)
    if old is not None and old.get("fingerprint") == key and not force:
        changed = verify_outputs(out_dir, old)
        if not changed:
            return None
        reason = f"{changed[0]} changed since the stage wrote it" + (
            f" (and {len(changed) - 1} more)" if len(changed) > 1 else "")
    else:
        reason = "forced" if force else ("inputs or config changed" if old else "no previous output")
    if out_dir.exists() and (force or not st.resumable):
        shutil.rmtree(out_dir)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    return reason


def run_stage(recipe: Any, st: Stage, force: bool = False) -> dict[str, Any]:
    """Run one stage unless its cached output is current. Returns its manifest (on every rank)."""
    out_dir = recipe.run_dir / st.name
    key, inputs = fingerprint(recipe, st)
    rank, world = _world()
    main = rank == 0
    ctx = StageContext(run_dir=recipe.run_dir, stage=st.name, seed=recipe.seed, fingerprint=key,
                       log=log if main else (lambda msg: None), is_main=main)
    for dep in () if st.partial_inputs else st.inputs(getattr(recipe, st.name)):
        ctx.input_dir(dep)  # fail early, with the command to run, if an upstream stage is missing
    reason = _decide(recipe, st, key, force) if main else None
    if world > 1:
        import torch.distributed as tdist

        box = [reason]
        tdist.broadcast_object_list(box, src=0)
        reason = box[0]
    if reason is None:
        if main:
            log(f"[{st.name}] up to date, skipped (cached in {out_dir})")
        return load_manifest(out_dir) or {}
    if main:
        log(f"[{st.name}] running ({reason}) -> {out_dir}")
    started = time.time()
    cfg = getattr(recipe, st.name)
    stats: dict[str, Any] = {}
    if main or st.distributed:
        stats = st.run(ctx, cfg) or {}
    manifest: dict[str, Any] = {}
    if main:
        manifest = write_manifest(out_dir, stage=st.name, recipe=recipe.name, fingerprint=key,
                                  config=cfg.model_dump(mode="json"), inputs=inputs, stats=stats, started=started)
        log(f"[{st.name}] done in {manifest['wall_time_s']:.1f}s")
    if world > 1:
        import torch.distributed as tdist

        tdist.barrier()
        manifest = load_manifest(out_dir) or {}
    return manifest


def run_pipeline(recipe: Any, only: list[str] | None = None, force_from: str | None = None,
                 force: set[str] | None = None) -> dict[str, Any]:
    """Run the stages in order (or just ``only``); ``force_from`` re-runs that stage and all after it.

    Every stage's checks run before the first stage, so a mistake anywhere in the recipe costs nothing.
    """
    names = list(only) if only else [n for n in STAGE_NAMES if n not in recipe.skip]
    for n in names:
        stage(n)
    forced: set[str] = set(force or ())
    if force_from is not None:
        idx = STAGE_NAMES.index(stage(force_from).name)
        forced |= set(STAGE_NAMES[idx:])
    check_recipe(recipe, names)
    if _world()[0] == 0:
        recipe.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(recipe.run_dir / "recipe.json", recipe_dict(recipe))
    manifests = {}
    with distributed_session(recipe.train.device):
        for st in STAGES:
            if st.name not in names:
                continue
            if st.name in recipe.skip and not only:
                continue
            if not st.active(getattr(recipe, st.name)):
                if _world()[0] == 0 and only:
                    log(f"[{st.name}] not used by this recipe, skipped")
                continue
            manifests[st.name] = run_stage(recipe, st, force=st.name in forced)
    return manifests
