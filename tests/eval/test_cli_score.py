"""`gristmill score`: a model folder scored on task files from the command line, as the harness scores it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import tiny_text

from gristmill.cli import main
from gristmill.eval.harness import run_tasks
from gristmill.eval.tasks import load_tasks
from gristmill.eval.tasks.builtin import write_builtin_tasks
from gristmill.model.io import load_for_inference


def test_score_prints_the_harness_results(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    text = tiny_text()
    docs = [text[i:i + 1500] for i in range(0, 9000, 1500)]
    write_builtin_tasks(docs, tmp_path / "tasks", seed=5, n_items=12)
    assert main(["score", str(tiny_model_dir), "--tasks", str(tmp_path / "tasks"), "--json", "--device", "cpu",
                 "--samples-dir", str(tmp_path / "logs")]) == 0
    printed = json.loads(capsys.readouterr().out)
    model, tok = load_for_inference(tiny_model_dir, "cpu")
    direct = run_tasks(model, tok, load_tasks(tmp_path / "tasks"))
    assert set(printed) == {"gristmill_cloze", "gristmill_continuation"}
    for name, r in direct.items():
        assert printed[name]["metrics"] == r["metrics"] and printed[name]["items"] == r["items"] == 12
    assert (tmp_path / "logs" / "gristmill_cloze.jsonl").read_text().count("\n") == 12
    # the plain output: one line per task
    assert main(["score", str(tiny_model_dir), "--tasks", str(tmp_path / "tasks"), "--limit", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("(3 items, 0-shot)" in line for line in lines)


def test_score_with_a_missing_task_file_is_one_line(tiny_model_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture):
    assert main(["score", str(tiny_model_dir), "--tasks", str(tmp_path / "none.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.yaml" in err
