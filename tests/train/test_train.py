"""The train stage and its pieces, on tiny models and token files made in tmp_path."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from support import TINY_MODEL, make_tokenize_dir  # noqa: E402

from gristmill.core.workspace import StageContext, write_json
from gristmill.errors import InputError
from gristmill.eval.lm import eval_windows
from gristmill.model.config import ModelConfig
from gristmill.model.gpt import GPT
from gristmill.model.io import load_model
from gristmill.runtime import setup_runtime
from gristmill.stages.train import run as run_train
from gristmill.train.batches import RandomWindows
from gristmill.train.checkpoint import latest_checkpoint, read_checkpoint, write_checkpoint
from gristmill.train.config import OptimConfig, TrainConfig
from gristmill.train.loop import train_step
from gristmill.train.optim import Muon, build_optimizer, lr_multiplier, orthogonalize


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(max_steps=20, batch_size=4, warmup_steps=2, eval_every=10, checkpoint_every=10, eval_tokens=512,
                progress=False, log_every=5, threads=1, model=TINY_MODEL)
    base.update(kw)
    return TrainConfig.model_validate(base)


def ctx_for(run_dir: Path, fingerprint: str = "fp") -> StageContext:
    (Path(run_dir) / "train").mkdir(parents=True, exist_ok=True)
    return StageContext(run_dir=Path(run_dir), stage="train", seed=7, fingerprint=fingerprint, log=lambda m: None)


@pytest.fixture(scope="module")
def token_run(tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("run")
    return run, make_tokenize_dir(run)


def fresh_run(tmp_path: Path, token_run) -> Path:
    """A run dir sharing the module's tokenize output (copied, so each test has its own train/)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(token_run[0] / "tokenize", run / "tokenize")
    return run


# ---------------------------------------------------------------------------------------------- schedules


def test_warmup_then_cosine_ends_at_min():
    cfg = OptimConfig(schedule="cosine", warmup_steps=10, min_lr_frac=0.1)
    assert lr_multiplier(0, 0.0, cfg) == pytest.approx(0.1)
    assert lr_multiplier(9, 0.09, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.09)) * 0.9 + 0.1)
    assert lr_multiplier(50, 0.5, cfg) == pytest.approx(0.55)
    assert lr_multiplier(100, 1.0, cfg) == pytest.approx(0.1)
    mults = [lr_multiplier(s, s / 100, cfg) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(mults, mults[1:], strict=False))


def test_wsd_is_flat_then_decays_linearly():
    cfg = OptimConfig(schedule="wsd", warmup_steps=0, decay_frac=0.2, min_lr_frac=0.0)
    assert lr_multiplier(10, 0.1, cfg) == 1.0
    assert lr_multiplier(80, 0.8, cfg) == 1.0
    assert lr_multiplier(90, 0.9, cfg) == pytest.approx(0.5)
    assert lr_multiplier(100, 1.0, cfg) == pytest.approx(0.0)
    assert lr_multiplier(5, 0.5, OptimConfig(schedule="constant", warmup_steps=0)) == 1.0


# ---------------------------------------------------------------------------------------------- optimisers


def test_orthogonalize_pushes_singular_values_towards_one():
    torch.manual_seed(0)
    for shape in [(32, 64), (96, 32)]:
        g = torch.randn(shape) @ torch.diag(torch.logspace(-1, 1, shape[1]))  # condition number ~100
        s = torch.linalg.svdvals(orthogonalize(g))
        assert s.max() < 1.3 and s.min() > 0.5, s


