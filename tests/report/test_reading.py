"""The reading of a run's figures: each rule fires on the numbers it names, and says them."""

from __future__ import annotations

from pathlib import Path

from gristmill.core.jsonl import write_jsonl
from gristmill.core.workspace import write_json
from gristmill.report.reading import read_run
from gristmill.report.runfiles import funnel, prepare_steps


def curve(run: Path, stage: str, train: dict[int, float], val: dict[int, float]) -> None:
    write_jsonl(run / stage / "metrics.jsonl", [{"step": s, f"{stage}/loss": v} for s, v in train.items()]
                + [{"step": s, f"{stage}/val_loss": v} for s, v in val.items()])


def test_rising_validation_loss_while_training_loss_falls_is_overfitting(tmp_path: Path):
    curve(tmp_path, "train", {10: 4.0, 20: 3.0, 30: 2.0, 40: 1.5}, {10: 4.1, 20: 3.5, 30: 3.7, 40: 4.0})
    manifests = {"train": {"config": {"max_steps": 40, "weight_decay": 0.0, "model": {"dropout": 0.0}}, "stats": {}}}
    found = read_run(tmp_path, manifests)
    texts = [(f.kind, f.text) for f in found]
    assert ("worse", "Pre-training: validation loss rose from its best 3.500 at step 20 to 4.000 at step 40 "
                     "(+14.3%) while the training loss fell from 3.000 to 1.500: overfitting.") in texts
    assert ("try", "Pre-training overfits after step 20: add regularisation (train.model.dropout (now 0.0) or "
                   "train.weight_decay (now 0.0)), more data, or stop near step 20 (train.max_steps).") in texts
    assert not any("still falling" in t for _, t in texts)
    assert [f.kind for f in found] == sorted((f.kind for f in found), key=["improved", "worse", "try"].index)


def test_a_flat_curve_and_clean_data_give_no_advice(tmp_path: Path):
    curve(tmp_path, "train", {10: 3.0, 20: 3.0}, {10: 3.2, 20: 3.199})
    manifests = {"train": {"stats": {"stopped_by": "max_steps"}},
                 "collect": {"stats": {"documents": 10, "characters": 100, "sources": {"a": {"quarantined": {}}}}}}
    assert read_run(tmp_path, manifests) == []


def test_set_aside_shares_name_the_file_to_inspect(tmp_path: Path):
    manifests = {
        "collect": {"stats": {"documents": 7, "characters": 700, "quarantined": 3,
                              "sources": {"w": {"quarantined": {"redirect": 2, "unreadable": 1}}}}},
        "prepare": {"config": {"steps": [{"type": "length"}, {"type": "dedup"}]}, "stats": {"documents_in": 7, "steps": {
            "dedup": {"seen": 6, "kept": 3, "dropped": {"exact_duplicate": 3}},
            "length": {"seen": 7, "kept": 6, "dropped": {"too_short": 1}},
            "split": {"seen": 3, "kept": 3, "dropped": {}}}}},
        "synth": {"stats": {"train": {"drafts": 10, "rejected": 1}}},
    }
    assert [n for n, _ in prepare_steps(manifests["prepare"])] == ["length", "dedup", "split"]
    assert [(s.name, s.documents_in, s.documents_out) for s in funnel(manifests)] == [
        ("collect", 10, 7), ("length", 7, 6), ("dedup", 6, 3), ("split", 3, 3)]
    texts = [f.text for f in read_run(tmp_path, manifests)]
    assert texts == [
        f"3 of 10 records collect read were quarantined (30%: redirect 2, unreadable 1): inspect "
        f"{tmp_path / 'collect/quarantine'} to check that is intended.",
        f"3 of 6 documents were dropped by prepare's dedup step (50%: exact_duplicate 3): inspect "
        f"{tmp_path / 'prepare/dropped'} to check that is intended."]


def test_fine_tuning_that_costs_text_modelling_suggests_lora_when_it_is_off(tmp_path: Path):
    write_json(tmp_path / "finetune" / "eval.json", {
        "chat_val": {"before": {"loss": 2.0, "tokens": 50}, "after": {"loss": 2.1, "tokens": 50}},
        "lm_val": {"before": {"bits_per_byte": 1.0}, "after": {"bits_per_byte": 1.2, "tokens": 900}}})
    manifests = {"finetune": {"config": {"lr": 0.001, "max_steps": 100, "lora": {"enabled": False}},
                              "stats": {"train_examples": 90, "val_examples": 10, "truncated": 20}}}
    texts = {(f.kind, f.text) for f in read_run(tmp_path, manifests)}
    assert texts == {
        ("worse", "Fine-tuning raised the chat loss on held-out conversations from 2.000 to 2.100 nats per "
                  "assistant token (+5.0%, 50 tokens)."),
        ("try", "Fine-tuning made the chat loss worse (+5.0%): look at the training conversations "
                "(synth/train.jsonl) and lower finetune.lr (now 0.001)."),
        ("worse", "Fine-tuning raised the text bits per byte from 1.000 to 1.200 (+20.0%) on 900 validation "
                  "tokens: it cost general text modelling."),
        ("try", "To keep more of the base model's text modelling (bits per byte +20.0% after fine-tuning): lower "
                "finetune.lr (now 0.001), fewer finetune.max_steps (now 100) or LoRA adapters "
                "(finetune.lora.enabled: true)."),
        ("try", "20 of 100 fine-tuning conversations (20%) were longer than the model's context and were cut: use "
                "a longer context (train.model.block_size) or shorter conversations (synth's length limits)."),
    }
