"""finetune: a tiny model fine-tuned for a few steps on synth data made from real text."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gristmill.core.jsonl import write_jsonl
from gristmill.core.paths import expand
from gristmill.core.workspace import StageContext, write_json
from gristmill.errors import InputError
from gristmill.formats.chat import encode_chat
from gristmill.formats.document import Document, Provenance
from gristmill.formats.vocab import IGNORE_INDEX, PAD_ID
from gristmill.model.config import ModelConfig
from gristmill.model.gpt import GPT
from gristmill.model.io import load_model, save_model
from gristmill.stages.finetune import run as run_finetune
from gristmill.stages.synth import run as run_synth
from gristmill.stages.tokenize import run as run_tokenize
from gristmill.synth.config import SynthConfig
from gristmill.tokenizer.bpe import load_tokenizer
from gristmill.tokenizer.config import TokenizeConfig
from gristmill.train.batches import ChatBatches
from gristmill.train.config import FinetuneConfig
from gristmill.train.sft import encode_examples, read_chat_records

BLOCK = 96


def _stage(run_dir: Path, name: str) -> StageContext:
    ctx = StageContext(run_dir=run_dir, stage=name, seed=1, fingerprint=f"test-{name}", log=lambda m: None)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    return ctx


def _done(ctx: StageContext) -> None:
    write_json(ctx.out_dir / "manifest.json", {"stage": ctx.stage})


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """prepare (real plays, cut into scenes-sized documents), synth, tokenize and an untrained tiny model."""
    run = tmp_path_factory.mktemp("run")
    docs = []
    for k, name in enumerate(("coriolanus_gut.txt", "macbeth_gut.txt")):
        p = expand(f"pkg://shksprdata/texts/{name}")[0]
        text = p.read_text(encoding="utf-8")[:40_000]
        docs += [
            Document(
                id=f"{k}-{i}",
                text=text[i : i + 8000],
                source="shakespeare",
                provenance=Provenance(uri=str(p), reader="files", title=p.stem),
            )
            for i in range(0, len(text), 8000)
        ]
    prep = _stage(run, "prepare")
    write_jsonl(prep.out_dir / "train.jsonl", docs[:-3])
    write_jsonl(prep.out_dir / "val.jsonl", docs[-3:])
    _done(prep)
    synth = _stage(run, "synth")
    run_synth(synth, SynthConfig.model_validate({"generators": [
        {"type": "continue", "min_passage_chars": 80, "max_passage_chars": 200, "continue_chars": 100},
        {"type": "qa"}, {"type": "source", "min_passage_chars": 80, "max_passage_chars": 200}, {"type": "speaker"}]}))
    _done(synth)
    tok = _stage(run, "tokenize")
    run_tokenize(tok, TokenizeConfig(vocab_size=512))
    _done(tok)
    train = _stage(run, "train")
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=512, block_size=BLOCK, n_layer=2, n_head=2, n_embd=64))
    save_model(train.out_dir / "model", model, tok.out_dir / "tokenizer.json")
    _done(train)
    return run


def fresh_run(upstream: Path, dest: Path) -> Path:
    shutil.copytree(upstream, dest, ignore=shutil.ignore_patterns("finetune"))
    return dest


def cfg(**kw) -> FinetuneConfig:
    base = dict(
        max_steps=12,
        batch_size=8,
        lr=3e-3,
        warmup_steps=2,
        eval_every=0,
        checkpoint_every=0,
        log_every=4,
        progress=False,
        device="cpu",
        lm_eval_tokens=2048,
    )
    return FinetuneConfig(**{**base, **kw})


def test_finetune_lowers_chat_loss_and_writes_a_model_dir(upstream: Path, tmp_path: Path) -> None:
    run = fresh_run(upstream, tmp_path / "run")
    ctx = _stage(run, "finetune")
    stats = run_finetune(ctx, cfg())
    out = ctx.out_dir
    ev = json.loads((out / "eval.json").read_text())
    assert stats["steps"] == 12 and stats["stopped_by"] == "max_steps"
    assert stats["lm_val_bpb_after"] == round(ev["lm_val"]["after"]["bits_per_byte"], 5)
    assert ev["chat_val"]["after"]["loss"] < ev["chat_val"]["before"]["loss"] - 0.5
    assert ev["chat_val"]["before"]["tokens"] == ev["chat_val"]["after"]["tokens"] > 0
    lm = ev["lm_val"]
    assert lm["before"]["tokens"] == lm["after"]["tokens"] == 2048  # every one of lm_eval_tokens is predicted
    assert (
        0 < lm["after"]["bits_per_byte"] < lm["before"]["bits_per_byte"]
    )  # an untrained model learns text too
    model = load_model(out / "model")
    assert model.config.block_size == BLOCK
    assert load_tokenizer(out / "model").get_vocab_size() == 512
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "finetune/loss" in r] == [4, 8, 12]
    assert (out / "checkpoints" / "step_000012").is_dir()


def test_resume_after_a_crash_gives_the_same_model(upstream: Path, tmp_path: Path) -> None:
    run = fresh_run(upstream, tmp_path / "run")
    ctx = _stage(run, "finetune")
    c = cfg(max_steps=8, checkpoint_every=4, lm_eval_tokens=0)
    first = run_finetune(ctx, c)
    assert first["resumed_from_step"] is None
    done = load_model(ctx.out_dir / "model").state_dict()
    # a crash after the step-4 checkpoint: the final checkpoint and outputs never got written
    shutil.rmtree(ctx.out_dir / "checkpoints" / "step_000008")
    shutil.rmtree(ctx.out_dir / "model")
    (ctx.out_dir / "eval.json").unlink()
    second = run_finetune(ctx, c)
    assert second["resumed_from_step"] == 4 and second["steps"] == 8
    assert second["chat_val_loss_before"] == first["chat_val_loss_before"]
    again = load_model(ctx.out_dir / "model").state_dict()
    assert all(torch.equal(done[k], again[k]) for k in done)
    assert json.loads((ctx.out_dir / "eval.json").read_text())["lm_val"] is None
    assert "lm_val_bpb_after" not in second  # skipped, not reported as None


def test_examples_mask_truncate_and_pad(upstream: Path) -> None:
    tok = load_tokenizer(upstream / "train" / "model")
    records = list(read_chat_records(upstream / "synth" / "train.jsonl"))
    ex = encode_examples(tok, records, BLOCK)
    full = [encode_chat(tok, r["messages"]) for r in records]
    assert ex.truncated == sum(len(ids) > BLOCK + 1 for ids, _ in full) > 0
    assert len(ex) + ex.dropped == len(records)
    assert all(len(i) <= BLOCK + 1 for i in ex.ids)
    # untruncated examples keep their exact labels
    short = [(ids, lab) for ids, lab in full if len(ids) <= BLOCK + 1]
    assert any(np.array_equal(ex.labels[k], np.asarray(short[0][1])) for k in range(len(ex)))

    batches = ChatBatches(ex, batch_size=4, seed=3)
    x, y = batches.next_batch()
    assert x.shape == y.shape and x.shape[1] <= BLOCK
    pad = x == PAD_ID
    assert (y[pad] == IGNORE_INDEX).all()  # padding carries no loss
    assert ((y != IGNORE_INDEX).sum(1) > 0).all()  # every row has assistant targets
    x2, _ = batches.next_batch()
    again = ChatBatches(ex, batch_size=4, seed=3)
    again.load_state_dict({"step": 1})
    assert torch.equal(again.next_batch()[0], x2)  # the step alone fixes the data


def test_missing_val_conversations_is_an_input_error(upstream: Path, tmp_path: Path) -> None:
    run = fresh_run(upstream, tmp_path / "run")
    (run / "synth" / "val.jsonl").write_text("")
    with pytest.raises(InputError, match="val.jsonl has no usable conversations"):
        run_finetune(_stage(run, "finetune"), cfg())


def test_bad_chat_record_names_the_line(upstream: Path, tmp_path: Path) -> None:
    run = fresh_run(upstream, tmp_path / "run")
    bad = {"id": "x", "task": "qa", "messages": [{"role": "robot", "content": "hi"}], "source_ids": []}
    (run / "synth" / "val.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(InputError, match=r"val.jsonl:1: message 0 has role 'robot'"):
        run_finetune(_stage(run, "finetune"), cfg())
