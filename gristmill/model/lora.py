"""LoRA: low-rank adapters swapped in for the model's projections, the base weights frozen.

``apply_lora(model, cfg)`` replaces each targeted ``nn.Linear`` (``wq`` ... ``w_down``) in place by a
:class:`LoRALinear` that keeps the very same weight tensor (no copy of the model) and adds two small
trainable matrices: ``y = x W^T + dropout(x) A^T B^T * alpha / rank`` with A [r, in] and B [out, r].
B starts at zero, so the adapted model starts out computing exactly what the base model did. Every
other parameter is frozen, so the optimiser (which only takes parameters that require grad) sees the
adapters alone, and autograd skips the weight gradients of the frozen matrices (a third of a training
step's matrix work).

Because the base weight stays under its own name (``blocks.0.attn.wq.weight``), a LoRA model's state
dict is the base model's keys plus ``...lora_a`` / ``...lora_b``; ``merge_lora`` folds ``B A * scale``
into the weights and puts plain ``nn.Linear`` layers back, so the merged model has exactly the original
keys and saves as an ordinary model directory. ``save_adapter`` / ``load_adapter`` keep only the adapter
(``adapter.safetensors`` + ``adapter_config.json``), a few MB instead of the whole model.

Shapes in comments: N rows (tokens), I in features, O out features, r rank.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from gristmill.core.workspace import atomic_open, write_json
from gristmill.errors import InputError
from gristmill.model.gpt import unwrap

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class LoraSpec(Protocol):
    """What ``apply_lora`` needs to know (``gristmill.train.config.LoraConfig`` is one; so is
    :class:`AdapterSpec`, read back from ``adapter_config.json``)."""

    rank: int
    alpha: float
    dropout: float
    target_modules: Sequence[str]


@dataclass(frozen=True)
class AdapterSpec:
    """The LoRA settings an adapter was trained with, as stored in ``adapter_config.json``."""

    rank: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update: ``base(x) + dropout(x) A^T B^T * alpha/r``.

    Takes over ``base``'s own ``weight`` (and ``bias``) parameters rather than copying them, so the
    base keys of the state dict do not change and no memory is duplicated.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        self.register_parameter("weight", base.weight)  # [O,I], frozen
        self.register_parameter("bias", base.bias)  # [O] or None, frozen
        for p in (self.weight, self.bias):
            if p is not None:
                p.requires_grad_(False)
        w = base.weight
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features, device=w.device, dtype=w.dtype))  # [r,I]
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=w.dtype))  # [O,r]
        # A as nn.Linear initialises its weight (uniform, fan-in scaled); B = 0 makes the update start at 0.
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [..., I] -> [..., O]. The low-rank path goes through the r-wide bottleneck first (N x r, not
        # N x O x I), and its product is added into the base output in place by one addmm, so the
        # update costs no extra [N,O] buffer. Autograd allows the in-place add: the base matmul's backward
        # needs its inputs, not its output. Autocast does not cast in-place ops, hence the explicit casts
        # (no-ops in float32; under bf16 autocast the linears already return bf16).
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # [N,I]
        out = F.linear(x2, self.weight, self.bias)  # [N,O]
        xa = F.linear(self.dropout(x2) if self.dropout is not None else x2, self.lora_a)  # [N,r]
        out = out.addmm_(xa.to(out.dtype), self.lora_b.t().to(out.dtype), alpha=self.scale)  # += xa B^T * scale
        return out.view(*lead, self.out_features)

    def merged_weight(self) -> torch.Tensor:
        """W + B A * alpha/r ([O,I]), computed in float32 and cast back to the weight's dtype."""
        delta = (self.lora_b.float() @ self.lora_a.float()) * self.scale  # [O,I]
        return (self.weight.float() + delta).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, alpha={self.alpha}"


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The LoRA layers of ``model`` by qualified module name (empty if LoRA is not applied)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def apply_lora(model: nn.Module, cfg: LoraSpec) -> list[str]:
    """Swap a :class:`LoRALinear` in for every ``nn.Linear`` whose own name is in ``cfg.target_modules``,
    freeze every other parameter, and return the qualified names of the adapted layers.

    ValueError if LoRA is already applied (adapters on adapters would not merge back to the original
    keys) or if a target name matches no linear layer of the model.
    """
    model = unwrap(model)
    if lora_layers(model):
        raise ValueError("LoRA is already applied to this model: merge_lora it first, or start from the base model")
    targets = set(cfg.target_modules)
    chosen = [name for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and name.rpartition(".")[2] in targets]
    found = {name.rpartition(".")[2] for name in chosen}
    if missing := sorted(targets - found):
        raise ValueError(f"LoRA target_modules {missing} match no linear layer of the model; "
                         f"use names of its nn.Linear modules such as wq, wk, wv, wo, w_gate, w_up, w_down")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in chosen:
        base = model.get_submodule(name)
        _set_submodule(model, name, LoRALinear(base, cfg.rank, cfg.alpha, cfg.dropout))
    return chosen


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> int:
    """Store every frozen weight matrix (the base under LoRA) in ``dtype``, e.g. bf16 for bf16 autocast:
    half the memory, no per-step casts. Trainable parameters and 1-D gains keep their dtype (the adapters
    and the optimiser stay float32). Returns the number of tensors cast. Merge onto a float32 copy of the
    base afterwards (``load_adapter`` + ``merge_lora``), not onto the cast one."""
    n = 0
    for p in unwrap(model).parameters():
        if not p.requires_grad and p.ndim >= 2 and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
            n += 1
    return n