def test_param_groups_decay_matrices_only():
    m = GPT(ModelConfig(vocab_size=50, **TINY_MODEL))
    opt = build_optimizer(m, OptimConfig(optimizer="adamw", weight_decay=0.1))
    (adamw,) = opt.optimizers
    decayed = {id(p) for g in adamw.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in m.named_parameters():
        assert (id(p) in decayed) == (p.ndim == 2), name
    opt = build_optimizer(m, OptimConfig(optimizer="muon"))
    adamw, muon = opt.optimizers
    assert isinstance(muon, Muon)
    muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
    assert muon_ids == {id(p) for n, p in m.named_parameters() if p.ndim == 2 and n.startswith("blocks.")}
    assert id(m.tok_emb.weight) not in muon_ids
    # untied: the embedding gets embedding_lr, the head the plain AdamW rate
    m = GPT(ModelConfig(vocab_size=50, **TINY_MODEL, tie_embeddings=False))
    adamw, _ = build_optimizer(m, OptimConfig(optimizer="muon", lr=1e-3, embedding_lr=0.05)).optimizers
    lr_of = {id(p): g["lr"] for g in adamw.param_groups for p in g["params"]}
    assert lr_of[id(m.tok_emb.weight)] == 0.05 and lr_of[id(m.lm_head.weight)] == 1e-3


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_optimizer_steps_reduce_loss(optimizer):
    torch.manual_seed(0)
    rt = setup_runtime("cpu", "off", seed=0)
    m = GPT(ModelConfig(vocab_size=64, **TINY_MODEL))
    opt = build_optimizer(m, OptimConfig(optimizer=optimizer, lr=1e-2, matrix_lr=0.02))
    x = torch.randint(0, 64, (8, 32))
    y = torch.roll(x, -1, 1)
    first = m(x, y)[1].item()
    for _ in range(15):
        train_step(m, opt, x, y, rt, grad_clip=1.0)
    assert m(x, y)[1].item() < first - 1.0


def test_gradient_accumulation_matches_one_big_batch():
    rt = setup_runtime("cpu", "off", seed=0)
    x = torch.randint(0, 64, (8, 32))
    y = torch.roll(x, -1, 1)
    out = []
    for micro in (8, 2):
        torch.manual_seed(0)
        m = GPT(ModelConfig(vocab_size=64, **TINY_MODEL))
        opt = build_optimizer(m, OptimConfig(optimizer="adamw"))
        loss, _ = train_step(m, opt, x, y, rt, micro_batch_size=micro)
        out.append((float(loss), m.tok_emb.weight.detach().clone()))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-5)
    assert torch.allclose(out[0][1], out[1][1], atol=1e-6)


# ---------------------------------------------------------------------------------------------- data


def test_random_windows_are_reproducible_and_split_across_ranks():
    tokens = np.arange(1000, dtype=np.uint16)
    a = RandomWindows(tokens, 16, 8, seed=3)
    x0, y0 = a.next_batch()
    assert x0.shape == (8, 16) and torch.equal(y0[:, :-1], x0[:, 1:])
    a.next_batch()
    b = RandomWindows(tokens, 16, 8, seed=3)
    b.load_state_dict({"step": 1})
    r0 = RandomWindows(tokens, 16, 8, seed=3, rank=0, world=2)
    r1 = RandomWindows(tokens, 16, 8, seed=3, rank=1, world=2)
    for src in (r0, r1):
        src.load_state_dict({"step": 1})
    full = b.next_batch()[0]
    assert torch.equal(torch.cat([r0.next_batch()[0], r1.next_batch()[0]]), full)


def test_eval_windows_score_every_token_once():
    tokens = np.arange(1, 104, dtype=np.uint16)  # 103 tokens, not a multiple of the window
    batches = list(eval_windows(tokens, 10, 4, eot_id=0))
    ys = torch.cat([y.flatten() for _, y in batches])
    scored = ys[ys != -100]
    assert torch.equal(scored, torch.arange(1, 104))
    assert all(x.shape == (4, 10) for x, _ in batches)
    assert batches[0][0][0, 0] == 0  # the first token is predicted from <|endoftext|>
    two = [list(eval_windows(tokens, 10, 4, 0, rank=r, world=2)) for r in (0, 1)]
    assert [len(b) for b in two] == [2, 2]  # 3 real batches + 1 all-padding one
    assert all((y == -100).all() for _, y in two[1][1:])


def test_missing_token_files_are_input_errors(tmp_path):
    run = tmp_path / "run"
    (run / "tokenize").mkdir(parents=True)
    write_json(run / "tokenize" / "manifest.json", {"fingerprint": "x", "outputs": {}})
    with pytest.raises(InputError, match="meta.json"):
        run_train(ctx_for(run), tiny_cfg())


