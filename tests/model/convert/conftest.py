"""Fixtures of the export tests: model directories with the options export must handle (GQA, tied
embeddings, a padded vocabulary, no soft-cap, QK-norm), built from the tiny trained model's tokenizer."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def make_model_dir(tmp_path: Path, tiny_model_dir: Path) -> Callable[..., Path]:
    """``make_model_dir(name, extra_rows=0, **model_config)``: a random-weight model directory with the tiny
    model's tokenizer, ``extra_rows`` embedding rows past its last token, and norm weights drawn away from
    1 (so a misplaced norm cannot pass). Init std 0.3: peaked logits, so greedy decoding has no near-ties
    for float rounding to flip."""
    import torch

    from gristmill.model.config import ModelConfig
    from gristmill.model.gpt import GPT
    from gristmill.model.io import save_model
    from gristmill.tokenizer.bpe import load_tokenizer

    def make(name: str, extra_rows: int = 0, **overrides: Any) -> Path:
        vocab = load_tokenizer(tiny_model_dir).get_vocab_size()
        cfg = ModelConfig(**{"vocab_size": vocab + extra_rows, "block_size": 64, "n_layer": 2, "n_head": 4,
                             "n_kv_head": 2, "n_embd": 64, "tie_embeddings": True, "logit_softcap": None,
                             "rope_theta": 5000.0, "init_std": 0.3, **overrides})
        torch.manual_seed(0)
        model = GPT(cfg).eval()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if pname.endswith("norm.weight"):
                    p.uniform_(0.5, 1.5)
        d = tmp_path / name
        save_model(d, model, tiny_model_dir / "tokenizer.json")
        return d

    return make


@pytest.fixture
def tiny_copy(tmp_path: Path, tiny_model_dir: Path) -> Callable[[str], Path]:
    """``tiny_copy(name)``: a copy of the tiny trained model directory a test may change."""

    def copy(name: str) -> Path:
        return Path(shutil.copytree(tiny_model_dir, tmp_path / name))

    return copy
