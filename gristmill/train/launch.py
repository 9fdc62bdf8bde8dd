"""Run the train stage of a recipe, on one process or many under torchrun.

    python -m gristmill.train.launch default --set train.max_steps=200
    torchrun --standalone --nproc_per_node 2 -m gristmill.train.launch default --set train.batch_size=64

Same caching as ``gristmill train``: the stage is skipped when its manifest is current, resumed from its
last checkpoint when it was interrupted. Under torchrun, rank 0 decides, prepares the folder and writes
the manifest; every rank trains.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

from gristmill.errors import GristmillError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gristmill.train.launch", description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe", help="built-in recipe name or path to a recipe YAML")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted override, e.g. train.max_steps=100 (repeatable)")
    ap.add_argument("--force", action="store_true", help="retrain from scratch even if the output is current")
    args = ap.parse_args(argv)
    try:
        run(args.recipe, args.overrides, args.force)
    except GristmillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run(recipe_name: str, overrides: list[str], force: bool = False) -> None:
    from gristmill.pipeline import fingerprint, run_stage, stage
    from gristmill.recipe import load_recipe
    from gristmill.runtime import dist_from_env, init_distributed, shutdown_distributed
    from gristmill.train.pretrain import run_train
    from gristmill.workspace import MANIFEST, StageContext, load_manifest, write_manifest

    recipe = load_recipe(recipe_name, overrides)
    st = stage("train")
    if not dist_from_env().enabled:
        run_stage(recipe, st, force=force)
        return

    import torch.distributed as tdist

    d, _ = init_distributed(recipe.train.device)
    try:
        out_dir = recipe.run_dir / st.name
        key, inputs = fingerprint(recipe, st)
        decision = [None]
        if d.is_main:
            old = load_manifest(out_dir)
            if old is not None and old.get("fingerprint") == key and not force:
                decision[0] = "skip"
                print(f"[train] up to date, skipped (cached in {out_dir})", file=sys.stderr)
            else:
                if out_dir.exists() and force:
                    shutil.rmtree(out_dir)
                (out_dir / MANIFEST).unlink(missing_ok=True)
                out_dir.mkdir(parents=True, exist_ok=True)
                decision[0] = "run"
        tdist.broadcast_object_list(decision, src=0)
        if decision[0] == "skip":
            return
        ctx = StageContext(run_dir=recipe.run_dir, stage=st.name, seed=recipe.seed, fingerprint=key,
                           log=lambda m: print(m, file=sys.stderr, flush=True))
        started = time.time()
        stats = run_train(ctx, recipe.train)
        if d.is_main:
            write_manifest(out_dir, stage=st.name, recipe=recipe.name, fingerprint=key,
                           config=recipe.train.model_dump(mode="json"), inputs=inputs, stats=stats, started=started)
        tdist.barrier()
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
