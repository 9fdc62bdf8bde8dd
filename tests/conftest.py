"""Shared fixtures. Tests mirror the package tree (tests/core, tests/data, tests/stages ...); the helpers
they share live in ``support.py``, importable from every test module."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # `import support` from any test folder

from support import build_tiny_model_dir, stage_context  # noqa: E402


@pytest.fixture
def stage(tmp_path: Path):
    """``stage(name, upstream=(...), run_dir=None)``: a StageContext for running one stage in a test."""

    def make(name: str, upstream: tuple[str, ...] = (), run_dir: Path | None = None, **kw):
        return stage_context(run_dir or tmp_path / "run", name, upstream=upstream, **kw)

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained model directory (tokenizer + 2-layer GPT on Hamlet), built once per session."""
    d = tmp_path_factory.getbasetemp() / "tiny" / "train" / "model"
    if not (d / "model.safetensors").exists():
        build_tiny_model_dir(d)
    return d
