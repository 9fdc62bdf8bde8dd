"""serve: the HTTP face, an OpenAI-compatible server for a trained model with a chat page at ``/``.

``ServeConfig`` (``serve.config``) is light (recipes need it); the app (``serve.app``: FastAPI, the model)
and the API shapes (``serve.openai``) load only when ``create_app`` or ``serve`` is first used. Needs the
``serve`` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gristmill.serve.config import ServeConfig

if TYPE_CHECKING:
    from gristmill.serve.app import create_app, serve

__all__ = ["ServeConfig", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "serve"):
        from gristmill.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'gristmill.serve' has no attribute {name!r}")
