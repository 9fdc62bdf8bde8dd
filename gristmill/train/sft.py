"""Chat examples for supervised fine-tuning: read chat records, encode them with the chat template (loss on
assistant tokens only), cut them to the context, and pad batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from gristmill.core.jsonl import read_jsonl
from gristmill.errors import InputError
from gristmill.formats.chat import ChatFormatError, encode_chat
from gristmill.formats.vocab import IGNORE_INDEX, PAD_ID


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


def read_chat_records(path: Path, hint: str = "re-run `gristmill synth`") -> Iterator[dict[str, Any]]:
    """Chat records (``{"messages": [...], ...}``) of a JSONL file, each tagged with ``_where`` (file:line)."""
    for lineno, rec in read_jsonl(path, hint=hint):
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