# ---------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_keeps_types(tmp_path):
    m = GPT(ModelConfig(vocab_size=50, **TINY_MODEL))
    opt = build_optimizer(m, OptimConfig(optimizer="muon"))
    rt = setup_runtime("cpu", "off", seed=0)
    x = torch.randint(0, 50, (2, 32))
    train_step(m, opt, x, x, rt)
    state = {"optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "tup": (1, [2.5, "a"]),
             "arr": np.arange(3, dtype=np.uint32), "none": None}
    write_checkpoint(tmp_path / "step_000001", m.state_dict(), state, "fp")
    ck = read_checkpoint(tmp_path / "step_000001", "fp")
    assert torch.equal(ck.state["rng"], state["rng"])
    assert ck.state["tup"] == (1, [2.5, "a"]) and ck.state["none"] is None
    assert ck.state["arr"].dtype == np.uint32
    opt2 = build_optimizer(GPT(ModelConfig(vocab_size=50, **TINY_MODEL)), OptimConfig(optimizer="muon"))
    opt2.load_state_dict(ck.state["optimizer"])  # int param ids survive the JSON round trip
    assert all(torch.equal(ck.model_state[k], v) for k, v in m.state_dict().items())
    with pytest.raises(ValueError, match="fingerprint"):
        read_checkpoint(tmp_path / "step_000001", "other")


def test_corrupt_or_partial_checkpoint_falls_back_to_previous(tmp_path):
    m = GPT(ModelConfig(vocab_size=50, **TINY_MODEL))
    root = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        write_checkpoint(root / f"step_{step:06d}", m.state_dict(), {"trainer": {"step": step}}, "fp")
    # step 30: one flipped byte in the weights; step 20: state.json lost; a half-written temp dir
    w = root / "step_000030" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF
    w.write_bytes(bytes(data))
    (root / "step_000020" / "state.json").unlink()
    (root / ".tmp-step_000040-123").mkdir()
    warnings: list[str] = []
    ck = latest_checkpoint(root, "fp", warn=warnings.append)
    assert ck is not None and ck.state["trainer"]["step"] == 10
    assert len(warnings) == 2 and "checksum" in warnings[0] and "step_000020" in warnings[1]


def test_run_train_resumes_from_last_good_checkpoint(tmp_path, token_run):
    run = fresh_run(tmp_path, token_run)
    cfg = tiny_cfg(max_steps=20, checkpoint_every=5, keep_checkpoints=3)
    s1 = run_train(ctx_for(run), cfg)
    ref = load_file(run / "train" / "model" / "model.safetensors")
    ckdir = run / "train" / "checkpoints"
    assert sorted(p.name for p in ckdir.glob("step_*")) == ["step_000010", "step_000015", "step_000020"]
    # make the final checkpoint unreadable: the rerun must warn, go back to step 15 and redo 5 steps
    (ckdir / "step_000020" / "model.safetensors").write_bytes(b"garbage")
    logs: list[str] = []
    ctx = StageContext(run_dir=run, stage="train", seed=7, fingerprint="fp", log=logs.append)
    s2 = run_train(ctx, cfg)
    assert s2["resumed_from_step"] == 15 and s2["steps"] == 20
    assert any("skipping checkpoint step_000020" in m for m in logs)
    again = load_file(run / "train" / "model" / "model.safetensors")
    assert all(torch.equal(ref[k], again[k]) for k in ref)
    assert s2["val_loss"] == s1["val_loss"]
    # another fingerprint (changed config) ignores these checkpoints
    s3 = run_train(ctx_for(run, "other-fp"), cfg)
    assert s3["resumed_from_step"] is None


# ---------------------------------------------------------------------------------------------- the stage


def test_run_train_writes_model_metrics_and_stats(tmp_path, token_run):
    run = fresh_run(tmp_path, token_run)
    meta = token_run[1]
    cfg = tiny_cfg(optimizer="muon", schedule="wsd", max_steps=30,
                   model={**TINY_MODEL, "n_kv_head": 1, "qk_norm": True, "logit_softcap": 30.0,
                          "tie_embeddings": False, "dropout": 0.1})
    stats = run_train(ctx_for(run), cfg)
    out = run / "train"
    m = load_model(out / "model")
    assert (out / "model" / "tokenizer.json").read_bytes() == (run / "tokenize" / "tokenizer.json").read_bytes()
    assert m.config.vocab_size == meta["vocab_size"] and m.config.n_kv_head == 1
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in recs if "train/loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert any("train/val_loss" in r for r in recs) and all("tokens_per_s" in r for r in recs if "train/loss" in r)
    assert stats["steps"] == 30 and stats["tokens_seen"] == 30 * 4 * 32
    assert stats["val_tokens"] == meta["splits"]["val"]["tokens"]
    assert stats["val_loss"] < math.log(meta["vocab_size"])
    bpb = stats["val_loss"] * stats["val_tokens"] / (meta["splits"]["val"]["bytes"] * math.log(2))
    assert stats["val_bits_per_byte"] == pytest.approx(bpb, rel=1e-4)
    assert stats["parameters"] == m.num_params() and stats["stopped_by"] == "max_steps"


