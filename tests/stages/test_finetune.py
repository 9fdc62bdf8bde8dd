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
    with pytest.raises(InputError, match="no validation conversations to measure fine-tuning"):
        run_finetune(_stage(run, "finetune"), cfg())


def test_bad_chat_record_names_the_line(upstream: Path, tmp_path: Path) -> None:
    run = fresh_run(upstream, tmp_path / "run")
    bad = {"id": "x", "task": "qa", "messages": [{"role": "robot", "content": "hi"}], "source_ids": []}
    (run / "synth" / "val.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(InputError, match=r"val.jsonl:1: message 0 has role 'robot'"):
        run_finetune(_stage(run, "finetune"), cfg())


def _checkpoint_keys(step_dir: Path) -> set[str]:
    from safetensors import safe_open

    from gristmill.train.checkpoint import MODEL_FILE

    with safe_open(str(step_dir / MODEL_FILE), "pt") as f:
        return set(f.keys())


def test_lora_trains_adapters_only_and_merges_into_the_base(upstream: Path, tmp_path: Path) -> None:
    from gristmill.model.lora import load_adapter, merge_lora

    run = fresh_run(upstream, tmp_path / "run")
    ctx = _stage(run, "finetune")
    stats = run_finetune(ctx, cfg(lora={"enabled": True, "rank": 4, "alpha": 8}, lr=2e-2, lm_eval_tokens=0))
    assert stats["lora"]["layers"] == 2 * 7 and stats["lora"]["merged"] is True
    assert stats["chat_val_loss_after"] < stats["chat_val_loss_before"] - 0.05
    # checkpoints hold the adapters only: the frozen base is re-read from its model directory
    keys = _checkpoint_keys(ctx.out_dir / "checkpoints" / "step_000012")
    assert keys and all(k.endswith((".lora_a", ".lora_b")) for k in keys)
    assert sum(1 for _ in keys) == 2 * 7 * 2
    # model/ is the base with the saved adapter folded in
    base = load_model(run / "train" / "model")
    load_adapter(base, ctx.out_dir / "adapter")
    merge_lora(base)
    merged = load_model(ctx.out_dir / "model").state_dict()
    assert set(merged) == set(base.state_dict())
    assert all(torch.allclose(merged[k], v, atol=1e-6) for k, v in base.state_dict().items())
    # frozen weights kept their values: the embedding is not a LoRA target
    assert torch.equal(merged["tok_emb.weight"], load_model(run / "train" / "model").state_dict()["tok_emb.weight"])


def test_unmerged_lora_resumes_and_loads_as_base_plus_adapter(upstream: Path, tmp_path: Path) -> None:
    run = fresh_run(upstream, tmp_path / "run")
    ctx = _stage(run, "finetune")
    c = cfg(max_steps=8, checkpoint_every=4, lm_eval_tokens=0, lr=1e-2,
            lora={"enabled": True, "rank": 4, "target_modules": ["wq", "wv"], "merge": False})
    first = run_finetune(ctx, c)
    model_dir = ctx.out_dir / "model"
    assert (model_dir / "adapter.safetensors").is_file() and not (model_dir / "model.safetensors").exists()
    done = load_model(model_dir).state_dict()  # base + adapter, merged on load
    live = load_model(model_dir, merge=False)  # adapters kept as layers
    assert sum(k.endswith("lora_a") for k in live.state_dict()) == 2 * 2
    x = torch.randint(0, 512, (2, 16))
    merged = load_model(model_dir)
    assert torch.allclose(live(x)[0], merged(x)[0], atol=1e-5)
    shutil.rmtree(ctx.out_dir / "checkpoints" / "step_000008")
    shutil.rmtree(model_dir)
    second = run_finetune(ctx, c)
    assert second["resumed_from_step"] == 4 and second["steps"] == 8
    again = load_model(model_dir).state_dict()
    assert all(torch.equal(done[k], again[k]) for k in done)
    assert first["chat_val_loss_after"] == second["chat_val_loss_after"]


def test_lora_with_muon_is_refused() -> None:
    with pytest.raises(ValueError, match="lora.enabled needs optimizer: adamw"):
        cfg(lora={"enabled": True}, optimizer="muon")


def _user_chats(n: int) -> list[dict]:
    topics = ["the tides", "bread", "Hamlet", "rivers", "owls", "clocks", "snow", "bees"]
    return [{"messages": [{"role": "user", "content": f"Tell me one thing about {topics[i % 8]} ({i})."},
                          {"role": "assistant", "content": f"Number {i}: {topics[i % 8]} are worth a look."}]}
            for i in range(n)]


def test_user_chat_files_alone_with_bad_lines_quarantined(upstream: Path, tmp_path: Path) -> None:
    run = fresh_run(upstream, tmp_path / "run")
    shutil.rmtree(run / "synth")  # not needed: synthetic is off
    chats = tmp_path / "chats.jsonl"
    lines = [json.dumps(r) for r in _user_chats(40)]
    lines.insert(3, "{not json")
    lines.insert(7, json.dumps({"messages": [{"role": "robot", "content": "beep"}]}))
    lines.insert(9, json.dumps({"messages": [{"role": "user", "content": "no answer"}]}))
    chats.write_text("\n".join(lines) + "\n")
    ctx = _stage(run, "finetune")
    c = cfg(synthetic=False, chat_files=[str(chats)], chat_val_fraction=0.2, lm_eval_tokens=0)
    stats = run_finetune(ctx, c)
    d = stats["data"]["chat_files"]
    assert d["quarantined"] == 3 and d["train"] + d["val"] == 40 and d["val"] > 0
    assert "synthetic" not in stats["data"]
    q = [json.loads(line) for line in (ctx.out_dir / "quarantine.jsonl").read_text().splitlines()]
    assert [r["document"]["where"].rsplit(":", 1)[1] for r in q] == ["4", "8", "10"]
    assert "not valid JSON" in q[0]["reason"] and "robot" in q[1]["reason"] and "no assistant" in q[2]["reason"]
    assert stats["chat_val_loss_after"] < stats["chat_val_loss_before"]


def test_user_chat_files_mixed_with_synthetic_and_packed(upstream: Path, tmp_path: Path) -> None:
    run = fresh_run(upstream, tmp_path / "run")
    chats = tmp_path / "chats.jsonl"
    write_jsonl(chats, _user_chats(30))
    n_synth = sum(1 for _ in read_chat_records(run / "synth" / "train.jsonl"))
    ctx = _stage(run, "finetune")
    stats = run_finetune(ctx, cfg(chat_files=[str(chats)], packing=True, lm_eval_tokens=0))
    assert stats["data"]["synthetic"]["train"] == n_synth
    assert stats["train_examples"] + stats["dropped"] >= n_synth + stats["data"]["chat_files"]["train"] - 1
    packing = stats["packing"]
    # the short user chats share rows: fewer rows than conversations, most positions real tokens
    assert packing["rows"] < stats["train_examples"] and packing["fill"] > 0.7 and packing["seq_len"] == BLOCK
    assert stats["chat_val_loss_after"] < stats["chat_val_loss_before"] - 0.3
