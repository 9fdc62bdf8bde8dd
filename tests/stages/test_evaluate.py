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


def val_docs() -> list[str]:
    """Four documents of real text (prepare's validation split in the stage tests)."""
    text = tiny_text()
    return [text[1000:1900], text[5000:6300], text[8000:8450], text[9000:9700]]


def val_tokens(tok) -> tuple[np.ndarray, int]:
    """The documents' tokens, each followed by <|endoftext|>, as the tokenize stage writes them."""
    docs = val_docs()
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


def make_run(tmp_path: Path, model_dir: Path, *, base: bool = False) -> Path:
    """A run dir with prepare's validation documents and the model(s) evaluate scores, as stages write them."""
    from gristmill.core.jsonl import write_jsonl
    from gristmill.formats.document import Document, Provenance

    run = tmp_path / "run"
    for stage in ("train", "base") if base else ("train",):
        (run / stage).mkdir(parents=True)
        (run / stage / "model").symlink_to(model_dir, target_is_directory=True)
        write_json(run / stage / "manifest.json", {"stage": stage})
    docs = [Document(id=f"d{i}", text=t, source="hamlet", provenance=Provenance(uri="hamlet", reader="files"))
            for i, t in enumerate(val_docs())]
    (run / "prepare").mkdir()
    write_jsonl(run / "prepare" / "val.jsonl", docs)
    write_json(run / "prepare" / "manifest.json", {"stage": "prepare"})
    return run


def _ctx(run: Path) -> StageContext:
    ctx = StageContext(run_dir=run, stage="evaluate", seed=3, log=lambda m: None)
    ctx.out_dir.mkdir(exist_ok=True)
    return ctx


def test_run_evaluate_scores_the_model_on_text_tasks_and_prompts(tmp_path: Path, tiny_model_dir: Path, loaded):
    model, tok = loaded
    run = make_run(tmp_path, tiny_model_dir)
    cfg = EvaluateConfig(prompts=["HAMLET.\n", "To be"], max_new_tokens=12, temperature=0.8, device="cpu",
                         task_items=20)
    ctx = _ctx(run)
    stats = run_evaluate(ctx, cfg)
    ev = json.loads((ctx.out_dir / "eval.json").read_text())
    assert list(ev["models"]) == ["train"]
    r = ev["models"]["train"]
    tokens, n_bytes = val_tokens(tok)
    direct = evaluate_lm(model, tokens, n_bytes)
    assert r["loss"] == pytest.approx(direct["loss"]) and stats["models"]["train"]["bits_per_byte"] == round(
        r["bits_per_byte"], 5)
    assert r["tokens"] == len(tokens) and r["bytes"] == n_bytes and r["documents"] == 4 and not r["capped"]
    assert [s["prompt"] for s in r["samples"]] == cfg.prompts
    assert all(0 < s["completion_tokens"] <= 12 for s in r["samples"])
    assert [a["prompt"] for a in r["chat_answers"]] == cfg.chat_prompts
    # the built-in tasks were written in lm-eval's format and scored, with per-item logs
    assert set(r["tasks"]) == {"gristmill_cloze", "gristmill_continuation"}
    cont = r["tasks"]["gristmill_continuation"]
    assert 0 < cont["items"] <= 20 and 0 <= cont["metrics"]["acc"]["value"] <= 1
    assert (ctx.out_dir / "tasks" / "gristmill_continuation.yaml").is_file()
    logs = (ctx.out_dir / "samples" / "train" / "gristmill_continuation.jsonl").read_text().splitlines()
    assert len(logs) == cont["items"]
    # the same seed gives the same samples and scores
    run_evaluate(ctx, cfg)
    again = json.loads((ctx.out_dir / "eval.json").read_text())["models"]["train"]
    assert again["samples"] == r["samples"] and again["tasks"]["gristmill_cloze"]["metrics"] == \
        r["tasks"]["gristmill_cloze"]["metrics"]

    # a character cap scores a prefix of the text, with the byte count of exactly that text
    capped = run_evaluate(ctx, cfg.model_copy(update={"max_chars": 1000, "prompts": [], "builtin_tasks": []}))
    text = "".join(val_docs())[:1000]
    assert capped["models"]["train"]["bytes"] == len(text.encode())
    assert capped["models"]["train"]["tokens"] < len(tokens)


def test_every_model_scores_on_the_same_text_and_items(tmp_path: Path, tiny_model_dir: Path):
    run = make_run(tmp_path, tiny_model_dir, base=True)
    heldout = tmp_path / "extra.txt"
    heldout.write_text(tiny_text()[3000:4000])
    task_dir = tmp_path / "mytasks"
    task_dir.mkdir()
    (task_dir / "yes_no.jsonl").write_text("".join(
        json.dumps({"q": f"Is {w} a word?", "label": i % 2}) + "\n" for i, w in enumerate(["king", "queen", "sword"])))
    (task_dir / "yes_no.yaml").write_text(
        "task: yes_no\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: yes_no.jsonl\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: ['no', 'yes']\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n")
    ctx = _ctx(run)
    cfg = EvaluateConfig(max_new_tokens=0, device="cpu", task_items=10, heldout_files=[str(heldout)],
                         tasks=[str(task_dir)])
    run_evaluate(ctx, cfg)
    ev = json.loads((ctx.out_dir / "eval.json").read_text())["models"]
    assert set(ev) == {"train", "base"}
    # the same weights (base is a copy of train here) give the same figures on the same text and items
    assert ev["train"]["loss"] == ev["base"]["loss"]
    assert ev["train"]["heldout"][str(heldout)]["loss"] == ev["base"]["heldout"][str(heldout)]["loss"]
    assert ev["train"]["tasks"]["yes_no"]["items"] == 3
    assert ev["train"]["tasks"]["yes_no"]["metrics"] == ev["base"]["tasks"]["yes_no"]["metrics"]
    only = run_evaluate(ctx, cfg.model_copy(update={"models": ["base"], "tasks": [], "heldout_files": []}))
    assert list(only["models"]) == ["base"]


def test_run_evaluate_names_the_missing_split_and_tasks(tmp_path: Path, tiny_model_dir: Path):
    run = make_run(tmp_path, tiny_model_dir)
    (run / "prepare" / "val.jsonl").unlink()
    with pytest.raises(InputError, match="val.jsonl"):
        run_evaluate(_ctx(run), EvaluateConfig(device="cpu"))
    run = make_run(tmp_path / "b", tiny_model_dir)
    with pytest.raises(InputError, match="evaluate.tasks: /nowhere does not exist"):
        run_evaluate(_ctx(run), EvaluateConfig(device="cpu", tasks=["/nowhere"]))
