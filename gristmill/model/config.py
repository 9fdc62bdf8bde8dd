"""The model's shape and options: ``ModelConfig``, saved as ``config.json`` in every model directory.

Pydantic only (no torch), so recipes load without importing torch.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from gristmill.core.config import Config


class ModelConfig(Config):
    """Shape and options of the transformer; saved as ``config.json`` in every model directory."""

    vocab_size: int = Field(4096, ge=1, le=2**32 - 1)
    """Number of token ids; the train stage sets it from the tokenizer's ``meta.json``."""
    block_size: int = Field(128, ge=1)
    """Longest context in tokens the model is trained on (rotary tables extend past it for generation)."""
    n_layer: int = Field(4, ge=1)
    """Number of transformer blocks."""
    n_head: int = Field(2, ge=1)
    """Number of query heads; ``n_embd`` must be divisible by it."""
    n_kv_head: int | None = Field(None, ge=1)
    """Number of key/value heads for grouped-query attention (None = ``n_head``, i.e. plain multi-head)."""
    n_embd: int = Field(128, ge=2)
    """Width of the residual stream."""
    mlp_hidden: int | None = Field(None, ge=1)
    """Hidden width of the SwiGLU MLP (None = 8/3 x n_embd rounded up to a multiple of 32)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on each residual branch's output (attention and MLP)."""
    attn_dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on attention probabilities."""
    embd_dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the token embeddings."""
    tie_embeddings: bool = False
    """Share the token embedding matrix with the output head."""
    qk_norm: bool = False
    """RMS-normalise queries and keys per head before the rotary embedding (stabilises high learning rates)."""
    logit_softcap: float | None = Field(30.0, gt=0)
    """If set, logits are squashed to (-cap, cap) with cap * tanh(logits / cap) (None = off)."""
    rope_theta: float = Field(10000.0, gt=0)
    """Base of the rotary embedding frequencies."""
    norm_eps: float = Field(1e-5, gt=0)
    """Epsilon of every RMSNorm."""
    init_std: float = Field(0.02, gt=0)
    """Standard deviation of the normal weight init (output projections are scaled by 1/sqrt(2 n_layer))."""

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        n_kv = self.n_kv_head or self.n_head
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_head % n_kv:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({n_kv})")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError("the head dim n_embd / n_head must be even for rotary embeddings")
        return self

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden(self) -> int:
        return self.mlp_hidden or 32 * math.ceil(8 * self.n_embd / 3 / 32)


class BaseModelConfig(Config):
    """A pretrained model to start from, imported into Gristmill's own model and tokenizer (``base`` stage)."""

    source: str | None = None
    """A GGUF file or a Hugging Face folder (config.json + safetensors + tokenizer.json), as a path or
    ``pkg://package/file``; None: this run imports no model."""
    format: Literal["auto", "gguf", "hf"] = "auto"
    """How to read ``source``: ``auto`` picks ``gguf`` for a .gguf file and ``hf`` for a folder."""
