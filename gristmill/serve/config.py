"""The server's config (the ``serve`` section of a recipe)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gristmill.config import Config


class ServeConfig(Config):
    """OpenAI-compatible HTTP server and chat page."""

    host: str = "127.0.0.1"
    """Interface to listen on; 127.0.0.1 keeps the server local (use 0.0.0.0 to expose it, with api_key)."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port to listen on."""
    api_key: str | None = None
    """If set (or GRISTMILL_API_KEY is), /v1/* require ``Authorization: Bearer <key>``; / and /health stay open."""
    model: Literal["auto", "train", "finetune"] = "auto"
    """Which model of a run to serve: auto = the fine-tuned one if it exists, else the pre-trained one."""
    max_tokens: int = Field(256, ge=1)
    """Tokens generated when a request does not say (max_tokens); also capped by the context window."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
