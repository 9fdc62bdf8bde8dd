"""finetune: supervised fine-tuning of the pre-trained model on the synthetic chat data.

Reads ``train/model/`` (the base model dir), ``synth/{train,val}.jsonl`` and ``tokenize/{val.bin,
meta.json}``; writes ``model/`` (a model dir), ``checkpoints/``, ``metrics.jsonl`` and ``eval.json``.

Each conversation is rendered with the ChatML template (:mod:`gristmill.chat`) and becomes one row of a
batch, padded with ``<|pad|>`` to the longest row (or to ``block_size`` when compiling): the loss is on
assistant tokens only (targets are -100 elsewhere). Conversations longer than the model's ``block_size``
are cut at the end and counted. The loop is the one pre-training uses (``gristmill.train.fit``), so
resume, checkpoints, the schedule, the time budget and tracking behave the same.

``eval.json`` compares the model before and after: the chat loss on synth's val conversations
(assistant tokens, nats per token) and the language-model loss and bits per byte on tokenize's
``val.bin``, which shows what fine-tuning cost the base model's general text modelling.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from tokenizers import Tokenizer

from gristmill.chat import ChatFormatError, encode_chat
from gristmill.errors import InputError
from gristmill.model import IGNORE_INDEX, load_model, save_model
from gristmill.runtime import setup_runtime
from gristmill.tokenize import PAD_ID, load_tokenizer
from gristmill.train import LoopConfig, evaluate, fit, load_tokens, read_meta
from gristmill.workspace import StageContext, write_json


class FinetuneConfig(LoopConfig):
    """Supervised fine-tuning: the pre-training loop's keys, with defaults for a short, gentle run."""

    max_steps: int = Field(200, ge=0)
    """Optimiser steps to run (the schedule's length unless the time budget ends the run first)."""
    batch_size: int = Field(16, ge=1)
    """Conversations per optimiser step, over all processes and accumulation steps."""
    lr: float = Field(1e-3, gt=0)
    """Peak AdamW learning rate (lower than pre-training: the model already knows the language)."""
    weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay on weight matrices (off by default for a short fine-tune)."""
    warmup_steps: int = Field(10, ge=0)
    """Linear warm-up from 0 over this many optimiser steps."""
    eval_every: int = Field(50, ge=0)
    """Chat validation loss every this many steps (0 = only at the end)."""
    eval_tokens: int | None = Field(None, ge=1)
    """Assistant tokens used by periodic chat validations (None = every val conversation)."""
    eval_batch_size: int = Field(16, ge=1)
    """Conversations per forward pass when validating."""
    checkpoint_every: int = Field(100, ge=0)
    """Write a resumable checkpoint every this many steps (0 = only at the end)."""
    lm_eval_tokens: int | None = Field(16384, ge=0)
    """Tokens of tokenize's val.bin for the language-model loss before and after (None = all, 0 = skip)."""


@dataclass
class ChatExamples:
    """Tokenised conversations: ``ids`` and aligned ``labels`` (-100 off assistant tokens) per example."""

    ids: list[np.ndarray]
    labels: list[np.ndarray]
    truncated: int = 0
    """Conversations cut to fit ``block_size + 1`` tokens."""
    dropped: int = 0
    """Conversations with no assistant token left after the cut (not used)."""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def target_tokens(self) -> int:
        """Tokens that carry loss (shifted, as the model predicts them)."""
        return int(sum((lab[1:] != IGNORE_INDEX).sum() for lab in self.labels))


def read_chat_records(path: Path) -> Iterator[dict[str, Any]]:
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise InputError(
            f"cannot read chat records from {path}: {e.strerror}; re-run `gristmill synth`"
        ) from e
    with f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except ValueError as e:
                    raise InputError(f"{path}:{lineno} is not valid JSON ({e})") from e
                if not isinstance(rec, dict) or "messages" not in rec:
                    raise InputError(f"{path}:{lineno} is not a chat record (no 'messages')")
                yield {**rec, "_where": f"{path}:{lineno}"}


def encode_examples(
    tokenizer: Tokenizer, records: Sequence[dict[str, Any]] | Iterator[dict[str, Any]], block_size: int
) -> ChatExamples:
    """Tokenise chat records with the template; cut each to ``block_size + 1`` tokens (inputs and targets)."""
    out = ChatExamples([], [])
    for rec in records:
        try:
            ids, labels = encode_chat(tokenizer, rec["messages"])
        except ChatFormatError as e:
            raise InputError(f"{rec.get('_where', 'chat record')}: {e}") from None
        if len(ids) > block_size + 1:
            ids, labels = ids[: block_size + 1], labels[: block_size + 1]
            out.truncated += 1
        lab = np.asarray(labels, dtype=np.int64)
        if not (lab[1:] != IGNORE_INDEX).any():
            out.dropped += 1
            continue
        out.ids.append(np.asarray(ids, dtype=np.int64))
        out.labels.append(lab)
    return out


