"""torchrun data parallel on CPU (gloo): two processes match one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support import REPO, make_tokenize_dir, write_recipe


def run_launch(recipe: Path, nproc: int) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "gristmill", "train", str(recipe)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "gristmill", "train", str(recipe)]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stderr


def losses(run_dir: Path) -> dict[int, float]:
    recs = [json.loads(x) for x in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in recs if "train/loss" in r}


def stats(run_dir: Path) -> dict:
    return json.loads((run_dir / "train" / "manifest.json").read_text())["stats"]


@pytest.mark.slow
def test_two_processes_ddp_and_fsdp_match_single_process(tmp_path):
    runs = tmp_path / "runs"
    train = dict(max_steps=20, batch_size=8, micro_batch_size=2, optimizer="adamw", eval_every=10,
                 checkpoint_every=10, model={"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32})
    for name in ("single", "ddp", "fsdp"):
        make_tokenize_dir(runs / name)
    run_launch(write_recipe(tmp_path, runs, "single", **train), 1)
    one = losses(runs / "single")
    assert len(one) == 4
    w1 = load_file(runs / "single" / "train" / "model" / "model.safetensors")
    for strategy in ("ddp", "fsdp"):
        log = run_launch(write_recipe(tmp_path, runs, strategy, distributed=strategy, **train), 2)
        assert "2 process(es)" in log
        two = losses(runs / strategy)
        assert one.keys() == two.keys()
        for step in one:
            assert two[step] == pytest.approx(one[step], rel=1e-4, abs=1e-4), (strategy, step, one[step], two[step])
        s1, s2 = stats(runs / "single"), stats(runs / strategy)
        assert s2["processes"] == 2 and s2["val_tokens"] == s1["val_tokens"]
        assert s2["val_loss"] == pytest.approx(s1["val_loss"], rel=1e-4)
        w2 = load_file(runs / strategy / "train" / "model" / "model.safetensors")
        assert w1.keys() == w2.keys() and all(torch.allclose(w1[k], w2[k], atol=1e-4) for k in w1), strategy


@pytest.mark.slow
def test_two_processes_stop_together_on_the_time_budget(tmp_path):
    runs = tmp_path / "runs"
    make_tokenize_dir(runs / "budget")
    recipe = write_recipe(tmp_path, runs, "budget", max_steps=100_000, time_budget=5.0, batch_size=8,
                          eval_every=25, checkpoint_every=0, model={"n_layer": 2, "n_head": 2, "n_embd": 32,
                                                                   "block_size": 32})
    run_launch(recipe, 2)  # a rank that stopped alone would leave the other blocked in an all-reduce
    s = stats(runs / "budget")
    assert s["stopped_by"] == "time_budget" and s["processes"] == 2 and s["steps"] > 10
