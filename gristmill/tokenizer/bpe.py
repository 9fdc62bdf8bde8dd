"""Byte-level BPE: train, load and save a tokenizer, and write flat token files.

The tokenizer works on bytes: its base alphabet is all 256 byte values and nothing normalises the text,
so ``decode(encode(text)) == text`` for any string. The special tokens sit at the fixed ids of
:mod:`gristmill.formats.vocab`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gristmill.core.workspace import atomic_open
from gristmill.errors import InputError
from gristmill.formats.vocab import EOT_ID, IM_END_ID, IM_START_ID, PAD_ID, SPECIAL_TOKENS
from gristmill.tokenizer.config import MIN_VOCAB

__all__ = ["EOT_ID", "IM_END_ID", "IM_START_ID", "PAD_ID", "SPECIAL_TOKENS", "TOKENIZER_FILE", "load_tokenizer",
           "save_tokenizer", "token_dtype", "train_tokenizer", "write_token_file", "encode_documents"]

TOKENIZER_FILE = "tokenizer.json"


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE tokenizer on ``texts`` (streamed; any iterable of strings).

    The special tokens get ids 0..3 in :data:`SPECIAL_TOKENS` order; every byte value is in the
    alphabet, so any text round-trips. The result may have fewer than ``vocab_size`` tokens when the
    text has too few pairs that occur ``min_frequency`` times.
    """
    if vocab_size < MIN_VOCAB:
        raise ValueError(
            f"vocab_size must be at least {MIN_VOCAB} (4 special tokens + 256 bytes), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    # No normaliser: the text is taken byte for byte. ByteLevel maps each byte to a printable symbol and
    # splits on GPT-2's regex (words, numbers, punctuation, whitespace runs) so merges stay within words.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    _check_specials(tok, "the trained tokenizer")
    return tok


def load_tokenizer(path_or_dir: str | Path) -> Tokenizer:
    """Load ``tokenizer.json`` from a file path or from a folder that holds one (e.g. a model dir)."""
    p = Path(path_or_dir)
    if p.is_dir():
        p = p / TOKENIZER_FILE
    if not p.is_file():
        raise InputError(f"no tokenizer at {p}: run `gristmill tokenize` first, or pass a model dir")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as e:  # the Rust library raises a plain Exception for unreadable files
        raise InputError(f"{p} is not a valid tokenizer file ({e})") from e
    # A tokenizer imported with a pretrained model (SmolLM2) shares the document and chat-turn ids but may
    # hold another token at the pad id: padding carries no loss, so only the first three must match.
    _check_specials(tok, str(p), SPECIAL_TOKENS[:PAD_ID])
    return tok


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    """Write ``tokenizer.json`` atomically (``Tokenizer.save`` writes in place)."""
    with atomic_open(Path(path), "w", encoding="utf-8") as f:
        f.write(tok.to_str())


def _check_specials(tok: Tokenizer, where: str, specials: tuple[str, ...] = SPECIAL_TOKENS) -> None:
    for i, s in enumerate(specials):
        if tok.token_to_id(s) != i:
            raise InputError(
                f"{where} has {s} at id {tok.token_to_id(s)}, expected {i}; retrain it with gristmill"
            )


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id (the token-file contract)."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def encode_documents(tok: Tokenizer, texts: Iterable[str], batch_size: int = 256) -> Iterator[list[int]]:
    """Token ids of each text, encoded in batches; special-token strings inside texts stay plain text."""
    was = tok.encode_special_tokens
    tok.encode_special_tokens = True  # a literal "<|endoftext|>" in a document must not become id 0
    try:
        batch: list[str] = []
        for t in texts:
            batch.append(t)
            if len(batch) >= batch_size:
                yield from (e.ids for e in tok.encode_batch(batch, add_special_tokens=False))
                batch = []
        if batch:
            yield from (e.ids for e in tok.encode_batch(batch, add_special_tokens=False))
    finally:
        tok.encode_special_tokens = was


def write_token_file(
    tok: Tokenizer, texts: Iterable[str], path: Path, dtype: np.dtype, batch_size: int = 256
) -> dict[str, int]:
    """Write each text's tokens, then ``<|endoftext|>``, as one flat array; returns the split's counts."""
    counts = {"tokens": 0, "bytes": 0, "documents": 0}

    def _counted() -> Iterator[str]:
        for t in texts:
            counts["bytes"] += len(t.encode("utf-8"))
            counts["documents"] += 1
            yield t

    with atomic_open(path, "wb") as f:
        for ids in encode_documents(tok, _counted(), batch_size):
            ids.append(EOT_ID)
            np.asarray(ids, dtype=dtype).tofile(f)
            counts["tokens"] += len(ids)
    return counts
