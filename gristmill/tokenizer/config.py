"""The tokenize stage's config (pydantic only)."""

from __future__ import annotations

from pydantic import Field

from gristmill.core.config import Config
from gristmill.formats.vocab import SPECIAL_TOKENS

MIN_VOCAB = len(SPECIAL_TOKENS) + 256
"""Smallest useful vocabulary: the special tokens plus the 256 byte symbols."""


class TokenizeConfig(Config):
    """Byte-level BPE tokenizer training and token-file writing."""

    vocab_size: int = Field(4096, ge=MIN_VOCAB, le=2**32 - 1)
    """Target vocabulary size, special tokens and the 256 byte symbols included (at least 260)."""
    min_frequency: int = Field(2, ge=1)
    """A pair of symbols must occur this many times in the training text to be merged."""
    train_bytes: int | None = Field(None, ge=1)
    """Train the tokenizer on at most this many UTF-8 bytes of train documents (None: all of them).
    The token files always cover every document."""
    paraphrases: bool = False
    """Add synth's paraphrased train documents (``synth/paraphrases.jsonl``, made by the ``paraphrase``
    teacher generator) to ``train.bin`` after prepare's train documents, as pre-training augmentation; the
    tokenizer is still trained on prepare's text alone, and ``val.bin`` stays prepare's validation split."""
    batch_size: int = Field(256, ge=1)
    """Documents encoded per ``encode_batch`` call while writing the token files."""
