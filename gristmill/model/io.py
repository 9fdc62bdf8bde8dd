"""The model directory: ``model.safetensors`` (weights), ``config.json`` (the ``ModelConfig`` fields) and
``tokenizer.json``: self-contained, what evaluate, finetune, generate and serve load.

A LoRA fine-tune saved without merging is an *adapter* model directory instead: ``adapter.safetensors``
and ``adapter_config.json`` (:mod:`gristmill.model.lora`), ``tokenizer.json``, and ``base_model.json``
naming the base model directory (relative to it). ``load_model`` reads the base, applies the adapter and,
unless told not to, merges it (the merged model runs as fast as the base).

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

BASE_POINTER = "base_model.json"
"""In an adapter model directory: ``{"path": <base model directory, relative to this one>}``."""
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


def save_adapter_model(model_dir: Path, model: nn.Module, lora_cfg, base_dir: Path,
                       tokenizer_path: Path | None) -> None:
    """Write an adapter model directory: the adapters of ``model`` (LoRA applied), a pointer to the base
    model directory they were trained on, and a copy of the tokenizer."""
    import os

    from gristmill.model.lora import save_adapter

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    save_adapter(model_dir, model, lora_cfg)
    write_json(model_dir / BASE_POINTER, {"path": os.path.relpath(Path(base_dir).resolve(), model_dir.resolve())})
    if tokenizer_path is not None:
        with atomic_open(model_dir / "tokenizer.json", "wb") as f, open(tokenizer_path, "rb") as g:
            shutil.copyfileobj(g, f)


def adapter_base(model_dir: Path) -> Path | None:
    """The base model directory of an adapter model directory (None for an ordinary one)."""
    pointer = Path(model_dir) / BASE_POINTER
    if not pointer.is_file():
        return None
    try:
        rel = json.loads(pointer.read_text(encoding="utf-8"))["path"]
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{pointer} is not valid ({e}); re-run the stage that wrote it") from e
    return (Path(model_dir) / rel).resolve()


def load_model(model_dir: Path, device: str | torch.device = "cpu", *, merge: bool = True) -> GPT:
    """Read a model directory written by ``save_model`` (or an adapter directory: base + adapter, merged
    unless ``merge`` is False); InputError if it is missing or unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    base = adapter_base(model_dir)
    if base is not None:
        from gristmill.model.lora import load_adapter, merge_lora

        if not base.is_dir():
            raise InputError(f"{model_dir} is a LoRA adapter for {base}, which is missing; re-run the stage "
                             f"that wrote the base model, or load the adapter onto it with --base")
        verify_model_files(model_dir)
        model = load_model(base, "cpu")
        load_adapter(model, model_dir)
        if merge:
            merge_lora(model)
        return model.to(device).eval()
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
    """A model directory: weights and config, or an adapter with its base pointer."""
    path = Path(path)
    return ((path / "config.json").is_file() and (path / "model.safetensors").is_file()) or (
        (path / "adapter_config.json").is_file() and (path / BASE_POINTER).is_file())


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


def load_for_inference(model_dir: Path, device: str | torch.device = "cpu", *, merge: bool = True):
    """The model (in eval mode, on ``device``) and tokenizer of a model directory (an adapter directory's
    adapter merged unless ``merge`` is False)."""
    from gristmill.tokenizer.bpe import load_tokenizer

    model_dir = Path(model_dir)
    model = load_model(model_dir, device, merge=merge)
    return model.eval(), load_tokenizer(model_dir)
