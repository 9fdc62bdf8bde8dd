"""Real run folders for the report tests: the ``quick`` recipe cut down to seconds, run by the command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SMALL = ["train.max_steps=20", "train.eval_every=10", "train.eval_tokens=2048", "train.checkpoint_every=10",
         "train.threads=1", "finetune.threads=1", "finetune.max_steps=6", "finetune.eval_every=3",
         "finetune.checkpoint_every=3", "finetune.lm_eval_tokens=4096", "finetune.sample_tokens=8",
         "evaluate.max_new_tokens=8", "export.formats=[]"]
"""Overrides of ``quick``: every stage but export (which needs the convert extra and adds nothing here)."""


def gristmill(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gristmill", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def run_quick(cwd: Path, name: str, *overrides: str) -> Path:
    sets = [a for o in [f"name={name}", *SMALL, *overrides] for a in ("--set", o)]
    proc = gristmill("run", "quick", *sets, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cwd / "runs" / name


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``runs/small`` (pre-trained and fine-tuned models) and ``runs/other``: the same run
    fine-tuned for 3 steps instead of 6 (copied, so only finetune and report run again)."""
    cwd = tmp_path_factory.mktemp("report-runs")
    small = run_quick(cwd, "small")
    shutil.copytree(small, cwd / "runs" / "other")
    run_quick(cwd, "other", "finetune.max_steps=3")
    return cwd
