"""report: renders a hand-made run directory (manifests and stage files as the stages write them)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gristmill.core.config import flatten
from gristmill.core.jsonl import write_jsonl
from gristmill.core.workspace import StageContext, write_json
from gristmill.report.config import ReportConfig
from gristmill.report.markdown import curve_table, read_curve
from gristmill.report.svg import loss_svg, nice_ticks
from gristmill.stages.report import build_report
from gristmill.stages.report import run as run_report


def manifest(stage: str, stats: dict, wall: float) -> dict:
    return {"stage": stage, "recipe": "handmade", "fingerprint": "f" * 64, "config": {}, "inputs": {},
            "outputs": {"x.jsonl": {"sha256": "0" * 64, "bytes": 2048}}, "stats": stats,
            "started_at": "2025-01-01T10:00:00+0000", "wall_time_s": wall,
            "versions": {"gristmill": "0.1.0", "torch": "2.13.0", "python": "3.11"}}


def doc(i: int) -> dict:
    return {"id": f"d{i}", "text": f"text {i}", "source": "s", "provenance": {"uri": "u", "reader": "files"},
            "meta": {}}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "handmade"
    write_json(run / "recipe.json", {"name": "handmade", "seed": 5})
    # collect: 6 documents, 1 quarantined
    write_jsonl(run / "collect" / "documents.jsonl", [doc(i) for i in range(6)])
    write_jsonl(run / "collect" / "quarantine.jsonl", [{"step": "mediawiki", "reason": "redirect",
                                                        "document": doc(9)}])
    write_json(run / "collect" / "manifest.json", manifest("collect", {"documents": 6, "sources": {
        "wiki": {"documents": 4, "quarantined": {"redirect": 1}}, "plays": {"documents": 2}}}, 1.5))
    # prepare: 3 train + 1 val, 2 dropped for two reasons
    write_jsonl(run / "prepare" / "train.jsonl", [doc(i) for i in range(3)])
    write_jsonl(run / "prepare" / "val.jsonl", [doc(3)])
    write_jsonl(run / "prepare" / "dropped.jsonl", [
        {"step": "dedup", "reason": "exact_duplicate", "document": doc(4)},
        {"step": "length", "reason": "too_short", "document": doc(5)}])
    write_json(run / "prepare" / "manifest.json", manifest("prepare", {
        "documents_in": 6, "dropped": 2, "splits": {"train": {"documents": 3}, "val": {"documents": 1}},
        "steps": {"length": {"seen": 6, "kept": 5, "changed": 0, "dropped": {"too_short": 1}},
                  "dedup": {"seen": 5, "kept": 4, "changed": 0, "dropped": {"exact_duplicate": 1}}}}, 0.5))
    # synth: 5 + 2 conversations, 1 rejected
    chat = {"id": "c", "task": "qa", "messages": [{"role": "user", "content": "q"}], "source_ids": []}
    write_jsonl(run / "synth" / "train.jsonl", [chat] * 5)
    write_jsonl(run / "synth" / "val.jsonl", [chat] * 2)
    write_jsonl(run / "synth" / "rejected.jsonl", [{"split": "train", "reason": "too_long", "task": "qa"}])
    write_json(run / "synth" / "manifest.json", manifest("synth", {
        "train": {"documents": 3, "drafts": 6, "examples": 5, "rejected": 1, "rejected_by_reason": {"too_long": 1},
                  "accepted_by_task": {"qa": 5}},
        "val": {"documents": 1, "drafts": 2, "examples": 2, "rejected": 0, "rejected_by_reason": {}}}, 0.2))
    # tokenize
    write_json(run / "tokenize" / "meta.json", {"dtype": "uint16", "vocab_size": 512, "eot_id": 0, "splits": {
        "train": {"tokens": 1000, "bytes": 3500, "documents": 3}, "val": {"tokens": 200, "bytes": 720,
                                                                           "documents": 1}}})
    write_json(run / "tokenize" / "manifest.json", manifest("tokenize", {"vocab_size": 512}, 0.3))
    # train: metrics as gristmill.train logs them (train/loss every step, train/val_loss every 2 steps)
    recs = [{"step": s, "time": 0.0, "train/loss": 6.0 - 0.5 * s, "lr_mult": 1.0} for s in range(1, 7)]
    recs += [{"step": s, "time": 0.0, "train/val_loss": 6.2 - 0.5 * s} for s in (2, 4)]
    recs += [{"step": 6, "time": 0.0, "train/val_loss": 3.4, "train/final_val_loss": 3.3, "peak_rss_mb": 100.0}]
    write_jsonl(run / "train" / "metrics.jsonl", recs)
    write_json(run / "train" / "manifest.json", manifest("train", {
        "steps": 6, "max_steps": 10, "stopped_by": "time_budget", "val_loss": 3.3, "val_tokens": 200,
        "curve_val_tokens": 128, "nested": {"deeper": {"value": 1.23456}}, "device": "cpu"}, 12.0))
    # evaluate and finetune eval files
    write_json(run / "evaluate" / "eval.json", {"models": {"train": {
        "loss": 3.4, "perplexity": 29.96, "bits_per_byte": 1.3579, "tokens": 199, "bytes": 720, "capped": False,
        "samples": [{"prompt": "To be", "completion": ", or not | ```code```", "finish_reason": "length"}]}},
        "sampling": {"temperature": 0.8, "top_k": 50}})
    write_json(run / "evaluate" / "manifest.json", manifest("evaluate", {"models": {"train": {
        "bits_per_byte": 1.3579, "loss": 3.4, "tokens": 199, "bytes": 720, "tasks": {}}}}, 2.0))
    write_jsonl(run / "finetune" / "metrics.jsonl", [{"step": 1, "finetune/loss": 2.0},
                                                     {"step": 2, "finetune/loss": 1.5, "finetune/val_loss": 1.7}])
    write_json(run / "finetune" / "eval.json", {
        "base_model": "train/model",
        "chat_val": {"before": {"loss": 2.5, "tokens": 300}, "after": {"loss": 1.7, "tokens": 300},
                     "unit": "nats per assistant token"},
        "lm_val": {"before": {"loss": 3.4, "bits_per_byte": 1.3579}, "after": {"loss": 3.5, "bits_per_byte": 1.4}}})
    write_json(run / "finetune" / "manifest.json", manifest("finetune", {"steps": 2}, 5.0))
    (run / "finetune" / "model").mkdir()
    (run / "finetune" / "model" / "model.safetensors").write_bytes(b"x")
    return run


def test_report_renders_every_section(run_dir: Path):
    ctx = StageContext(run_dir=run_dir, stage="report", seed=5, log=lambda m: None)
    ctx.out_dir.mkdir()
    stats = run_report(ctx, ReportConfig())
    md = (ctx.out_dir / "report.md").read_text()
    assert md.startswith("# Gristmill run: handmade")
    assert "recipe `handmade`" in md and "seed 5" in md
    # data flow with counts and reasons, each stage in its own section
    assert "| wiki | – | – | 4 | – | 1 | redirect (1) |" in md
    assert "6 documents in; kept 3 train, 1 val" in md
    assert "| length | 6 | 5 | 0 | 1 | too_short (1) |" in md and "| dedup | 5 | 4 | 0 | 1 | exact_duplicate (1) |" in md
    assert "| train | 3 | 6 | 5 | 1 | too_long (1) |" in md and "by generator: qa 5" in md
    # tokenizer: bytes per token = 3500 / 1000
    assert "vocabulary 512 tokens" in md and "| train | 3 | 1,000 | 3,500 | 3.5000 |" in md
    # training curve: the SVG is linked and the table lists the evaluation steps
    assert "![Training loss](train_loss.svg)" in md and "![Fine-tuning loss](finetune_loss.svg)" in md
    assert "| 2 | 5.0000 | 5.2000 |" in md and "| 6 | 3.0000 | 3.4000 |" in md
    # the two validation token sets are labelled, and a run the time budget cut short says so
    assert "validation points score the first 128 validation tokens" in md
    assert "loss over the whole split (200 tokens) is 3.3000" in md
    assert "stopped by time_budget at step 6 of 10 (60%: the time budget ended it)" in md
    # evaluation before and after fine-tuning, with the change
    assert "| bits per byte | 1.3579 |" in md
    assert "| chat val: loss (nats/token) | 2.5000 | 1.7000 | -0.8000 |" in md
    assert "| text val: bits per byte | 1.3579 | 1.4000 | 0.0421 |" in md
    # samples: backticks in the text cannot end the code block early
    assert "````text\nTo be, or not | ```code```\n````" in md
    # wall times, serve command and the generic stats of every stage
    assert "| train | done | 2025-01-01T10:00:00+0000 | 12.0 s |" in md
    assert "Total wall time of the stages: 21.5 s." in md
    assert f"gristmill serve {run_dir}" in md and "finetune/model" in md
    assert "| nested.deeper.value | 1.2346 |" in md and "| sources.wiki.quarantined.redirect | 1 |" in md
    # the reading of the figures, with their numbers, and the run's models compared
    assert "- Pre-training: validation loss fell from 5.200 at step 2 to 3.400 at step 6 (-34.6%)." in md
    assert "still falling at the end (4.200 at step 4 -> 3.400 at step 6, -19.0%): train longer" in md
    assert "Fine-tuning raised the text bits per byte from 1.358 to 1.400 (+3.1%)" in md
    assert "| chat val loss (nats/assistant token) | 1.7000 |" in md.split("## Models")[1]
    assert stats["charts"] == ["finetune_loss.svg", "train_loss.svg"]
    assert stats["stages_reported"] == ["collect", "prepare", "synth", "tokenize", "train", "finetune", "evaluate"]
    for name in stats["charts"]:
        root = ET.fromstring((ctx.out_dir / name).read_text())  # well-formed XML
        assert root.tag.endswith("svg") and len(root.findall("{http://www.w3.org/2000/svg}polyline")) == 2


def test_report_survives_missing_stages_and_files(tmp_path: Path):
    run = tmp_path / "partial"
    write_json(run / "collect" / "manifest.json", manifest("collect", {}, 1.0))
    (run / "train").mkdir(parents=True)
    (run / "train" / "metrics.jsonl").write_text('{"step": 1, "train/loss": 5.0}\nnot json\n')
    md, charts = build_report(run, ReportConfig(title="Partial"))
    assert md.startswith("# Partial")
    assert "| prepare | not run |" in md and "| finetune | not run |" in md
    assert list(charts) == ["train_loss.svg"]
    assert "## Evaluate" not in md and "## Fine-tuning" not in md


def test_curve_reading_keeps_the_latest_record_per_step(tmp_path: Path):
    p = tmp_path / "metrics.jsonl"
    lines = [{"step": 1, "train/loss": 5.0}, {"step": 2, "train/loss": 4.0},
             {"step": 2, "train/loss": 4.5}, {"step": 2, "train/val_loss": 4.8}, {"step": "x", "train/loss": 1}]
    p.write_text("".join(json.dumps(r) + "\n" for r in lines))
    train, val = read_curve(p, "train")
    assert train == {1: 5.0, 2: 4.5} and val == {2: 4.8}
    # only one evaluation: the table follows the logged steps
    assert curve_table(train, val, 5).splitlines()[2:] == ["| 1 | 5.0000 | – |", "| 2 | 4.5000 | 4.8000 |"]
    many = {s: 10.0 / s for s in range(1, 101)}
    rows = curve_table(many, {}, 5).splitlines()[2:]
    assert len(rows) == 5 and rows[0].startswith("| 1 |") and rows[-1].startswith("| 100 |")


def test_svg_and_helpers():
    assert nice_ticks(0, 97) == [0, 25, 50, 75, 100]
    assert nice_ticks(2.13, 5.9)[0] <= 2.13 and nice_ticks(2.13, 5.9)[-1] >= 5.9
    svg = loss_svg({"train": {0: 1.0}, "val": {}}, "a <title> & more")
    ET.fromstring(svg)
    assert "&lt;title&gt; &amp;" in svg
    assert flatten({"a": {"b": {"c": 1}, "d": []}, "e": 2}) == {"a.b.c": 1, "a.d": [], "e": 2}
