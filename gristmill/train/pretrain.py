"""The train stage: pre-train the transformer on the tokenize stage's token files.

Reads ``tokenize/{train.bin, val.bin, meta.json, tokenizer.json}``, runs ``fit`` and writes ``model/``
(the model directory), ``checkpoints/`` and ``metrics.jsonl``. Under torchrun every rank calls
``run_train``; only rank 0 writes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gristmill.errors import InputError
from gristmill.model import GPT
from gristmill.runtime import setup_runtime
from gristmill.train.config import TrainConfig
from gristmill.train.data import RandomWindows, eval_windows, load_tokens, read_meta
from gristmill.train.loop import fit
from gristmill.workspace import StageContext


@dataclass
class TokenEvalData:
    """The validation split as ``EvalData`` for ``fit``: consecutive windows covering every token."""

    tokens: np.ndarray
    block_size: int
    batch_size: int
    eot_id: int
    rank: int = 0
    world: int = 1

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def batches(self, max_tokens: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return eval_windows(self.tokens, self.block_size, self.batch_size, self.eot_id, max_tokens,
                            self.rank, self.world)


def run_train(ctx: StageContext, cfg: TrainConfig) -> dict[str, Any]:
    """Pre-train on ``tokenize``'s output; returns the stats recorded in the stage manifest."""
    t_start = time.monotonic()
    tok_dir = ctx.input_dir("tokenize")
    meta = read_meta(tok_dir)
    tokenizer = tok_dir / "tokenizer.json"
    if not tokenizer.is_file():
        raise InputError(f"{tokenizer} is missing: re-run `gristmill tokenize`")
    train_tokens = load_tokens(tok_dir / "train.bin", meta["dtype"])
    val_tokens = load_tokens(tok_dir / "val.bin", meta["dtype"])
    if len(val_tokens) == 0:
        raise InputError(f"{tok_dir / 'val.bin'} is empty: the prepare stage must leave some validation text")

    rt = setup_runtime(cfg.device, cfg.compile, cfg.threads, ctx.seed)
    mcfg = cfg.model.model_copy(update={"vocab_size": int(meta["vocab_size"])})
    model = GPT(mcfg)
    block = mcfg.block_size
    train_data = RandomWindows(train_tokens, block, cfg.batch_size, seed=ctx.seed, rank=rt.dist.rank,
                               world=rt.dist.world_size)
    val_data = TokenEvalData(val_tokens, block, cfg.eval_batch_size, int(meta["eot_id"]), rt.dist.rank,
                             rt.dist.world_size)
    if rt.dist.is_main:
        ctx.log(f"[train] {model.num_params():,} parameters; {len(train_tokens):,} train / {len(val_tokens):,} "
                f"val tokens; device {rt.device} ({rt.dtype_name}), {rt.dist.world_size} process(es), "
                f"compile {'on' if rt.compile else 'off'}")

    res = fit(model, cfg, rt, train_data, val_data, ctx.out_dir, ctx.fingerprint, log=ctx.log,
              tokens_per_step=cfg.batch_size * block, start_time=t_start, run_name=ctx.run_dir.name,
              params=cfg.model_dump(mode="json"))

    if rt.dist.is_main:
        from gristmill.model import save_model

        save_model(ctx.out_dir / "model", res.model, tokenizer)
    val_bytes = int(meta["splits"]["val"]["bytes"])
    bpb = res.val_nats / (val_bytes * math.log(2)) if val_bytes and res.val_tokens == len(val_tokens) else None
    st = res.state
    return {
        "parameters": res.model.num_params(),
        "steps": st.step,
        "tokens_seen": st.tokens_seen,
        "tokens_per_s": round(res.tokens_per_s, 1),
        "train_loss": None if res.train_loss is None else round(res.train_loss, 5),
        "val_loss": None if res.val_loss is None else round(res.val_loss, 5),
        "val_bits_per_byte": None if bpb is None else round(bpb, 5),
        "val_tokens": res.val_tokens,
        "val_bytes": val_bytes,
        "best_val_loss": st.best_val_loss,
        "best_step": st.best_step,
        "stopped_by": st.stopped_by,
        "resumed_from_step": res.resumed_from,
        "train_seconds": round(st.elapsed, 2),
        "peak_rss_mb": round(res.peak_rss_mb, 1),
        "device": str(rt.device),
        "processes": rt.dist.world_size,
    }
