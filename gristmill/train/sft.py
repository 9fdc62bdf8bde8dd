"""Chat examples for supervised fine-tuning: read chat records, encode them with the chat template (loss on
assistant tokens only), cut them to the context, and pad batches or pack them into full rows.

Padding wastes the rows' tails (short chats padded to the longest of the batch); packing
(``pack_examples``) fills each row with several conversations end to end, and the model's ``segments``
argument keeps them apart (positions restart, no attention across), so each still scores as if alone.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from gristmill.core.jsonl import read_jsonl
from gristmill.errors import InputError
from gristmill.formats.chat import ChatFormatError, encode_chat, validate_messages
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


@dataclass
class UserChats:
    """A user's chat files split into train and val conversations, with what was quarantined."""

    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    quarantined: int = 0
    files: int = 0


def read_user_chats(paths: Sequence[Path], val_fraction: float,
                    quarantine: Callable[[Any, str, str], None]) -> UserChats:
    """OpenAI-style chat records (``{"messages": [...]}``) of JSONL files, split by a hash of each
    conversation (stable across runs and file order) into train and val.

    A line that is not JSON, not an object with ``messages``, or whose messages break the chat format
    (:func:`gristmill.formats.chat.validate_messages`, an assistant reply required) is passed to
    ``quarantine(record, step, reason)`` and counted; every other line lands in train or val. Other keys of
    a record are kept (``_where`` = file:line is added).
    """
    out = UserChats([], [], files=len(paths))
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    rec = json.loads(line)
                except ValueError as e:
                    quarantine({"where": where, "line": line[:2000]}, "chat_files", f"not valid JSON ({e})")
                    out.quarantined += 1
                    continue
                try:
                    if not isinstance(rec, dict) or "messages" not in rec:
                        raise ChatFormatError("not a chat record: an object with 'messages' is expected")
                    validate_messages(rec["messages"], need_assistant=True)
                except ChatFormatError as e:
                    quarantine({"where": where, "record": rec}, "chat_files", str(e))
                    out.quarantined += 1
                    continue
                key = hashlib.sha256(json.dumps(rec["messages"], sort_keys=True).encode()).digest()
                held_out = int.from_bytes(key[:8], "big") / 2**64 < val_fraction
                (out.val if held_out else out.train).append({**rec, "_where": where})
    return out


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


@dataclass
class PackedRows:
    """Conversations packed end to end into rows of ``width`` positions (inputs and shifted targets).

    A conversation of n tokens fills n - 1 positions: its ids[:-1] in ``x`` and labels[1:] in ``y``.
    ``segments`` numbers the conversations of a row 0, 1, ...; the padding after the last one is a
    segment of its own (``<|pad|>`` inputs, -100 targets), so it never touches a real token.
    """

    x: np.ndarray
    """[R, width] int64 input ids."""
    y: np.ndarray
    """[R, width] int64 targets, -100 off assistant tokens and on padding."""
    segments: np.ndarray
    """[R, width] int64 segment id of each position, for the model's ``segments`` argument."""
    examples: int = 0
    """Conversations packed."""
    truncated: int = 0
    """Conversations longer than ``width + 1`` tokens, cut to fit one row."""
    dropped: int = 0
    """Conversations with no assistant token left after the cut (not packed)."""
    tokens: int = 0
    """Positions holding a conversation's token (the rest is padding)."""

    def __len__(self) -> int:
        return len(self.x)

    @property
    def width(self) -> int:
        return self.x.shape[1]

    @property
    def fill(self) -> float:
        """Fraction of positions holding a conversation's token rather than padding."""
        return self.tokens / self.x.size if self.x.size else 0.0

    @property
    def target_tokens(self) -> int:
        """Positions that carry loss."""
        return int((self.y != IGNORE_INDEX).sum())


def pack_examples(ex: ChatExamples, block_size: int) -> PackedRows:
    """Pack conversations into as few rows of ``block_size`` positions as best-fit decreasing finds.

    Longest first, each conversation goes into the open row it fills most tightly (or a new row), so
    rows end up nearly full and the result does not depend on the input order beyond ties (broken by
    position: the packing is deterministic). One longer than ``block_size + 1`` tokens is cut to that and
    counted in ``truncated``; one with no assistant target left after the cut is counted in ``dropped``.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1 to pack conversations, got {block_size}")
    out = PackedRows(np.empty((0, block_size), np.int64), np.empty((0, block_size), np.int64),
                     np.empty((0, block_size), np.int64))
    items: list[tuple[np.ndarray, np.ndarray]] = []  # (x part, y part) of each kept conversation
    for ids, lab in zip(ex.ids, ex.labels, strict=True):
        if len(ids) > block_size + 1:
            ids, lab = ids[: block_size + 1], lab[: block_size + 1]
            out.truncated += 1
        if len(ids) < 2 or not (lab[1:] != IGNORE_INDEX).any():
            out.dropped += 1
            continue
        items.append((ids[:-1], lab[1:]))
    order = sorted(range(len(items)), key=lambda i: (-len(items[i][0]), i))
    rows: list[list[int]] = []  # item indices per row, in packing order
    free: list[tuple[int, int]] = []  # (free positions, row) of the open rows, sorted
    for i in order:
        need = len(items[i][0])
        at = bisect.bisect_left(free, (need, -1))  # the tightest row with room
        if at < len(free):
            room, r = free.pop(at)
        else:
            room, r = block_size, len(rows)
            rows.append([])
        rows[r].append(i)
        if room - need > 0:
            bisect.insort(free, (room - need, r))
    n = len(rows)
    out.x = np.full((n, block_size), PAD_ID, dtype=np.int64)
    out.y = np.full((n, block_size), IGNORE_INDEX, dtype=np.int64)
    out.segments = np.empty((n, block_size), dtype=np.int64)
    for r, members in enumerate(rows):
        pos = 0
        for s, i in enumerate(members):
            xi, yi = items[i]
            out.x[r, pos:pos + len(xi)] = xi
            out.y[r, pos:pos + len(yi)] = yi
            out.segments[r, pos:pos + len(xi)] = s
            pos += len(xi)
        out.segments[r, pos:] = len(members)  # padding: a segment of its own
    out.examples = len(items)
    out.tokens = sum(len(x) for x, _ in items)
    return out