@torch.no_grad()
def merge_lora(model: nn.Module) -> list[str]:
    """Fold every adapter into its base weight (W += B A * alpha/r) and put a plain ``nn.Linear`` back.

    Afterwards the model is an ordinary one again: its state dict has exactly the base model's keys and
    every parameter is trainable, as in a freshly built model. Returns the merged layer names.
    """
    model = unwrap(model)
    layers = lora_layers(model)
    for name, lora in layers.items():
        plain = nn.Linear(lora.in_features, lora.out_features, bias=lora.bias is not None,
                          device="meta")  # no init work: the parameters are replaced just below
        plain.weight = nn.Parameter(lora.merged_weight())
        if lora.bias is not None:
            plain.bias = nn.Parameter(lora.bias.detach())
        plain.train(lora.training)
        _set_submodule(model, name, plain)
    if layers:
        for p in model.parameters():
            p.requires_grad_(True)
    return list(layers)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only (``<layer>.lora_a`` [r,I], ``<layer>.lora_b`` [O,r]), detached."""
    return {f"{name}.{k}": getattr(m, k).detach()
            for name, m in lora_layers(unwrap(model)).items() for k in ("lora_a", "lora_b")}


def save_adapter(adapter_dir: Path, model: nn.Module, cfg: LoraSpec) -> None:
    """Write ``adapter.safetensors`` (the adapter tensors) and ``adapter_config.json`` (rank, alpha,
    dropout, target modules, the adapted layers and the base model's config, so the adapter is only ever
    loaded onto the model it was trained on) into ``adapter_dir``, each atomically."""
    from safetensors.torch import save

    model = unwrap(model)
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to save: apply_lora (and train) before save_adapter")
    ranks = {m.rank for m in layers.values()}
    if ranks != {cfg.rank}:
        raise ValueError(f"the model's LoRA layers have rank {sorted(ranks)} but the config says {cfg.rank}; "
                         f"save with the config the adapters were made with")
    adapter_dir = Path(adapter_dir)
    tensors = {k: v.to("cpu").contiguous() for k, v in lora_state_dict(model).items()}
    with atomic_open(adapter_dir / ADAPTER_WEIGHTS, "wb") as f:
        f.write(save(tensors, metadata={"format": "pt"}))
    base = getattr(model, "config", None)
    write_json(adapter_dir / ADAPTER_CONFIG, {
        "rank": cfg.rank, "alpha": cfg.alpha, "dropout": cfg.dropout,
        "target_modules": list(cfg.target_modules), "layers": list(layers),
        "base_model_config": base.model_dump(mode="json") if hasattr(base, "model_dump") else None})


def read_adapter_config(adapter_dir: Path) -> AdapterSpec:
    """The LoRA settings in ``adapter_dir/adapter_config.json``; InputError if missing or malformed."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.is_file():
        raise InputError(f"{path} is missing: point at a folder written by save_adapter")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return AdapterSpec(rank=int(raw["rank"]), alpha=float(raw["alpha"]), dropout=float(raw["dropout"]),
                           target_modules=tuple(str(t) for t in raw["target_modules"]))
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path} is not a valid adapter config (problem with {e}); re-save the adapter") from e


def load_adapter(model: nn.Module, adapter_dir: Path) -> list[str]:
    """Load an adapter saved by ``save_adapter`` into ``model``: LoRA is applied first (with the saved
    settings) unless the model already has it; returns the adapted layer names. InputError if the files
    are missing or do not fit the model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model = unwrap(model)
    adapter_dir = Path(adapter_dir)
    spec = read_adapter_config(adapter_dir)
    saved_base = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_config")
    base = getattr(model, "config", None)
    if saved_base and hasattr(base, "model_dump") and base.model_dump(mode="json") != saved_base:
        differ = sorted(k for k, v in base.model_dump(mode="json").items() if saved_base.get(k) != v)
        raise InputError(f"{adapter_dir} was trained on another base model (config differs in {differ}); "
                         f"load it onto the model it was trained on")
    w_path = adapter_dir / ADAPTER_WEIGHTS
    if not w_path.is_file():
        raise InputError(f"{w_path} is missing: point at a folder written by save_adapter")
    try:
        tensors = load_file(str(w_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"{w_path} is corrupt or truncated ({e}); re-save the adapter") from e
    # Check every key and shape before touching the model, so a mismatch leaves it as it was.
    layers = lora_layers(model)
    if layers:
        want = {k: tuple(v.shape) for k, v in lora_state_dict(model).items()}
    else:
        want = {}
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear) and name.rpartition(".")[2] in spec.target_modules:
                want[f"{name}.lora_a"] = (spec.rank, m.in_features)
                want[f"{name}.lora_b"] = (m.out_features, spec.rank)
    if set(tensors) != set(want):
        odd = sorted(set(tensors) ^ set(want))[:3]
        raise InputError(f"{w_path} does not match the model's layers (e.g. {odd}); load it onto the base "
                         f"model it was trained on")
    for k, v in tensors.items():
        if tuple(v.shape) != want[k]:
            raise InputError(f"{w_path}: {k} has shape {tuple(v.shape)}, the model wants {want[k]}; load it "
                             f"onto the base model it was trained on")
    if not layers:
        apply_lora(model, spec)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in tensors.items():
            params[k].copy_(v)
    return list(lora_layers(model))