def pad_batch(
    ex: ChatExamples, idx: Sequence[int], width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x and targets y [len(idx), W] for examples ``idx``: x = ids[:-1] padded with ``<|pad|>``,
    y = labels[1:] padded with -100. W is the longest row unless ``width`` is given."""
    w = width or max(len(ex.ids[i]) - 1 for i in idx)
    x = torch.full((len(idx), w), PAD_ID, dtype=torch.long)
    y = torch.full((len(idx), w), IGNORE_INDEX, dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(ex.ids[i]) - 1
        x[row, :n] = torch.from_numpy(ex.ids[i][:-1])
        y[row, :n] = torch.from_numpy(ex.labels[i][1:])
    return x, y


class ChatBatches:
    """Training batches (``BatchSource``): shuffled epochs over the examples, reproducible by step.

    The global batch of step s is the examples at positions s*B .. s*B+B-1 of the sequence of epochs,
    each epoch a permutation drawn from ``default_rng([seed, epoch])``; process ``rank`` takes its share.
    So the step alone says where training is, and a resumed run sees the same data.
    """

    def __init__(
        self,
        ex: ChatExamples,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        width: int | None = None,
    ):
        if len(ex) == 0:
            raise InputError("no chat examples to fine-tune on (synth's train.jsonl is empty after encoding)")
        if batch_size % world:
            raise InputError(f"finetune.batch_size {batch_size} is not divisible by the {world} processes")
        self.ex, self.batch_size, self.seed, self.rank, self.world, self.width = (
            ex,
            batch_size,
            seed,
            rank,
            world,
            width,
        )
        self.step = 0
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.ex))}
        return self._perms[epoch]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.ex)
        pos = range(self.step * self.batch_size, (self.step + 1) * self.batch_size)
        idx = [int(self._perm(p // n)[p % n]) for p in pos]
        # one width for the whole global batch, so every process's share has the same shape
        width = self.width or max(len(self.ex.ids[i]) - 1 for i in idx)
        share = self.batch_size // self.world
        self.step += 1
        return pad_batch(self.ex, idx[self.rank * share : (self.rank + 1) * share], width)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


@dataclass
class ChatEvalData:
    """The val conversations as ``EvalData`` for ``fit``; token counts are assistant (target) tokens."""

    ex: ChatExamples
    batch_size: int
    rank: int = 0
    world: int = 1
    width: int | None = None

    @property
    def n_tokens(self) -> int:
        return self.ex.target_tokens

    def batches(self, max_tokens: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of the first conversations holding ``max_tokens`` target tokens (None: all of them)."""
        keep, seen = [], 0
        for i, lab in enumerate(self.ex.labels):
            if max_tokens is not None and seen >= max_tokens:
                break
            keep.append(i)
            seen += int((lab[1:] != IGNORE_INDEX).sum())
        chunks = [keep[s : s + self.batch_size] for s in range(0, len(keep), self.batch_size)]
        for b in range(self.rank, len(chunks), self.world):
            yield pad_batch(self.ex, chunks[b], self.width)


def lm_eval(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    tok_dir: Path,
    max_tokens: int | None,
    batch_size: int,
    device: torch.device,
) -> dict[str, Any] | None:
    """Language-model loss and bits per byte on the start of tokenize's ``val.bin`` (None if skipped)."""
    from gristmill.evaluate import evaluate_lm

    if max_tokens == 0:
        return None
    meta = read_meta(tok_dir)
    tokens = load_tokens(tok_dir / "val.bin", meta["dtype"])
    n_bytes = int(meta["splits"]["val"]["bytes"])
    if max_tokens is not None and max_tokens < len(tokens):
        tokens = np.asarray(tokens[:max_tokens])
        # the UTF-8 size of exactly the text these tokens encode (byte-level BPE is lossless)
        n_bytes = len(tokenizer.decode(tokens.tolist(), skip_special_tokens=True).encode("utf-8"))
    if len(tokens) < 2 or n_bytes == 0:
        return None
    return {**evaluate_lm(model, tokens, n_bytes, batch_size, device), "bytes": n_bytes}


def _rounded(d: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if d is None else {k: round(v, 5) if isinstance(v, float) else v for k, v in d.items()}


def run_finetune(ctx: StageContext, cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune ``train/model`` on ``synth/train.jsonl``; write the model, metrics and before/after eval."""
    t_start = time.monotonic()
    base_dir = ctx.input_dir("train") / "model"
    synth_dir, tok_dir = ctx.input_dir("synth"), ctx.input_dir("tokenize")
    rt = setup_runtime(cfg.device, cfg.compile, cfg.threads, ctx.seed)
    main = rt.dist.is_main
    model = load_model(base_dir, rt.device)
    tokenizer = load_tokenizer(base_dir)
    block = model.config.block_size
    width = block if rt.compile else None  # a compiled model wants one shape

    train_ex = encode_examples(tokenizer, read_chat_records(synth_dir / "train.jsonl"), block)
    val_ex = encode_examples(tokenizer, read_chat_records(synth_dir / "val.jsonl"), block)
    if len(val_ex) == 0:
        raise InputError(
            f"{synth_dir / 'val.jsonl'} has no usable conversations: synth needs validation "
            f"documents (prepare's val split) to measure fine-tuning"
        )
    train_data = ChatBatches(train_ex, cfg.batch_size, ctx.seed, rt.dist.rank, rt.dist.world_size, width)
    val_data = ChatEvalData(val_ex, cfg.eval_batch_size, rt.dist.rank, rt.dist.world_size, width)
    if main:
        ctx.log(
            f"[finetune] {len(train_ex)} train / {len(val_ex)} val conversations "
            f"({train_ex.truncated} + {val_ex.truncated} cut to {block} tokens, "
            f"{train_ex.dropped + val_ex.dropped} dropped); base model {base_dir}"
        )

    # Scores of the base model, kept beside the checkpoints so a resumed attempt does not redo them.
    before_path = ctx.out_dir / "checkpoints" / "before.json"
    before = json.loads(before_path.read_text(encoding="utf-8")) if before_path.is_file() else None
    if before is None or before.get("fingerprint") != ctx.fingerprint:
        t0 = time.monotonic()
        nats, n = evaluate(model, val_data.batches(None), rt)
        lm = lm_eval(model, tokenizer, tok_dir, cfg.lm_eval_tokens, cfg.eval_batch_size, rt.device)
        before = {
            "fingerprint": ctx.fingerprint,
            "chat": {"loss": nats / n, "tokens": n},
            "lm": lm,
            "lm_seconds": time.monotonic() - t0,
        }
        if main:
            write_json(before_path, before)
    # The budget must also cover the final LM evaluation done after fit returns: start its clock that
    # much earlier (fit already reserves time for its own final chat evaluation and checkpoint).
    lm_reserve = before["lm_seconds"] if before["lm"] is not None else 0.0

    mean_len = sum(len(i) - 1 for i in train_ex.ids) / len(train_ex)  # tokens per row before padding
    res = fit(
        model,
        cfg,
        rt,
        train_data,
        val_data,
        ctx.out_dir,
        ctx.fingerprint,
        log=ctx.log,
        tokens_per_step=round(cfg.batch_size * mean_len),
        start_time=t_start - lm_reserve,
        run_name=f"{ctx.run_dir.name}-finetune",
        params=cfg.model_dump(mode="json"),
        key_prefix="finetune",
    )

    if not main:
        return {}
    save_model(ctx.out_dir / "model", res.model, base_dir / "tokenizer.json")
    after_lm = lm_eval(res.model, tokenizer, tok_dir, cfg.lm_eval_tokens, cfg.eval_batch_size, rt.device)
    chat_after = {"loss": res.val_loss, "tokens": res.val_tokens}
    result = {
        "base_model": "train/model",
        "chat_val": {
            "before": _rounded(before["chat"]),
            "after": _rounded(chat_after),
            "examples": len(val_ex),
            "unit": "nats per assistant token",
        },
        "lm_val": None
        if before["lm"] is None
        else {
            "before": _rounded(before["lm"]),
            "after": _rounded(after_lm),
            "split": "tokenize/val.bin",
            "max_tokens": cfg.lm_eval_tokens,
        },
    }
    write_json(ctx.out_dir / "eval.json", result)
    st = res.state
    chat_b, chat_a = before["chat"]["loss"], res.val_loss
    ctx.log(
        f"[finetune] chat val loss {chat_b:.4f} -> {chat_a:.4f}"
        + (
            f"; LM bits/byte {before['lm']['bits_per_byte']:.4f} -> {after_lm['bits_per_byte']:.4f}"
            if before["lm"] and after_lm
            else ""
        )
    )
    return {
        "steps": st.step,
        "stopped_by": st.stopped_by,
        "resumed_from_step": res.resumed_from,
        "train_examples": len(train_ex),
        "val_examples": len(val_ex),
        "truncated": train_ex.truncated + val_ex.truncated,
        "dropped": train_ex.dropped + val_ex.dropped,
        "train_loss": None if res.train_loss is None else round(res.train_loss, 5),
        "chat_val_loss_before": round(chat_b, 5),
        "chat_val_loss_after": None if chat_a is None else round(chat_a, 5),
        "tokens_per_s": round(res.tokens_per_s, 1),
        "train_seconds": round(st.elapsed, 2),
        "device": str(rt.device),
        # only when the LM evaluation ran (lm_eval_tokens != 0)
        **(
            {
                "lm_val_bpb_before": round(before["lm"]["bits_per_byte"], 5),
                "lm_val_bpb_after": round(after_lm["bits_per_byte"], 5),
            }
            if before["lm"] and after_lm
            else {}
        ),
    }
