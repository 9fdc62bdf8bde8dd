"""Exact resume: a training process killed with SIGKILL mid-run and resumed ends with the same bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import REPO, make_tokenize_dir, write_recipe


def launch(recipe: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "gristmill", "train", str(recipe)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    runs = tmp_path / "runs"
    for name in ("straight", "killed"):
        make_tokenize_dir(runs / name)
    ref = launch(write_recipe(tmp_path, runs, "straight"))
    killed_recipe = write_recipe(tmp_path, runs, "killed")
    proc = launch(killed_recipe)
    ckpts = runs / "killed" / "train" / "checkpoints"
    deadline = time.monotonic() + 60
    while not (ckpts / "step_000020").exists():  # let it get a little way, then pull the plug
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (runs / "killed" / "train" / "manifest.json").exists()
    resumed = launch(killed_recipe)
    out = resumed.communicate(timeout=60)[0]
    assert resumed.returncode == 0, out
    assert "resuming from checkpoint step_0000" in out and "step_000060" not in out.split("resuming")[1][:40]
    ref_out = ref.communicate(timeout=60)[0]
    assert ref.returncode == 0, ref_out
    a = (runs / "straight" / "train" / "model" / "model.safetensors").read_bytes()
    b = (runs / "killed" / "train" / "model" / "model.safetensors").read_bytes()
    assert a == b
