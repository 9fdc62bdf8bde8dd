"""evaluate: held-out loss, perplexity and bits per byte of the pre-trained model, plus samples.

Every token of the validation split is predicted exactly once: the split is cut into non-overlapping
windows of ``block_size + 1`` tokens that share their edge token (the last target of one window is the
first input of the next), so the model sees up to ``block_size`` tokens of context. Bits per byte divides
the total loss by the UTF-8 size of the text, which makes models with different tokenizers comparable.

Writes ``eval.json``: the metrics, the sampling settings and one sample per prompt.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from gristmill.config import Config
from gristmill.errors import InputError
from gristmill.generate import SamplingParams, generate, load_for_inference
from gristmill.model import unwrap
from gristmill.runtime import autocast, resolve_device
from gristmill.workspace import StageContext, read_json, write_json


class EvaluateConfig(Config):
    """Held-out metrics of the pre-trained model and samples from fixed prompts."""

    batch_size: int = Field(8, ge=1)
    """Windows of ``block_size`` tokens evaluated per forward pass."""
    max_tokens: int | None = Field(None, ge=2)
    """Evaluate only the first this many validation tokens (None = the whole split), for speed."""
    prompts: list[str] = ["The ", "Once upon a time", "Hamlet.\n"]
    """Prompts to sample from (plain text; the base model has not seen the chat template)."""
    max_new_tokens: int = Field(64, ge=0)
    """Tokens to generate per sample."""
    temperature: float = Field(0.8, ge=0)
    """Sampling temperature (0 = greedy)."""
    top_k: int | None = Field(50, ge=0)
    """Sample among the k most likely tokens (None or 0 = all)."""
    top_p: float | None = Field(None, gt=0, le=1)
    """Nucleus sampling threshold (None = off)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""


@torch.no_grad()
def evaluate_lm(model: torch.nn.Module, tokens: np.ndarray, n_bytes: int, batch_size: int = 8,
                device: str | torch.device | None = None) -> dict[str, float | int]:
    """Loss (nats/token), perplexity and bits per byte of ``model`` on a flat token array.

    Every token after the first is predicted once, from up to ``block_size`` tokens of context.
    ``n_bytes`` is the UTF-8 size of the text the tokens encode. The model's train/eval mode is restored.
    """
    if len(tokens) < 2:
        raise InputError(f"evaluation needs at least 2 tokens, got {len(tokens)}")
    if n_bytes <= 0:
        raise InputError(f"evaluation needs the byte count of the text, got {n_bytes}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    T = unwrap(model).config.block_size
    tokens = np.asarray(tokens)
    n_pred = len(tokens) - 1
    starts = list(range(0, n_pred, T))
    was_training = model.training
    model.eval()
    total_nats = 0.0
    try:
        for b in range(0, len(starts), batch_size):
            chunk = starts[b:b + batch_size]
            # The last window may be short: pad inputs with token 0 and targets with -100 (ignored).
            x = torch.zeros((len(chunk), T), dtype=torch.long)
            y = torch.full((len(chunk), T), -100, dtype=torch.long)
            for row, s in enumerate(chunk):
                n = min(T, n_pred - s)
                window = torch.from_numpy(tokens[s:s + n + 1].astype(np.int64))  # n inputs + 1 more target
                x[row, :n], y[row, :n] = window[:-1], window[1:]
            x, y = x.to(device), y.to(device)
            with autocast(device):
                logits, _ = model(x)  # [B,T,V]
            nats = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1),
                                   ignore_index=-100, reduction="sum")
            total_nats += float(nats)
    finally:
        model.train(was_training)
    loss = total_nats / n_pred
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),  # exp overflows a float past ~709
        "bits_per_byte": total_nats / (n_bytes * math.log(2)),
        "tokens": n_pred,
    }


def read_split(tokenize_dir: Any, split: str) -> tuple[np.ndarray, int]:
    """The token array and UTF-8 byte count of a split written by the tokenize stage."""
    meta = read_json(tokenize_dir / "meta.json")
    info = meta.get("splits", {}).get(split)
    path = tokenize_dir / f"{split}.bin"
    if info is None or not path.is_file():
        raise InputError(f"{tokenize_dir} has no '{split}' split ({path.name} / meta.json splits.{split}); "
                         f"re-run `gristmill tokenize`")
    tokens = np.fromfile(path, dtype=np.dtype(meta["dtype"]).newbyteorder("<"))
    return tokens, int(info["bytes"])


def run_evaluate(ctx: StageContext, cfg: EvaluateConfig) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    model_dir = ctx.input_dir("train") / "model"
    model, tokenizer = load_for_inference(model_dir, device)
    tokens, n_bytes = read_split(ctx.input_dir("tokenize"), "val")
    if len(tokens) < 2:
        raise InputError(f"the validation split has {len(tokens)} tokens; make prepare's validation "
                         f"split larger (prepare.val_fraction) and re-run")
    capped = cfg.max_tokens is not None and cfg.max_tokens < len(tokens)
    if capped:
        tokens = tokens[:cfg.max_tokens]
        # the byte count of exactly the text these tokens encode (byte-level BPE is lossless)
        n_bytes = max(1, len(tokenizer.decode(tokens.tolist(), skip_special_tokens=True).encode("utf-8")))
    ctx.log(f"[evaluate] {len(tokens):,} validation tokens ({n_bytes:,} bytes) on {device}")
    t0 = time.time()
    metrics = evaluate_lm(model, tokens, n_bytes, cfg.batch_size, device)
    ctx.log(f"[evaluate] loss {metrics['loss']:.4f}, perplexity {metrics['perplexity']:.2f}, "
            f"bits per byte {metrics['bits_per_byte']:.4f} ({time.time() - t0:.1f}s)")

    samples = []
    for i, prompt in enumerate(cfg.prompts):
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                top_k=cfg.top_k or None, top_p=cfg.top_p, seed=ctx.seed + i)
        out = generate(model, tokenizer, prompt, params, truncate=True)
        samples.append({"prompt": prompt, "completion": out.text, "finish_reason": out.finish_reason,
                        "completion_tokens": out.completion_tokens})
        ctx.log(f"[evaluate] sample {i}: {prompt!r} -> {out.text[:80]!r}")

    result = {
        "model": "train/model",
        "split": "val",
        **metrics,
        "bytes": n_bytes,
        "capped": capped,
        "sampling": {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                     "top_k": cfg.top_k, "top_p": cfg.top_p, "seed": ctx.seed},
        "samples": samples,
    }
    write_json(ctx.out_dir / "eval.json", result)
    return {**metrics, "bytes": n_bytes, "capped": capped, "samples": len(samples)}
