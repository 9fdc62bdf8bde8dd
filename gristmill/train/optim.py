"""Optimisers and learning-rate schedules.

``build_optimizer(model, cfg)`` groups parameters the same way for pre-training and fine-tuning:
weight matrices get decoupled weight decay, norm gains (and any bias or other vector) get none. With
``optimizer: muon`` the hidden matrices of the transformer blocks are updated by Muon (momentum, then
Newton-Schulz orthogonalisation of the update) and everything else by AdamW. Every param group carries
``base_lr``; ``set_lr(opt, multiplier)`` applies the schedule by scaling it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from gristmill.train.config import OptimConfig

# Coefficients of the quintic Newton-Schulz iteration: chosen to push every singular value of the
# normalised matrix towards ~1 in a few steps (fast, not exact: values land roughly in [0.7, 1.2]).
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately the orthogonal factor U V^T of g = U S V^T, via a quintic Newton-Schulz iteration."""
    a, b, c = NS_COEFFS
    # bf16 is accurate enough for the iteration and much faster on GPUs; CPUs stay in fp32.
    x = g.to(torch.bfloat16) if g.is_cuda else g.float()
    transposed = x.size(-2) > x.size(-1)
    if transposed:  # iterate on the wide orientation: X X^T is the smaller Gram matrix
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    if transposed:
        x = x.mT
    return x.to(g.dtype)


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton-Schulz, for 2-D weight matrices.

    Per step: buf = momentum * buf + grad; the update is the Nesterov blend grad + momentum * buf,
    orthogonalised and scaled by sqrt(max(1, rows/cols)) so tall and wide matrices move alike; weight
    decay is decoupled (p *= 1 - lr * wd).
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                                      weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            by_shape: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.ndim != 2:
                    raise ValueError(f"Muon only updates matrices, got a parameter of shape {tuple(p.shape)}")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(mom).add_(p.grad)
                update = p.grad.add(buf, alpha=mom) if group["nesterov"] else buf
                by_shape.setdefault(tuple(p.shape), []).append((p, update))
            # Matrices of one shape are orthogonalised together as a batch: same maths, fewer calls.
            for (rows, cols), items in by_shape.items():
                updates = orthogonalize(torch.stack([u for _, u in items]), group["ns_steps"])
                scale = math.sqrt(max(1.0, rows / cols))
                for (p, _), u in zip(items, updates, strict=True):
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(u, alpha=-lr * scale)
        return loss


class Optimizers:
    """Several optimisers stepped as one (Muon + AdamW); quacks like a torch optimiser where the loop needs."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError("optimizer state does not match: different number of optimisers")
        for o, s in zip(self.optimizers, state["optimizers"], strict=True):
            o.load_state_dict(s)


def param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Split trainable parameters into ``hidden`` (2-D matrices inside the blocks), ``embed`` (the token
    embedding), ``head`` (other matrices: an untied output head) and ``gains`` (everything 1-D: norm
    gains, biases)."""
    groups: dict[str, list[nn.Parameter]] = {"hidden": [], "embed": [], "head": [], "gains": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2:
            groups["gains"].append(p)
        elif "blocks." in name:
            groups["hidden"].append(p)
        elif isinstance(model.get_submodule(name.rpartition(".")[0]), nn.Embedding):
            groups["embed"].append(p)
        else:
            groups["head"].append(p)
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig, fused: bool | None = None) -> Optimizers:
    """The optimiser(s) for ``model`` as ``cfg`` says; learning rates start at the peak (``base_lr``)."""
    g = param_groups(model)
    on_cuda = next(model.parameters()).is_cuda
    adam_kw: dict[str, Any] = {"betas": (cfg.beta1, cfg.beta2), "eps": 1e-8}
    if on_cuda:
        adam_kw["fused"] = True if fused is None else fused
    else:
        adam_kw["foreach"] = True
    groups = [
        {"params": g["embed"], "lr": cfg.embedding_lr or cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": g["head"], "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": g["gains"], "lr": cfg.lr, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "adamw":
        groups.append({"params": g["hidden"], "lr": cfg.lr, "weight_decay": cfg.weight_decay})
    opts: list[torch.optim.Optimizer] = [torch.optim.AdamW([x for x in groups if x["params"]], **adam_kw)]
    if cfg.optimizer == "muon" and g["hidden"]:
        opts.append(Muon(g["hidden"], lr=cfg.matrix_lr, momentum=cfg.muon_momentum, ns_steps=cfg.muon_ns_steps,
                         weight_decay=cfg.weight_decay))
    for o in opts:
        for group in o.param_groups:
            group["base_lr"] = group["lr"]
    return Optimizers(opts)


# ----------------------------------------------------------------------------------------------------
# Schedules: a multiplier of the peak learning rate, from the step and the fraction of the run done.


def lr_multiplier(step: int, progress: float, cfg: OptimConfig) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based) when ``progress`` (0..1) of the run
    is done: linear warm-up over ``warmup_steps``, times the decay shape (cosine, wsd or constant) of
    ``progress``, which ends at ``min_lr_frac``."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    p = min(max(progress, 0.0), 1.0)
    lo = cfg.min_lr_frac
    if cfg.schedule == "cosine":
        decay = lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * p))
    elif cfg.schedule == "wsd":
        start = 1.0 - cfg.decay_frac
        decay = 1.0 if p <= start else 1.0 - (1 - lo) * (p - start) / max(cfg.decay_frac, 1e-12)
    else:
        decay = 1.0
    return warm * decay


def set_lr(opt: Optimizers | torch.optim.Optimizer, multiplier: float) -> None:
    """Set every param group's lr to its ``base_lr`` times ``multiplier``."""
    for group in opt.param_groups:
        group["lr"] = group.get("base_lr", group["lr"]) * multiplier
