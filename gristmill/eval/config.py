"""The evaluate stage's config (pydantic only)."""

from __future__ import annotations

from pydantic import Field

from gristmill.core.config import Config
from gristmill.formats.chat import SAMPLE_PROMPTS


class EvaluateConfig(Config):
    """Held-out metrics of the pre-trained model and samples from fixed prompts."""

    batch_size: int = Field(8, ge=1)
    """Windows of ``block_size`` tokens evaluated per forward pass."""
    max_tokens: int | None = Field(None, ge=1)
    """Evaluate only the first this many validation tokens (None = the whole split, whose metrics the
    train stage's final evaluation already computed), for speed."""
    prompts: list[str] = ["The ", "Once upon a time", "Hamlet.\n"]
    """Prompts to sample from (plain text; the base model has not seen the chat template)."""
    chat_prompts: list[str] = list(SAMPLE_PROMPTS)
    """Chat prompts the pre-trained model answers (greedily, with the chat template), for the report's
    side-by-side table of every model's answers."""
    max_new_tokens: int = Field(64, ge=0)
    """Tokens to generate per sample."""
    temperature: float = Field(0.8, ge=0)
    """Sampling temperature (0 = greedy)."""
    top_k: int | None = Field(50, ge=0)
    """Sample among the k most likely tokens (None or 0 = all)."""
    top_p: float | None = Field(None, gt=0, le=1)
    """Nucleus sampling threshold (None = off)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
