"""The one sampler: sampling parameters, picking the next token, stop strings and UTF-8-safe decoding.

Every generation path (``gristmill generate``, the evaluate stage's samples, the server) samples through
:func:`sample_next` and decodes through :class:`IncrementalDecoder`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from gristmill.formats.vocab import EOT_ID, IM_END_ID

DEFAULT_STOP_IDS = (IM_END_ID, EOT_ID)
"""Generation ends at ``<|im_end|>`` (end of a chat turn) and ``<|endoftext|>`` (end of a document)."""
MAX_SEED = 2**63 - 1
"""Largest seed torch's generator takes."""


@dataclass
class SamplingParams:
    """How to pick tokens and when to stop."""

    max_new_tokens: int = 128
    """Most tokens to generate (fewer if the context window fills first)."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (always the most likely token)."""
    top_k: int | None = None
    """Sample only among the k most likely tokens (None or 0 = all)."""
    top_p: float | None = None
    """Nucleus sampling: the smallest set of tokens whose probabilities add up to p (None or 1 = all)."""
    stop: Sequence[str] = ()
    """Strings that end generation; the stop string itself is not part of the output."""
    stop_token_ids: Sequence[int] = DEFAULT_STOP_IDS
    """Token ids that end generation; they are not part of the output text."""
    seed: int | None = None
    """Seed of the sampling generator, for reproducible samples (None = fresh randomness)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {self.seed}")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(s for s in self.stop if s)


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick the next token id from the logits [V] of the last position."""
    logits = logits.float()
    if params.temperature == 0:
        return int(logits.argmax())
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.size(-1):
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p is not None and params.top_p < 1:
        sorted_p, order = torch.sort(probs, descending=True)
        # drop a token when the tokens ranked above it already cover top_p (the first always stays)
        drop = (torch.cumsum(sorted_p, dim=-1) - sorted_p) >= params.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))


class IncrementalDecoder:
    """Turn token ids into text pieces without splitting multi-byte UTF-8 characters.

    Decodes a short window of recent tokens and emits only the new text; a window whose text ends in
    U+FFFD (an incomplete byte sequence) waits for the next token. :meth:`flush` returns whatever is held.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tok = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0  # start of the window: text before it has been emitted and is final
        self.read = 0  # end of what has been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=self.skip)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        done = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        if len(text) > len(done) and not text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(done):]
        return ""

    def flush(self) -> str:
        done = self._decode(self.ids[self.prefix:self.read])
        text = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(done):]


def held_suffix(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of ``text`` that is the beginning of a stop string (held back)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def find_stop(text: str, stops: Sequence[str], sent: int) -> int | None:
    """Where the first stop string in ``text`` begins, or None; text before ``sent`` holds none."""
    if not stops:
        return None
    start = max(0, sent - max(len(s) for s in stops))  # a match may begin inside a held-back prefix
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None
