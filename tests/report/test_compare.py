"""gristmill compare: the models of real runs side by side, each figure read from the file that recorded it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from gristmill.cli import main
from gristmill.core.workspace import write_json
from gristmill.errors import InputError
from gristmill.report.compare import compare, run_models, to_markdown
from gristmill.report.markdown import fmt


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def cells(line: str) -> list[str]:
    """The cells of a row of the terminal table (columns are at least two spaces apart)."""
    return re.split(r"\s{2,}", line.strip())


def test_every_model_of_two_runs_with_the_numbers_their_files_hold(runs: Path):
    small, other = runs / "runs" / "small", runs / "runs" / "other"
    entries = compare([str(small), str(other / "finetune" / "model")])
    assert [(e.run, e.model, e.label) for e in entries] == [
        ("small", "train", "pre-trained"), ("small", "finetune", "fine-tuned"), ("other", "finetune", "fine-tuned")]
    pre, fine, other_fine = entries
    train = read(small / "train" / "manifest.json")["stats"]
    evs, ft = read(small / "evaluate" / "eval.json")["models"], read(small / "finetune" / "eval.json")
    # every model: evaluate's metrics on the same validation text; train's own figures
    for entry, ev in ((pre, evs["train"]), (fine, evs["finetune"])):
        assert (entry.text_val.loss, entry.text_val.perplexity, entry.text_val.bits_per_byte,
                entry.text_val.tokens) == (ev["loss"], ev["perplexity"], ev["bits_per_byte"], ev["tokens"])
    assert pre.text_val.source == "evaluate/eval.json: models.train"
    assert evs["train"]["tokens"] == evs["finetune"]["tokens"]  # the same tokenizer, the same text
    assert (pre.parameters, pre.steps, pre.train_seconds, pre.tokens_seen) == (
        train["parameters"], 20, train["train_seconds"], train["tokens_seen"])
    # chat loss before/after fine-tuning: finetune/eval.json
    assert pre.chat_val.loss == ft["chat_val"]["before"]["loss"]
    assert fine.chat_val.loss == ft["chat_val"]["after"]["loss"]
    assert fine.steps == 6 and fine.started_from == "train/model" and fine.parameters == train["parameters"]
    # the other run: fine-tuned for 3 steps, its own numbers
    other_ft = read(other / "finetune" / "eval.json")
    assert other_fine.steps == 3 and other_fine.chat_val.loss == other_ft["chat_val"]["after"]["loss"]
    assert other_fine.chat_val.loss != fine.chat_val.loss


def test_the_terminal_table_lines_up_the_numbers_of_each_model(runs: Path, capsys: pytest.CaptureFixture):
    small, other = runs / "runs" / "small", runs / "runs" / "other"
    assert main(["compare", str(small), str(other)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert cells(out[0]) == ["small pre-trained", "small fine-tuned", "other pre-trained", "other fine-tuned"]
    rows = {cells(line)[0]: cells(line)[1:] for line in out[2:] if line and not line.startswith("Loss")}
    evs = [read(r / "evaluate" / "eval.json")["models"] for r in (small, other)]
    fts = [read(r / "finetune" / "eval.json") for r in (small, other)]
    assert rows["text val bits per byte"] == [fmt(ev[m]["bits_per_byte"]) for ev in evs for m in ("train", "finetune")]
    assert rows["chat val loss (nats/assistant token)"] == [
        fmt(f["chat_val"][k]["loss"]) for f in fts for k in ("before", "after")]
    assert rows["training steps"] == ["20", "6", "20", "3"]
    # numbers are right-aligned: every row has the same width up to its last cell
    widths = {len(line) for line in out[2:] if line and re.match(r"^(text val (loss|perplexity|bits|tokens)|chat val loss|training steps)", line)}
    assert len(widths) == 1


def test_json_has_the_same_keys_for_every_model(runs: Path, capsys: pytest.CaptureFixture):
    small = runs / "runs" / "small"
    assert main(["compare", "--json", str(small), str(runs / "runs" / "other" / "train" / "model")]) == 0
    data = json.loads(capsys.readouterr().out)
    models = data["models"]
    assert [(m["run"], m["model"]) for m in models] == [("small", "train"), ("small", "finetune"), ("other", "train")]
    keys = {"run", "model", "label", "path", "parameters", "steps", "max_steps", "train_seconds", "tokens_seen",
            "started_from", "text_val", "chat_val", "tasks"}
    assert all(set(m) == keys for m in models)
    assert set(models[0]["text_val"]) == {"loss", "perplexity", "bits_per_byte", "tokens", "source"}
    assert models[1]["chat_val"]["loss"] == read(small / "finetune" / "eval.json")["chat_val"]["after"]["loss"]
    assert models[0]["started_from"] is None and models[0]["tasks"] == {}


def test_markdown_table_and_the_reports_models_section(runs: Path, capsys: pytest.CaptureFixture):
    small = runs / "runs" / "small"
    assert main(["compare", "--markdown", str(small)]) == 0
    md = capsys.readouterr().out
    assert md.startswith("|  | small pre-trained | small fine-tuned |\n|---|---|---|\n")
    ft = read(small / "finetune" / "eval.json")
    row = (f"| chat val loss (nats/assistant token) | {fmt(ft['chat_val']['before']['loss'])} | "
           f"{fmt(ft['chat_val']['after']['loss'])} |")
    assert row in md
    # the run's own report holds the same comparison
    report = (small / "report" / "report.md").read_text()
    assert "## Models" in report and row in report


def test_task_suite_scores_in_evaluate_become_rows(runs: Path, tmp_path: Path):
    run = shutil.copytree(runs / "runs" / "small", tmp_path / "tasks")
    ev = read(run / "evaluate" / "eval.json")
    # a task-suite block as the evaluation harness writes it, and a plain {task: {metric: value}} one
    ev["models"]["finetune"]["tasks"] = {}
    ev["models"]["train"]["tasks"] = {"hellaswag": {"task": "hellaswag", "file": "tasks/hellaswag.yaml", "items": 100, "num_fewshot": 0,
                                 "seconds": 1.5, "metrics": {"acc": {"value": 0.25, "stderr": 0.0435},
                                                             "acc_norm": {"value": 0.3, "stderr": None}}},
                   "arc_easy": {"acc": 0.4, "detail": {"k": 1}, "note": "not a score"}}
    write_json(run / "evaluate" / "eval.json", ev)
    pre, fine = run_models(run)
    assert pre.tasks == {"hellaswag": {"acc": 0.25, "acc stderr": 0.0435, "acc_norm": 0.3, "items": 100,
                                       "num_fewshot": 0},
                         "arc_easy": {"acc": 0.4, "detail.k": 1}}
    assert fine.tasks == {}
    md = to_markdown([pre, fine])
    assert "| task hellaswag: acc | 0.2500 | – |" in md and "| task hellaswag: acc stderr | 0.0435 | – |" in md
    assert "| task arc_easy: detail.k | 1 | – |" in md and "seconds" not in md and "note" not in md


def test_a_missing_or_unfinished_run_is_one_line_naming_it(runs: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture):
    assert main(["compare", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'nowhere'}: no such run or model folder" in err

    unfinished = shutil.copytree(runs / "runs" / "small", tmp_path / "unfinished")
    (unfinished / "finetune" / "manifest.json").unlink()  # as if fine-tuning had been interrupted
    with pytest.raises(InputError, match=r"unfinished/finetune/model: the finetune stage of .* has not finished"):
        compare([str(unfinished / "finetune" / "model")])
    assert [e.model for e in compare([str(unfinished)])] == ["train"]

    for stage in ("train", "finetune"):
        (unfinished / stage / "manifest.json").unlink(missing_ok=True)
    assert main(["compare", str(runs / "runs" / "small"), str(unfinished)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{unfinished}: has no finished model" in err

    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: is not a run folder"):
        compare([str(tmp_path / "empty")])
