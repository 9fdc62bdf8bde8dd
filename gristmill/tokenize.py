"""tokenize: train a byte-level BPE tokenizer on the prepared text and write flat token files.

Reads ``prepare/{train,val}.jsonl`` and writes ``tokenizer.json``, ``train.bin``, ``val.bin`` and
``meta.json`` (format in docs/contracts.md). The tokenizer works on bytes: its base alphabet is all 256
byte values and nothing normalises the text, so ``decode(encode(text)) == text`` for any string.
The special tokens sit at fixed ids (``<|endoftext|>`` = 0, ``<|im_start|>`` = 1, ``<|im_end|>`` = 2,
``<|pad|>`` = 3) so the chat template, the model and the server can rely on them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gristmill.config import Config
from gristmill.data import read_documents
from gristmill.errors import InputError
from gristmill.workspace import StageContext, atomic_open, write_json

SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
"""Special tokens in id order: their ids are their positions here."""
EOT_ID, IM_START_ID, IM_END_ID, PAD_ID = range(len(SPECIAL_TOKENS))
TOKENIZER_FILE = "tokenizer.json"
# Smallest useful vocabulary: the specials plus the 256 byte symbols.
MIN_VOCAB = len(SPECIAL_TOKENS) + 256


class TokenizeConfig(Config):
    """Byte-level BPE tokenizer training and token-file writing."""

    vocab_size: int = Field(4096, ge=MIN_VOCAB, le=2**32 - 1)
    """Target vocabulary size, special tokens and the 256 byte symbols included (at least 260)."""
    min_frequency: int = Field(2, ge=1)
    """A pair of symbols must occur this many times in the training text to be merged."""
    train_bytes: int | None = Field(None, ge=1)
    """Train the tokenizer on at most this many UTF-8 bytes of train documents (None: all of them).
    The token files always cover every document."""
    batch_size: int = Field(256, ge=1)
    """Documents encoded per ``encode_batch`` call while writing the token files."""


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
    _check_specials(tok, str(p))
    return tok


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    """Write ``tokenizer.json`` atomically (``Tokenizer.save`` writes in place)."""
    with atomic_open(Path(path), "w", encoding="utf-8") as f:
        f.write(tok.to_str())


def _check_specials(tok: Tokenizer, where: str) -> None:
    for i, s in enumerate(SPECIAL_TOKENS):
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


def _texts(path: Path, max_bytes: int | None = None) -> Iterator[str]:
    seen = 0
    for doc in read_documents(path):
        if max_bytes is not None and seen >= max_bytes:
            return
        seen += len(doc.text.encode("utf-8"))
        yield doc.text


def run_tokenize(ctx: StageContext, cfg: TokenizeConfig) -> dict[str, Any]:
    """Train the tokenizer on prepare's train split and write ``{train,val}.bin`` and ``meta.json``."""
    src = ctx.input_dir("prepare")
    paths = {split: src / f"{split}.jsonl" for split in ("train", "val")}
    for p in paths.values():
        if not p.is_file():
            raise InputError(f"{p} is missing: re-run `gristmill prepare`")
    if next(_texts(paths["train"]), None) is None:
        raise InputError(
            f"{paths['train']} has no documents: check the prepare filters and the collect sources"
        )

    t0 = time.time()
    tok = train_tokenizer(_texts(paths["train"], cfg.train_bytes), cfg.vocab_size, cfg.min_frequency)
    train_s = time.time() - t0
    vocab = tok.get_vocab_size()
    save_tokenizer(tok, ctx.out_dir / TOKENIZER_FILE)
    ctx.log(f"[tokenize] trained a {vocab}-token BPE in {train_s:.1f}s")

    dtype = token_dtype(vocab)
    splits = {}
    t1 = time.time()
    for split, p in paths.items():
        splits[split] = write_token_file(tok, _texts(p), ctx.out_dir / f"{split}.bin", dtype, cfg.batch_size)
        ctx.log(
            f"[tokenize] {split}: {splits[split]['documents']} documents -> {splits[split]['tokens']} tokens"
        )
    encode_s = time.time() - t1
    write_json(
        ctx.out_dir / "meta.json",
        {"dtype": dtype.name, "vocab_size": vocab, "eot_id": EOT_ID, "splits": splits},
    )

    return {
        "vocab_size": vocab,
        "dtype": dtype.name,
        **{f"{s}_tokens": c["tokens"] for s, c in splits.items()},
        **{f"{s}_documents": c["documents"] for s, c in splits.items()},
        **{
            f"{s}_bytes_per_token": round(c["bytes"] / c["tokens"], 4) if c["tokens"] else None
            for s, c in splits.items()
        },
        "train_tokenizer_s": round(train_s, 3),
        "encode_s": round(encode_s, 3),
    }
