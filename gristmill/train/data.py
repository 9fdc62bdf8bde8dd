"""Token data for training: the tokenize stage's flat token files, batch sources and validation windows.

A batch source is anything with ``next_batch() -> (x, y)`` (this process's share of one optimiser step,
int64 tensors [b, T] on the CPU, targets of -100 ignored) plus ``state_dict()`` / ``load_state_dict()``
so a checkpoint can record where it is. ``RandomWindows`` (pre-training) draws the batch of step s from a
generator seeded by (seed, s): the data a step sees does not depend on how many processes share it or on
whether the run was interrupted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from gristmill.errors import InputError
from gristmill.model import IGNORE_INDEX


class BatchSource(Protocol):
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]: ...
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


def eval_windows(tokens: np.ndarray, block_size: int, batch_size: int, eot_id: int,
                 max_tokens: int | None = None, rank: int = 0, world: int = 1
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches that score every token of ``tokens`` exactly once (the first in the context of an
    ``<|endoftext|>``, as at a document start), as consecutive non-overlapping windows of block_size.

    All batches have the full shape [batch_size, block_size] (padding predicts -100), so a compiled model
    sees one shape. ``max_tokens`` scores only the first that many tokens; ranks take every world-th batch
    (and all ranks get the same number of batches, the last ones all padding if need be).
    """
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens)
    seq = np.concatenate([np.array([eot_id], dtype=np.int64), np.asarray(tokens[:n], dtype=np.int64)])
    n_windows = -(-n // block_size)
    n_batches = -(-n_windows // batch_size)
    per_rank = -(-n_batches // world)  # every rank runs as many forwards (FSDP needs them in step)
    for b in range(rank, per_rank * world, world):
        x = torch.zeros(batch_size, block_size, dtype=torch.long)
        y = torch.full((batch_size, block_size), IGNORE_INDEX, dtype=torch.long)  # b >= n_batches: padding
        for i in range(batch_size):
            w = b * batch_size + i
            if w >= n_windows:
                break
            s = w * block_size
            chunk = torch.from_numpy(seq[s:s + block_size + 1])
            x[i, :len(chunk) - 1] = chunk[:-1]
            y[i, :len(chunk) - 1] = chunk[1:]
        yield x, y
