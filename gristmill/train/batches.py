"""Token data for training: the tokenize stage's flat token files, batch sources and validation windows.

A batch source is anything with ``next_batch() -> (x, y)`` (this process's share of one optimiser step,
int64 tensors [b, T] on the CPU, targets of -100 ignored) plus ``state_dict()`` / ``load_state_dict()``
so a checkpoint can record where it is. A source of packed rows (``PackedChatBatches``) returns
``(x, y, segments)``: the third tensor [b, T] goes to the model's ``segments`` argument. ``RandomWindows`` (pre-training) draws the batch of step s from a
generator seeded by (seed, s): the data a step sees does not depend on how many processes share it or on
whether the run was interrupted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from gristmill.errors import InputError
from gristmill.eval.lm import eval_windows
from gristmill.formats.vocab import IGNORE_INDEX
from gristmill.train.sft import ChatExamples, PackedRows, pad_batch


class BatchSource(Protocol):
    def next_batch(self) -> tuple[torch.Tensor, ...]: ...  # (x, y) or, for packed rows, (x, y, segments)
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def read_meta(tok_dir: Path) -> dict[str, Any]:
    """``meta.json`` of a tokenize output folder, checked for the keys training needs."""
    path = Path(tok_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        for key in ("dtype", "vocab_size", "eot_id"):
            meta[key]  # noqa: B018 - presence check
        for split in ("train", "val"):
            meta["splits"][split]["bytes"]  # noqa: B018
    except FileNotFoundError as e:
        raise InputError(f"{path} is missing: run `gristmill tokenize` first") from e
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path} is not a valid token meta file (problem with {e}); re-run tokenize") from e
    return meta


def load_tokens(path: Path, dtype: str) -> np.ndarray:
    """Memory-map a flat little-endian token file (uint16 or uint32)."""
    path = Path(path)
    if dtype not in ("uint16", "uint32"):
        raise InputError(f"unsupported token dtype '{dtype}' in meta.json (expected uint16 or uint32)")
    if not path.is_file():
        raise InputError(f"{path} is missing: run `gristmill tokenize` first")
    np_dtype = np.dtype(dtype).newbyteorder("<")
    if path.stat().st_size % np_dtype.itemsize:
        raise InputError(f"{path} has a size that is not a whole number of {dtype} tokens: re-run tokenize")
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=np_dtype)
    return np.memmap(path, dtype=np_dtype, mode="r")


class RandomWindows:
    """Random (block_size + 1)-token windows of a token array; the batch of step s is reproducible.

    Each step draws ``batch_size`` window starts (the global batch) from ``default_rng([seed, s])``;
    process ``rank`` of ``world`` takes its contiguous share of them.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int,
                 rank: int = 0, world: int = 1):
        if len(tokens) < block_size + 2:
            raise InputError(f"only {len(tokens)} training tokens, fewer than one window of "
                             f"{block_size + 1}: lower model.block_size or add data")
        if batch_size % world:
            raise InputError(f"batch_size {batch_size} is not divisible by the {world} processes")
        self.tokens, self.block_size, self.batch_size, self.seed = tokens, block_size, batch_size, seed
        self.rank, self.world = rank, world
        self.step = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.step])
        starts = rng.integers(0, len(self.tokens) - self.block_size - 1, size=self.batch_size)
        share = self.batch_size // self.world
        starts = starts[self.rank * share:(self.rank + 1) * share]
        win = np.stack([np.asarray(self.tokens[s:s + self.block_size + 1], dtype=np.int64) for s in starts])
        self.step += 1
        win_t = torch.from_numpy(win)
        return win_t[:, :-1], win_t[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


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


class PackedChatBatches:
    """Training batches (``BatchSource``) of packed chat rows: ``(x, y, segments)``, reproducible by step.

    Like ``ChatBatches`` over rows instead of conversations: the global batch of step s is the rows at
    positions s*B .. s*B+B-1 of the sequence of epochs, each a permutation drawn from
    ``default_rng([seed, epoch])``; process ``rank`` takes its share. Every row is ``rows.width`` wide,
    so every batch has one shape (what a compiled model wants).
    """

    def __init__(self, rows: PackedRows, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if len(rows) == 0:
            raise InputError("no chat examples to fine-tune on (synth's train.jsonl is empty after packing)")
        if batch_size % world:
            raise InputError(f"finetune.batch_size {batch_size} is not divisible by the {world} processes")
        self.rows, self.batch_size, self.seed, self.rank, self.world = rows, batch_size, seed, rank, world
        self.step = 0
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))}
        return self._perms[epoch]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n = len(self.rows)
        share = self.batch_size // self.world
        first = self.step * self.batch_size + self.rank * share
        idx = np.array([self._perm(p // n)[p % n] for p in range(first, first + share)])
        self.step += 1
        r = self.rows
        return (torch.from_numpy(r.x[idx]), torch.from_numpy(r.y[idx]),  # [b,T] each
                torch.from_numpy(r.segments[idx]))

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
