"""The model directory: ``model.safetensors`` (weights), ``config.json`` (the ``ModelConfig`` fields) and
``tokenizer.json``: self-contained, what evaluate, finetune, generate and serve load.

Inside a run (``runs/<name>/<stage>/model``) the files are checked against the sha256 the stage's
manifest recorded before they are used, so a corrupted model is refused rather than served.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.nn as nn

from gristmill.core.workspace import atomic_open, verify_model_files, write_json
from gristmill.errors import InputError
from gristmill.model.config import ModelConfig
from gristmill.model.gpt import GPT, unwrap

MODEL_STAGES = ("finetune", "train", "base")
"""Stages whose output holds a model, in the order ``auto`` prefers them."""


def save_model(model_dir: Path, model: nn.Module, tokenizer_path: Path | None) -> None:
    """Write a self-contained model directory (weights, config, a copy of the tokenizer)."""
    from safetensors.torch import save

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    gpt = unwrap(model)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in gpt.state_dict().items()}
    with atomic_open(model_dir / "model.safetensors", "wb") as f:
        f.write(save(tensors, metadata={"format": "pt"}))
    write_json(model_dir / "config.json", gpt.config.model_dump(mode="json"))
    if tokenizer_path is not None:
        src = Path(tokenizer_path)
        if src.resolve() != (model_dir / "tokenizer.json").resolve():
            with atomic_open(model_dir / "tokenizer.json", "wb") as f, open(src, "rb") as g:
                shutil.copyfileobj(g, f)


def load_model(model_dir: Path, device: str | torch.device = "cpu") -> GPT:
    """Read a model directory written by ``save_model``; InputError if it is missing or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    cfg_path, w_path = model_dir / "config.json", model_dir / "model.safetensors"
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise InputError(f"{model_dir} is not a model directory: {p.name} is missing "
                             f"(train a model first, or point at a folder written by save_model)")
    verify_model_files(model_dir)
    try:
        cfg = ModelConfig.model_validate(json.loads(cfg_path.read_text(encoding="utf-8")))
    except ValueError as e:
        raise InputError(f"{cfg_path} is not a valid model config ({str(e).splitlines()[0]})") from e
    try:
        state = load_file(str(w_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{w_path} is corrupt or truncated ({e}); re-run the stage that wrote it") from e
    model = GPT(cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise InputError(f"{w_path} does not match {cfg_path} ({str(e).splitlines()[0]})") from e
    return model.to(device).eval()


def is_model_dir(path: Path) -> bool:
    return (Path(path) / "config.json").is_file() and (Path(path) / "model.safetensors").is_file()


def resolve_model_dir(path: Path, which: str = "auto") -> Path:
    """A model directory as given, or the model of a run directory: for ``"auto"`` ``finetune/model`` if it
    exists, else ``train/model``, else the imported ``base/model``; or the stage ``which`` names."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist; pass a run directory (runs/<name>) or a model directory")
    if is_model_dir(path):
        return path
    candidates = {"auto": MODEL_STAGES, "finetune": ("finetune",), "train": ("train",), "base": ("base",)}
    if which not in candidates:
        raise InputError(f"model '{which}' is not one of auto, finetune, train, base")
    for stage in candidates[which]:
        if is_model_dir(path / stage / "model"):
            return path / stage / "model"
    wanted = " or ".join(f"{path / s / 'model'}" for s in candidates[which])
    raise InputError(f"no model found in {path} (looked for {wanted}); run `gristmill run` for this "
                     f"recipe first, or pass a model directory")


def load_for_inference(model_dir: Path, device: str | torch.device = "cpu"):
    """The model (in eval mode, on ``device``) and tokenizer of a model directory."""
    from gristmill.tokenizer.bpe import load_tokenizer

    model_dir = Path(model_dir)
    model = load_model(model_dir, device)
    return model.eval(), load_tokenizer(model_dir)
