"""evaluate: every validation token predicted once, consistent loss / perplexity / bits per byte, the stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support import tiny_text

from gristmill.core.workspace import StageContext, write_json
from gristmill.errors import InputError
from gristmill.eval.config import EvaluateConfig
from gristmill.eval.lm import evaluate_lm
from gristmill.formats.vocab import EOT_ID
from gristmill.model.io import load_for_inference
from gristmill.stages.evaluate import run as run_evaluate


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path):
    return load_for_inference(tiny_model_dir, "cpu")


def val_tokens(tok) -> tuple[np.ndarray, int]:
    """Three 'documents' of real text, each followed by <|endoftext|>, as the tokenize stage writes them."""
    text = tiny_text()
    docs = [text[1000:1900], text[5000:6300], text[8000:8450]]
    ids: list[int] = []
    for d in docs:
        ids += tok.encode(d).ids + [EOT_ID]
    return np.array(ids, dtype=np.uint16), sum(len(d.encode()) for d in docs)


def reference_nats(model, tokens: np.ndarray) -> float:
    """Sum of -log p(token) over every token (the first in the context of <|endoftext|>), one forward pass
    per window of block_size, computed independently."""
    T = model.config.block_size
    t = torch.from_numpy(np.concatenate([[EOT_ID], tokens]).astype(np.int64))
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(t) - 1, T):
            x, y = t[s:s + T], t[s + 1:s + T + 1]
            x = x[:len(y)]
            logits, _ = model(x[None])
            total += float(F.cross_entropy(logits[0], y, reduction="sum"))
    return total


def test_evaluate_lm_covers_every_token_and_numbers_agree(loaded):
    model, tok = loaded
    tokens, n_bytes = val_tokens(tok)
    assert len(tokens) % model.config.block_size != 0  # a short last window is exercised
    m = evaluate_lm(model, tokens, n_bytes, batch_size=3, device="cpu")
    assert m["tokens"] == len(tokens)
    total = m["loss"] * m["tokens"]
    assert total == pytest.approx(reference_nats(model, tokens), rel=1e-5)
    assert m["bits_per_byte"] == pytest.approx(total / (n_bytes * math.log(2)), rel=1e-9)
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]), rel=1e-9)
    # a briefly trained model beats a uniform guess over the vocabulary
    assert m["loss"] < math.log(model.config.vocab_size)
    # the batch size changes nothing but speed
    m1 = evaluate_lm(model, tokens, n_bytes, batch_size=1, device="cpu")
    assert m1["loss"] == pytest.approx(m["loss"], rel=1e-5)


def test_evaluate_lm_restores_training_mode_and_rejects_tiny_input(loaded):
    model, tok = loaded
    tokens, n_bytes = val_tokens(tok)
    model.train()
    evaluate_lm(model, tokens[:50], n_bytes, batch_size=4)
    assert model.training
    model.eval()
    with pytest.raises(InputError, match="at least 1 token"):
        evaluate_lm(model, tokens[:0], n_bytes)


def make_run(tmp_path: Path, model_dir: Path, tok) -> Path:
    """A run dir with the train and tokenize outputs the evaluate stage reads (as those stages write them)."""
    run = tmp_path / "run"
    (run / "train").mkdir(parents=True)
    (run / "train" / "model").symlink_to(model_dir, target_is_directory=True)
    write_json(run / "train" / "manifest.json", {"stage": "train"})
    tokens, n_bytes = val_tokens(tok)
    (run / "tokenize").mkdir()
    tokens.astype("<u2").tofile(run / "tokenize" / "val.bin")
    write_json(run / "tokenize" / "meta.json", {
        "dtype": "uint16", "vocab_size": tok.get_vocab_size(), "eot_id": EOT_ID,
        "splits": {"train": {"tokens": 0, "bytes": 0, "documents": 0},
                   "val": {"tokens": len(tokens), "bytes": n_bytes, "documents": 3}}})
    write_json(run / "tokenize" / "manifest.json", {"stage": "tokenize"})
    return run


def test_run_evaluate_writes_eval_json_with_samples(tmp_path: Path, tiny_model_dir: Path, loaded):
    model, tok = loaded
    run = make_run(tmp_path, tiny_model_dir, tok)
    cfg = EvaluateConfig(prompts=["HAMLET.\n", "To be"], max_new_tokens=12, temperature=0.8, device="cpu")
    ctx = StageContext(run_dir=run, stage="evaluate", seed=3, log=lambda m: None)
    ctx.out_dir.mkdir()
    stats = run_evaluate(ctx, cfg)
    ev = json.loads((ctx.out_dir / "eval.json").read_text())
    tokens, n_bytes = val_tokens(tok)
    direct = evaluate_lm(model, tokens, n_bytes)
    assert stats["loss"] == pytest.approx(direct["loss"]) and ev["bits_per_byte"] == stats["bits_per_byte"]
    assert ev["tokens"] == len(tokens) and ev["bytes"] == n_bytes and not ev["capped"]
    assert ev["computed_by"] == "evaluate stage"
    assert [s["prompt"] for s in ev["samples"]] == cfg.prompts
    assert all(0 < s["completion_tokens"] <= 12 for s in ev["samples"])
    # the same seed gives the same samples
    again = run_evaluate(ctx, cfg)
    assert json.loads((ctx.out_dir / "eval.json").read_text())["samples"] == ev["samples"]
    assert again["loss"] == stats["loss"]

    # a token cap evaluates a prefix, with the byte count of exactly that text
    capped = run_evaluate(ctx, cfg.model_copy(update={"max_tokens": 100, "prompts": []}))
    assert capped["tokens"] == 100 and capped["capped"]
    assert capped["bytes"] == len(tok.decode(tokens[:100].tolist()).encode())


def test_run_evaluate_reuses_the_train_stage_whole_split_figures(tmp_path: Path, tiny_model_dir: Path, loaded):
    """The whole split is scored once, by training's final evaluation; evaluate reports those numbers."""
    _, tok = loaded
    run = make_run(tmp_path, tiny_model_dir, tok)
    tokens, n_bytes = val_tokens(tok)
    write_json(run / "train" / "manifest.json", {"stage": "train", "stats": {
        "val_tokens": len(tokens), "val_loss": 2.5, "val_perplexity": 12.18, "val_bits_per_byte": 1.75}})
    ctx = StageContext(run_dir=run, stage="evaluate", seed=3, log=lambda m: None)
    ctx.out_dir.mkdir()
    stats = run_evaluate(ctx, EvaluateConfig(prompts=[], device="cpu"))
    assert (stats["loss"], stats["bits_per_byte"], stats["tokens"]) == (2.5, 1.75, len(tokens))
    assert json.loads((ctx.out_dir / "eval.json").read_text())["computed_by"] == "train stage's final evaluation"


def test_run_evaluate_names_the_missing_split(tmp_path: Path, tiny_model_dir: Path, loaded):
    _, tok = loaded
    run = make_run(tmp_path, tiny_model_dir, tok)
    (run / "tokenize" / "val.bin").unlink()
    ctx = StageContext(run_dir=run, stage="evaluate", seed=3, log=lambda m: None)
    with pytest.raises(InputError, match="val"):
        run_evaluate(ctx, EvaluateConfig(device="cpu"))