def test_time_budget_stops_in_time_with_final_eval_and_checkpoint(tmp_path, token_run):
    run = fresh_run(tmp_path, token_run)
    cfg = tiny_cfg(max_steps=100_000, time_budget=4.0, eval_every=50, checkpoint_every=0)
    t0 = time.monotonic()
    stats = run_train(ctx_for(run), cfg)
    wall = time.monotonic() - t0
    assert stats["stopped_by"] == "time_budget"
    assert 1.0 < wall < 4.0 + 1.5, wall  # slack for the model dir write and a loaded machine (the final
    # evaluation's reserve is measured on this machine, so contention makes it stop earlier)
    assert stats["val_tokens"] > 0 and (run / "train" / "model" / "model.safetensors").exists()
    last = latest_checkpoint(run / "train" / "checkpoints", "fp")
    assert last is not None and last.state["trainer"]["step"] == stats["steps"]


def test_early_stopping_keeps_the_best_weights(tmp_path, token_run):
    run = fresh_run(tmp_path, token_run)
    # min_delta so large that no evaluation after the first counts as better: stop after 2 more
    cfg = tiny_cfg(max_steps=200, eval_every=5, early_stopping_patience=2, early_stopping_min_delta=100.0)
    stats = run_train(ctx_for(run), cfg)
    assert stats["stopped_by"] == "early_stopping" and stats["steps"] == 15 and stats["curve_best_step"] == 5
    best = read_checkpoint(run / "train" / "checkpoints" / "best", "fp")
    final = load_file(run / "train" / "model" / "model.safetensors")
    assert all(torch.equal(best.model_state[k], final[k]) for k in final)


def test_tracking_backend_missing_is_a_one_line_config_error(tmp_path, token_run, monkeypatch):
    from gristmill.errors import ConfigError

    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an environment without the extra sees
    run = fresh_run(tmp_path, token_run)
    with pytest.raises(ConfigError, match=r"gristmill\[tracking\]"):
        run_train(ctx_for(run), tiny_cfg(mlflow=True))


def test_tensorboard_and_mlflow_when_installed(tmp_path, token_run):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    run = fresh_run(tmp_path, token_run)
    run_train(ctx_for(run), tiny_cfg(max_steps=10, tensorboard=True, mlflow=True))
    out = run / "train"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{(out / 'mlflow.db').resolve()}")
    runs = mlflow.search_runs(experiment_names=["gristmill"], output_format="list")
    assert len(runs) == 1 and "train_loss" in runs[0].data.metrics
    assert runs[0].data.params["model.n_layer"] == "2"


def test_progress_in_a_log_file_prints_lines_not_redraws(capsys):
    from gristmill.train.loop import Progress

    p = Progress(total=100, initial=0, desc="run", budget=10.0, every_s=0.0, interactive=False)
    for step in range(1, 4):
        p.update(step, elapsed=float(step), loss="1.0")
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and "\r" not in err and "run: step 3/100 loss 1.0 eta" in err
    # with a time budget the time left is never more than the budget left
    assert p.eta(elapsed=9.5) <= 0.5


def test_summary_and_log_say_when_the_time_budget_ended_training(tmp_path, token_run):
    from gristmill.stages.train import summary

    lines = summary({"stats": {"steps": 36, "max_steps": 100, "stopped_by": "time_budget", "val_loss": 1.4,
                               "val_bits_per_byte": 2.0, "val_tokens": 1000}}, Path("runs/x"))
    assert any("time_budget after 36 of 100 steps (36%)" in line for line in lines)
    logged: list[str] = []
    run = fresh_run(tmp_path, token_run)
    ctx = ctx_for(run)
    ctx.log = logged.append
    run_train(ctx, tiny_cfg(max_steps=100_000, time_budget=3.0, eval_every=0, checkpoint_every=0))
    assert any("stopped by time_budget" in m and "raise train.time_budget" in m for m in logged)
    assert any("final evaluation" in m for m in logged)
