"""Differentially private training (DP-SGD): per-sample gradient clipping, Gaussian noise, and the privacy
spent, as an option of the shared training loop (``dp.enabled`` in train and finetune).

Each optimiser step computes every sample's gradient on its own (one forward and backward per sample: it
works for every module of the model, the fused head-loss autograd function and LoRA adapters included,
where ``torch.func.vmap`` does not), scales it to an L2 norm of at most ``max_grad_norm`` (C), sums them,
adds noise N(0, (noise_multiplier x C)^2) to each coordinate and divides by the batch size. The optimiser
(AdamW or Muon) only post-processes that noisy gradient, so the guarantee holds whichever it is.

Privacy accounting is opacus's (RDP by default, or PRV): epsilon after s steps for the run's delta,
sampling rate q = batch_size / records. The accountants assume each record joins a batch independently
with probability q (Poisson sampling); the loop's shuffled fixed-size batches are the usual approximation of
that (opacus makes the same one without its Poisson data loader). A "record" is a training conversation
for fine-tuning and a ``block_size`` window for pre-training (records = train tokens / block_size): the
guarantee is per window, and text repeated across many windows is protected less.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from gristmill.errors import ConfigError
from gristmill.runtime import Runtime
from gristmill.train.config import DPConfig
from gristmill.train.optim import Optimizers


def clip_factor(norm: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """The scale that brings a gradient of L2 norm ``norm`` to at most ``max_grad_norm``."""
    return (max_grad_norm / (norm + 1e-6)).clamp(max=1.0)


class DPSGD:
    """DP-SGD steps and their accounting; ``noise_multiplier`` sigma, clipping norm C, sampling rate q."""

    def __init__(self, noise_multiplier: float, max_grad_norm: float, sample_rate: float, delta: float,
                 accountant: str = "rdp") -> None:
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.sample_rate = sample_rate
        self.delta = delta
        self.accountant = accountant
        self.clipped = 0
        """Samples whose gradient was scaled down, over the steps of this attempt."""
        self.samples = 0

    def step(self, model: nn.Module, opt: Optimizers | torch.optim.Optimizer, x: torch.Tensor,
             y: torch.Tensor, rt: Runtime) -> tuple[torch.Tensor, float]:
        """One DP-SGD optimiser step on the batch x, y [b, T]. Returns the mean per-sample loss (a device
        tensor) and the mean per-sample gradient norm before clipping."""
        params = [p for p in model.parameters() if p.requires_grad]
        summed = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        b = x.size(0)
        total = torch.zeros((), device=rt.device)
        norms = torch.zeros(b, device=rt.device)  # kept on the device: no sync per sample
        has_targets = (y != -100).any(dim=1).tolist()
        for i in range(b):
            if not has_targets[i]:
                continue  # nothing to learn from this sample: it contributes a zero gradient
            xi = x[i:i + 1].to(rt.device, non_blocking=True)
            yi = y[i:i + 1].to(rt.device, non_blocking=True)
            with rt.autocast():
                _, loss = model(xi, yi)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            norm = torch.sqrt(sum(g.float().pow(2).sum() for g in grads if g is not None))
            scale = clip_factor(norm, self.max_grad_norm)
            for acc, g in zip(summed, grads, strict=True):
                if g is not None:
                    acc.add_(g.float() * scale)
            norms[i] = norm.detach()
            total += loss.detach() / b
        self.samples += b
        self.clipped += int((norms > self.max_grad_norm).sum())
        std = self.noise_multiplier * self.max_grad_norm
        for p, acc in zip(params, summed, strict=True):
            if std > 0:
                acc.add_(torch.normal(0.0, std, size=acc.shape, device=acc.device))
            p.grad = (acc / b).to(p.dtype)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total, float(norms.mean())

    def epsilon(self, steps: int) -> float:
        """Epsilon spent after ``steps`` steps at this run's delta (0 before the first; inf without noise)."""
        if steps <= 0:
            return 0.0
        if self.noise_multiplier <= 0:
            return math.inf
        import warnings

        from opacus.accountants import create_accountant

        acc = create_accountant(self.accountant)
        acc.history = [(self.noise_multiplier, self.sample_rate, steps)]
        with warnings.catch_warnings():  # "optimal order is the largest alpha": the bound is still valid
            warnings.simplefilter("ignore")
            return float(acc.get_epsilon(delta=self.delta))

    def summary(self, steps: int) -> dict[str, Any]:
        """What the manifest and report show: epsilon, delta and the mechanism's parameters."""
        return {"epsilon": round(self.epsilon(steps), 4), "delta": self.delta, "steps": steps,
                "noise_multiplier": round(self.noise_multiplier, 4), "max_grad_norm": self.max_grad_norm,
                "sample_rate": round(self.sample_rate, 6), "accountant": self.accountant,
                "clipped_fraction": round(self.clipped / self.samples, 4) if self.samples else None}


def make_dpsgd(cfg: DPConfig, n_records: int, batch_size: int, max_steps: int, key: str) -> DPSGD:
    """The DP-SGD of a run: sigma as configured, or the smallest that keeps epsilon at ``target_epsilon``
    after ``max_steps`` steps. ``n_records``: the training records batches are drawn from."""
    from gristmill.core.extras import require

    require("opacus", "privacy", f"{key}.dp")
    if n_records < 1:
        raise ConfigError(f"{key}.dp needs training records to account for; there are none")
    q = min(1.0, batch_size / n_records)
    sigma = cfg.noise_multiplier
    if sigma is None:
        import warnings

        from opacus.accountants.utils import get_noise_multiplier

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sigma = float(get_noise_multiplier(target_epsilon=cfg.target_epsilon, target_delta=cfg.delta,
                                               sample_rate=q, steps=max(1, max_steps),
                                               accountant=cfg.accountant))
    return DPSGD(sigma, cfg.max_grad_norm, q, cfg.delta, cfg.accountant)
