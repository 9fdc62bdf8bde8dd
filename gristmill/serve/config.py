"""The server's config (the ``serve`` section of a recipe)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from gristmill.core.config import Config


class ServeConfig(Config):
    """OpenAI-compatible HTTP server and chat page."""

    host: str = "127.0.0.1"
    """Interface to listen on; 127.0.0.1 keeps the server local (use 0.0.0.0 to expose it, with an API key)."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port to listen on."""
    api_key_env: str = Field("GRISTMILL_API_KEY", min_length=1)
    """Environment variable that holds the API key; when it is set, every path but the chat page (/, /static/)
    and /health requires ``Authorization: Bearer <key>``. Keys are never written into recipes or manifests."""
    api_key_file: str | None = None
    """A file whose first line is the API key (instead of the environment variable)."""
    model: Literal["auto", "train", "finetune", "base"] = "auto"
    """Which model of a run to serve: auto = the fine-tuned one if it exists, else the pre-trained one."""
    max_tokens: int = Field(256, ge=1)
    """Tokens generated when a request does not say (max_tokens); also capped by the context window."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    merge_adapter: bool = True
    """A LoRA adapter model directory (``finetune.lora.merge: false``): fold the adapter into the base
    weights when loading (as fast as the base); false serves the base with the adapter layers beside it."""
    max_batch: int = Field(32, ge=1)
    """Sequences generated together (continuous batching); a request with n choices takes n. Each holds a
    KV cache of up to max_seq_len tokens."""
    max_queue: int = Field(64, ge=1)
    """Requests waiting for a free sequence; one more gets 503 with Retry-After."""
    prefill_chunk: int = Field(64, ge=1)
    """Prompt tokens processed between two decode steps: smaller keeps running streams smoother while a
    long prompt is read, larger reads long prompts faster."""
    weights: Literal["auto", "fp32", "bf16", "int8", "int4"] = "auto"
    """Weight format generation runs in: auto = the fastest format whose perplexity on a fixed text is within
    1% of fp32's (checked at load): on a CPU with native bf16 (AVX-512 BF16 / AMX) int4, else bf16, else
    fp32; on CUDA bf16. fp32 = the model's own weights; bf16 = bfloat16 weights and matrix inputs; int8 =
    weight-only int8 with a scale per output row (CPU only; perplexity ~1% above fp32's); int4 = weight-only
    int4 in groups of 32 with an int8 output head (CPU only; the fastest, near-lossless on models imported
    from a Q4 GGUF, coarse on others). Training and evaluation always use fp32."""
    compile: bool = False
    """Decode single streams through ``torch.compile`` (weights other than fp32): 15-18% more tokens per
    second on a CPU, for a compilation when the server starts (half a minute on 2 cores the first time, a few
    seconds once torch's on-disk cache holds it). Batched steps run eagerly either way."""
    max_seq_len: int | None = Field(None, ge=2)
    """Longest sequence served, prompt plus answer, in tokens (None = the model's context window); lower it to
    bound KV-cache memory for models with long windows."""

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError("serve.api_key is not a recipe key: a secret must not be written into recipes or "
                             "run records; put the key in the GRISTMILL_API_KEY environment variable or in a "
                             "file named by serve.api_key_file")
        return data
