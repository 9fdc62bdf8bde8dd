"""Canaries: planted secrets are exposed in a model trained on them, unplanted controls are not."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from support import TINY_MODEL, make_tokenize_dir  # noqa: E402

from gristmill.core.workspace import StageContext
from gristmill.eval.canary import Canary, exposure, make_canaries, plant, summarize
from gristmill.stages.evaluate import _canary_exposure, _planted_canaries, canary_section
from gristmill.stages.train import run as run_train
from gristmill.train.config import TrainConfig


def test_canaries_are_reproducible_unique_and_half_controls() -> None:
    c = make_canaries(5, seed=3)
    assert c == make_canaries(5, seed=3) and c != make_canaries(5, seed=4)
    assert [x.planted for x in c] == [True] * 5 + [False] * 5
    assert len({x.name for x in c}) == 10 and len({x.secret for x in c}) == 10
    assert c[0].text == f"the secret code of {c[0].name} is {c[0].secret}."
    assert len(c[0].secret) == 14 and c[0].secret[4] == c[0].secret[9] == "-"


def test_plant_inserts_each_canary_as_documents_at_boundaries() -> None:
    eot = 0
    tokens = np.array([5, 6, 0, 7, 8, 9, 0, 10, 0], dtype=np.uint16)
    out = plant(tokens, [[41, 42], [51]], repeats=3, eot_id=eot, seed=1)
    assert out.dtype == tokens.dtype and len(out) == len(tokens) + 3 * 3 + 3 * 2
    # the original documents, in order, once the planted ones are taken out
    docs = " ".join(map(str, out.tolist())).split(" 0")
    kept = [d.strip() for d in docs if d.strip() and d.strip() not in ("41 42", "51")]
    assert kept == ["5 6", "7 8 9", "10"]
    assert sum(d.strip() == "41 42" for d in docs) == 3 and sum(d.strip() == "51" for d in docs) == 3


class _Oracle:
    """A scorer that knows one secret: the true secret of ``known`` is the likeliest, others are random."""

    def __init__(self, known: str) -> None:
        self.known = known

    def loglikelihood(self, requests):
        return [(0.0, True) if c.strip() == self.known else (-10.0 - zlib.crc32(c.encode()) % 1000 / 100, False)
                for _, c in requests]


def test_exposure_is_maximal_for_a_known_secret_and_low_otherwise() -> None:
    known, unknown = Canary("Bakoru", "1234-5678-9012", True), Canary("Difeza", "9999-0000-1111", False)
    rows = exposure(_Oracle(known.secret), [known, unknown], candidates=255, seed=0)
    assert rows[0]["rank"] == 1 and rows[0]["exposure"] == 8.0 and rows[0]["extracted"]
    assert rows[1]["rank"] > 1 and rows[1]["exposure"] < 8.0 and not rows[1]["extracted"]
    s = summarize(rows)
    assert s["planted"]["extracted"] == 1 and s["controls"]["extracted"] == 0 and s["max_exposure"] == 8.0


@pytest.mark.slow
def test_a_canary_repeated_in_training_is_exposed_and_a_control_is_not(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_tokenize_dir(run, n_train=100)
    (run / "train").mkdir(parents=True)
    cfg = TrainConfig.model_validate(dict(
        max_steps=150, batch_size=8, warmup_steps=10, eval_every=0, checkpoint_every=0, eval_tokens=256,
        progress=False, log_every=50, threads=1, model={**TINY_MODEL, "block_size": 64}, optimizer="adamw",
        lr=3e-3, canaries={"count": 1, "repeats": 200}))
    ctx = StageContext(run_dir=run, stage="train", seed=5, fingerprint="fp", log=lambda m: None)
    stats = run_train(ctx, cfg)
    assert stats["canaries"] == {"count": 1, "repeats": 200}
    canaries = _planted_canaries(run)
    assert [c.planted for c in canaries] == [True, False]

    from gristmill.eval.config import EvaluateConfig
    from gristmill.model.io import load_for_inference

    model, tokenizer = load_for_inference(run / "train" / "model", "cpu")
    rows = _canary_exposure(model, tokenizer, canaries, EvaluateConfig(canary_candidates=200), seed=5)
    planted, control = rows
    assert planted["exposure"] > 6.0 and planted["extracted"]  # of log2(201) = 7.65 bits
    assert control["exposure"] < 4.0 and not control["extracted"]
    section = canary_section({"train": {"canaries": rows}})
    assert "### Canaries" in section and "| pre-trained | planted | 1 |" in section
