"""Language-model metrics: loss, perplexity and bits per byte over a token array, one definition for every
stage (training's validation, the evaluate stage, fine-tuning's before/after).

The tokens are scored as consecutive non-overlapping windows of ``block_size``: every token is predicted
exactly once, the first in the context of ``<|endoftext|>`` (as at a document start). Bits per byte divides
the total loss by the UTF-8 size of the text, which makes models with different tokenizers comparable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn as nn

from gristmill.formats.vocab import EOT_ID, IGNORE_INDEX


def eval_windows(tokens: np.ndarray, block_size: int, batch_size: int, eot_id: int,
                 max_tokens: int | None = None, rank: int = 0, world: int = 1
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches that score every token of ``tokens`` exactly once (the first in the context of an
    ``<|endoftext|>``, as at a document start), as consecutive non-overlapping windows of block_size.

    All batches of one call have the same shape (padding predicts -100), so a compiled model sees one
    shape; it is [batch_size, block_size] cut to what the tokens fill (a long-context model scoring a few
    thousand tokens does not pad to its whole context). ``max_tokens`` scores only the first that many
    tokens; ranks take every world-th batch (and all ranks get the same number of batches, the last ones
    all padding if need be).
    """
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens)
    seq = np.concatenate([np.array([eot_id], dtype=np.int64), np.asarray(tokens[:n], dtype=np.int64)])
    n_windows = -(-n // block_size)
    n_batches = -(-n_windows // batch_size)
    per_rank = -(-n_batches // world)  # every rank runs as many forwards (FSDP needs them in step)
    rows, width = min(batch_size, max(n_windows, 1)), min(block_size, max(n, 1))
    for b in range(rank, per_rank * world, world):
        x = torch.zeros(rows, width, dtype=torch.long)
        y = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)  # b >= n_batches: padding
        for i in range(rows):
            w = b * rows + i
            if w >= n_windows:
                break
            s = w * block_size
            chunk = torch.from_numpy(seq[s:s + block_size + 1])
            x[i, :len(chunk) - 1] = chunk[:-1]
            y[i, :len(chunk) - 1] = chunk[1:]
        yield x, y


@torch.no_grad()
def sum_loss(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
             autocast: Callable[[], object] | None = None,
             reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[float, int]:
    """Sum of the loss in nats over every target != -100, and their count. ``reduce`` sums across
    processes (training under torchrun); the model's train/eval mode is restored."""
    import contextlib

    was_training = model.training
    model.eval()
    nats = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            with autocast() if autocast is not None else contextlib.nullcontext():
                _, loss = model(x, y)
            n = (y != IGNORE_INDEX).sum()
            if n > 0:
                nats += loss.double() * n
                count += n
    finally:
        model.train(was_training)
    if reduce is not None:
        nats, count = reduce(nats), reduce(count)
    return float(nats), int(count)


def lm_metrics(nats: float, tokens: int, n_bytes: int) -> dict[str, float | int]:
    """The metrics of a summed loss: nats per token, perplexity, bits per byte, and the counts."""
    loss = nats / tokens if tokens else float("nan")
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)) if tokens else float("nan"),  # exp overflows past ~709
        "bits_per_byte": nats / (n_bytes * math.log(2)) if n_bytes else float("nan"),
        "tokens": tokens,
        "bytes": n_bytes,
    }


def evaluate_lm(model: nn.Module, tokens: np.ndarray, n_bytes: int, *, batch_size: int = 8,
                eot_id: int = EOT_ID, device: str | torch.device | None = None,
                autocast: Callable[[], object] | None = None) -> dict[str, float | int]:
    """Loss, perplexity and bits per byte of ``model`` on a flat token array whose text is ``n_bytes``
    UTF-8 bytes; every token is predicted once, with up to ``block_size`` tokens of context."""
    from gristmill.errors import InputError
    from gristmill.model.gpt import unwrap

    if len(tokens) < 1:
        raise InputError("evaluation needs at least 1 token")
    if n_bytes <= 0:
        raise InputError(f"evaluation needs the byte count of the text, got {n_bytes}")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    block = unwrap(model).config.block_size
    nats, n = sum_loss(model, eval_windows(tokens, block, batch_size, eot_id), dev, autocast)
    return lm_metrics(nats, n, n_bytes)


def prefix_bytes(tokens: np.ndarray, decode: Callable[[list[int]], str]) -> int:
    """The UTF-8 size of exactly the text a prefix of the token array encodes (byte-level BPE is lossless)."""
    return len(decode(np.asarray(tokens).tolist()).encode("utf-8"))



def text_tokens(tokenizer, texts: Iterable[str], max_chars: int | None = None,
                max_tokens: int | None = None) -> tuple[np.ndarray, int, int]:
    """What a model scores for ``texts``: each text's tokens followed by ``<|endoftext|>`` (as the tokenize
    stage writes ``val.bin``), the UTF-8 bytes of the text, and how many texts were used. ``max_chars``
    cuts the texts after that many characters in total (the last one mid-way), so every tokenizer reads
    exactly the same text and bits per byte compare across models. ``max_tokens`` stops encoding once that
    many tokens are there and keeps exactly that many (the bytes are then those of the text they encode)."""
    from gristmill.tokenizer.bpe import encode_documents

    kept, left = [], max_chars
    for t in texts:
        if left is not None:
            if left <= 0:
                break
            t = t[:left]
            left -= len(t)
        kept.append(t)
    ids: list[int] = []
    used = 0
    for doc_ids in encode_documents(tokenizer, kept):
        ids += doc_ids
        ids.append(EOT_ID)
        used += 1
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    tokens = np.asarray(ids, dtype=np.int64)
    if max_tokens is not None and len(tokens) > max_tokens:
        tokens = tokens[:max_tokens]
        return tokens, prefix_bytes(tokens, lambda i: tokenizer.decode(i, skip_special_tokens=True)), used
    return tokens, sum(len(t.encode("utf-8")) for t in kept[:used]), used
